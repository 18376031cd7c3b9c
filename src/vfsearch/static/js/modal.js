// The large view of one result (from a pane or the rank strip): prev/next, "Search this region"
// (the query's mask carried onto the match), "Use as query".
import { $, el, fmt, basename } from "./util.js";
import { thumbURL, originalURL, loadImage, toast, reportError } from "./api.js";
import { S, choiceLabel, MODE_TEXT } from "./state.js";
import { carryTransform } from "./geometry.js";
import { drawResult } from "./overlay.js";
import { brush, setQuery } from "./query.js";
import { setChoiceUI, reloadDatasetIfNeeded } from "./dataset.js";
import { runSearch } from "./search.js";

const MODAL = { items: null, ix: 0, ctx: null, pane: null };

/** The result shown in the large view and its search context (for explain). */
export function modalMatch() {
  return { m: MODAL.items[MODAL.ix], ctx: MODAL.ctx };
}

export function openModal(pi, rank) {
  const p = S.panes[pi];
  const ix = p.matches.findIndex((m) => m.rank === rank);
  openLoose(p.ctx, p.matches, ix, p);
}

export function openLoose(ctx, items, ix, pane = null) {
  Object.assign(MODAL, { items, ix, ctx, pane });
  $("#modal").hidden = false;
  showModalItem().catch(reportError);
}

async function showModalItem() {
  const { items, ix, ctx } = MODAL;
  const m = items[ix];
  const cv = $("#modal-canvas");
  const maxW = Math.min(window.innerWidth * 0.7, 1100), maxH = window.innerHeight * 0.88;
  const s = Math.min(maxW / m.image_size[0], maxH / m.image_size[1]);
  const css = [Math.round(m.image_size[0] * s), Math.round(m.image_size[1] * s)];
  cv.style.width = `${css[0]}px`;
  cv.style.height = `${css[1]}px`;
  let img;
  try { img = await loadImage(thumbURL(ctx.choice.cache, m.id)); } catch (_) { img = null; }
  const heat = MODAL.pane && MODAL.pane.heat ? MODAL.pane.heat[m.id] : null;
  drawResult(cv, img, m, ctx, S.overlay === "heat" && !heat ? "region" : S.overlay, heat, { cssSize: css });
  loadImage(originalURL(ctx.choice.cache, m.id)).then((big) => {
    if (MODAL.items === items && MODAL.ix === ix && !$("#modal").hidden) drawResult(cv, big, m, ctx, S.overlay === "heat" && !heat ? "region" : S.overlay, heat, { cssSize: css });
  }).catch(() => { /* original missing: the thumbnail stays */ });
  $("#modal-title").textContent = basename(m.path);
  const mode = ctx.query.mode || "region";
  const where = mode === "region" ? [["cell offset", `row ${m.offset[0]}, col ${m.offset[1]}`], ["match box", m.box.map((v) => v.toFixed(0)).join(", ")]] : [];
  const rows = [["rank", `${m.rank}`], ["score", fmt(m.score, 5)], ["id", m.id], ["path", m.path], ["label", m.label], ...Object.entries(m.meta || {}),
    ["size", `${m.image_size[0]}×${m.image_size[1]}`], ...where, ["query", MODE_TEXT[mode] || mode], ["features", choiceLabel(ctx.choice)]];
  $("#modal-meta").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: String(v) }))));
  const carry = $("#modal-carry");
  carry.textContent = mode === "region" ? "Search this region" : mode === "global" ? "Similar images to this" : "Rigid whole-image search";
  carry.title = mode === "region" ? "Query this image with the matched region (Enter)" : `Query this image whole, as ${MODE_TEXT[mode]} (Enter)`;
  $("#modal-prev").disabled = ix <= 0;
  $("#modal-next").disabled = ix >= items.length - 1;
}

export function closeModal() {
  $("#modal").hidden = true;
}

/** The explain dialog opens from the large view: while it is open the large view steps aside (one
 * dialog at a time), and comes back when it closes. explain.js only shows and hides #explain. */
function wireExplainStacking() {
  const ex = $("#explain");
  const sync = () => $("#modal").classList.toggle("behind", !ex.hidden);
  new MutationObserver(sync).observe(ex, { attributes: true, attributeFilter: ["hidden"] });
  sync();
}

async function modalCarry() {
  const { items, ix, ctx } = MODAL;
  const m = items[ix];
  closeModal();
  S.choice = ctx.choice;
  setChoiceUI();
  reloadDatasetIfNeeded();
  const mode = ctx.query.mode || "region";
  // a whole-image search goes on whole (the same mode) from the result
  if (mode !== "region") return setQuery({ kind: "dataset", cache: ctx.choice.cache, id: m.id }, { whole: true, mode });
  await setQuery({ kind: "dataset", cache: ctx.choice.cache, id: m.id });
  // carry the query's mask to the matched position, in the new image's pixels
  const R = { x: 0, y: 0, w: m.image_size[0], h: m.image_size[1] };
  const { t, clip } = carryTransform(ctx, m, R);
  brush.setMaskFromSource(ctx.mask.canvas, t, { clip, commit: false });
  if (brush.isEmpty()) {
    toast("the matched region lies outside what the model sees; brush a region", "info");
    return;
  }
  await runSearch();
}

async function modalUse() {
  const { items, ix, ctx } = MODAL;
  closeModal();
  S.choice = ctx.choice;
  setChoiceUI();
  reloadDatasetIfNeeded();
  await setQuery({ kind: "dataset", cache: ctx.choice.cache, id: items[ix].id });
}

export function wireModal() {
  wireExplainStacking();
  $("#modal-close").addEventListener("click", closeModal);
  $("#modal").addEventListener("click", (e) => e.target.id === "modal" && closeModal());
  $("#modal-prev").addEventListener("click", () => { MODAL.ix = Math.max(0, MODAL.ix - 1); showModalItem(); });
  $("#modal-next").addEventListener("click", () => { MODAL.ix = Math.min(MODAL.items.length - 1, MODAL.ix + 1); showModalItem(); });
  $("#modal-carry").addEventListener("click", () => modalCarry().catch(reportError));
  $("#modal-use").addEventListener("click", () => modalUse().catch(reportError));
}
