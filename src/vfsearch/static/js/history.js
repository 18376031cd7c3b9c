// History (each search, its curve shown or not, click to restore) and share URLs (the query and
// settings in location.hash: written after each search, read at start and when the hash changes —
// a link pasted into an open tab — and by "Copy link"). A link's mask is the searched mask itself,
// losslessly (maskcode.js), so it reproduces the search exactly.
import { decodeMask } from "../brush.js";
import { $, $$, clamp, el, basename, fitRect } from "./util.js";
import { api, enc, toast, reportError } from "./api.js";
import { S, choiceKey, parseChoice, choiceLabel, queryMode, MODE_TEXT } from "./state.js";
import { brush, setQuery } from "./query.js";
import { setChoiceUI, reloadDatasetIfNeeded } from "./dataset.js";
import { drawDist } from "./curve.js";
import { encodeMaskExact, decodeMaskExact, maskHash } from "./maskcode.js";
import { exitConcept, openConceptLink, runConcept, sheetURL } from "./concepts.js";

const PALETTE = ["#2f5bea", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#b08900", "#5f3dc4"];

function historyKey(q, mask, choices) {
  const m = S.whole ? S.wholeMode : maskHash(mask);
  return [q.kind, q.cache || "", q.id ?? q.upload, m, choices.map(choiceKey).join("|"), S.k, filterKey(), S.excludeSelf ? "" : "self"].join("/");
}

const filterKey = () => (S.filter ? `${S.filter.column}=${S.filter.value}` : "");

/** Put the search `key` first in the history (a new entry from make(color) when it is new). */
function pushHistory(key, make) {
  let h = S.history.find((x) => x.key === key);
  if (h) S.history.splice(S.history.indexOf(h), 1);
  else h = make(PALETTE[S.colorIx++ % PALETTE.length]);
  h.ctxs = [];
  S.history.unshift(h);
  // at most 4 curves shown automatically; pinned ones stay
  let auto = 0;
  for (const x of S.history) if (x.shown && !x.pinned && ++auto > 4) x.shown = false;
  if (S.history.length > 30) S.history.length = 30;
  return h;
}

export function addHistory(q, mask, choices) {
  return pushHistory(historyKey(q, mask, choices), (color) => {
    const name = q.kind === "dataset" ? `#${q.id} ${basename(q.path).replace(/\.[^.]+$/, "")}` : q.name || "upload";
    S.qn = (S.qn || 0) + 1;
    return { key: historyKey(q, mask, choices), color, q: { ...q }, mask, whole: S.whole, mode: queryMode(), choices, ctxs: [], shown: true, pinned: false, label: `Q${S.qn} ${name}`, thumb: historyThumb(mask) };
  });
}

/** A concept search in the history (its contact sheet as the thumbnail; a click runs it again). */
export function addConceptHistory(cq) {
  const choices = [{ cache: cq.cache, layer: cq.layer }];
  const key = ["concept", cq.cache, cq.layer, cq.method, cq.id, S.k, filterKey()].join("/");
  return pushHistory(key, (color) => ({ key, color, concept: { ...cq }, mode: "concept", choices, ctxs: [], shown: true, pinned: false, label: `C${cq.id} ${cq.method}`, thumb: sheetURL(cq) }));
}

function historyThumb(mask) {
  const c = document.createElement("canvas");
  c.width = c.height = 128;
  const g = c.getContext("2d");
  const img = $("#q-img");
  const R = fitRect(img.naturalWidth || 1, img.naturalHeight || 1, 128, 128);
  g.fillStyle = "#eceef2";
  g.fillRect(0, 0, 128, 128);
  try { g.drawImage(img, R.x, R.y, R.w, R.h); } catch (_) { /* not loaded */ }
  const tint = document.createElement("canvas");
  tint.width = mask.width;
  tint.height = mask.height;
  const t = tint.getContext("2d");
  t.drawImage(mask.canvas, 0, 0);
  t.globalCompositeOperation = "source-in";
  t.fillStyle = "rgba(255,90,31,0.6)";
  t.fillRect(0, 0, mask.width, mask.height);
  g.drawImage(tint, R.x, R.y, R.w, R.h);
  return c.toDataURL("image/jpeg", 0.8);
}

export function renderHistory() {
  const cur = S.history[0];
  $("#history").replaceChildren(...S.history.map((h) => {
    const dot = el("span", { class: "dot" + (h.shown ? "" : " off"), style: `background:${h.color}`, title: h.shown ? "hide its curve" : "show its curve" });
    dot.addEventListener("click", (ev) => {
      ev.stopPropagation();
      h.shown = !h.shown;
      h.pinned = h.shown;
      renderHistory();
      drawDist();
    });
    return el("div", { class: "hist" + (h === cur ? " current" : ""), title: `${h.label} · ${MODE_TEXT[h.mode] || h.mode}\n${h.choices.map(choiceLabel).join(" vs ")}`, onclick: () => restoreHistory(h).catch(reportError) },
      el("img", { src: h.thumb, alt: "" }), dot, el("div", { text: `${h.label.split(" ")[0]} ${h.choices.length > 1 ? "⇄" : ""}` }));
  }));
}

async function restoreHistory(h) {
  S.choice = h.choices[0];
  S.compare = h.choices[1] || null;
  setChoiceUI();
  reloadDatasetIfNeeded();
  if (h.concept) return runConcept(h.concept);
  exitConcept({ rerun: false });
  await setQuery(h.q, h.whole ? { whole: true, mode: h.mode } : { mask: h.mask });
}

// -- URL state ------------------------------------------------------------------------------------
// c, l: cache and layer; i (+ qc: the query's cache) or u: the image; then one of w (whole image:
// "g" similar images, "1" rigid), b (a box, image px, when it gives exactly the brushed mask), mz
// (the mask, maskcode.js) or m (old links: brush.js's lossy encodeMask); k, cmp, ov, f, self.
let lastHash = null;
let hashSeq = 0;

/** The pixel rectangle brush.setBox fills for a box (its rounding, at the mask's resolution). */
function boxCells(b, m) {
  const sx = m.width / m.imageWidth, sy = m.height / m.imageHeight;
  const r = (v, s, n) => clamp(Math.round(v * s), 0, n);
  return [r(Math.min(b[0], b[2]), sx, m.width), r(Math.max(b[0], b[2]), sx, m.width), r(Math.min(b[1], b[3]), sy, m.height), r(Math.max(b[1], b[3]), sy, m.height)].join(",");
}

/** The current query and settings as a location hash (async: the mask is deflated). */
export async function linkHash() {
  const q = S.query, cq = S.concept;
  if (!q && !cq) return null;
  const p = new URLSearchParams();
  p.set("c", cq ? cq.cache : S.choice.cache);
  p.set("l", cq ? cq.layer : S.choice.layer);
  if (cq) p.set("cn", `${cq.method}:${cq.id}`); // a concept as the query
  else {
    if (q.kind === "dataset") {
      if (q.cache !== S.choice.cache) p.set("qc", q.cache);
      p.set("i", q.id);
    } else p.set("u", q.upload);
    const m = brush.getMask();
    const box = S.box && S.box.map((v) => v.toFixed(1)).join(",");
    if (S.whole) p.set("w", S.wholeMode === "global" ? "g" : "1");
    else if (box && boxCells(box.split(",").map(Number), m) === boxCells(S.box, m)) p.set("b", box);
    else p.set("mz", await encodeMaskExact(m));
  }
  if (S.k !== 24) p.set("k", S.k);
  if (S.compare && !cq) p.set("cmp", choiceKey(S.compare));
  if (S.overlay !== "region") p.set("ov", S.overlay);
  if (S.filter) p.set("f", `${S.filter.column}=${S.filter.value}`);
  if (!S.excludeSelf) p.set("self", "1");
  return "#" + p.toString();
}

/** Write the current query into the URL (the latest call wins). */
export async function writeHash() {
  const seq = ++hashSeq;
  const hash = await linkHash();
  if (!hash || seq !== hashSeq) return;
  lastHash = hash;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

/** Apply location.hash: every setting it names, the defaults for those it does not (a link pasted
 * into an open tab replaces the query and settings as a fresh load of it would). */
export async function readHash() {
  const h = location.hash.slice(1);
  lastHash = location.hash;
  if (!h) return false;
  const p = new URLSearchParams(h);
  const c = p.get("c"), l = p.get("l");
  if (c && S.byName[c]) {
    const layer = S.byName[c].layers.some((x) => x.name === l) ? l : S.byName[c].default_layer;
    S.choice = { cache: c, layer };
  }
  const cmp = parseChoice(p.get("cmp"));
  S.compare = cmp && S.byName[cmp.cache] && choiceKey(cmp) !== choiceKey(S.choice) ? cmp : null;
  S.k = p.get("k") ? clamp(parseInt(p.get("k"), 10) || 24, 1, 500) : 24;
  S.overlay = ["region", "heat", "none"].includes(p.get("ov")) ? p.get("ov") : "region";
  S.filter = null;
  if (p.get("f")) {
    const [column, ...rest] = p.get("f").split("=");
    S.filter = { column, value: rest.join("=") };
  }
  S.excludeSelf = !p.get("self");
  syncControls();
  setChoiceUI();
  reloadDatasetIfNeeded();
  const cn = p.get("cn");
  if (cn) {
    const [method, id] = cn.split(":");
    return openConceptLink(method, Number(id));
  }
  exitConcept({ rerun: false });
  let q = null;
  if (p.get("i") != null) q = { kind: "dataset", cache: p.get("qc") || S.choice.cache, id: parseInt(p.get("i"), 10) };
  else if (p.get("u")) q = { kind: "upload", upload: p.get("u") };
  if (!q) return false;
  if (q.kind === "upload") {
    const r = await api(`/api/uploads/${enc(q.upload)}`);
    Object.assign(q, { size: r.size, name: r.name, geometries: r.geometry });
  }
  let opts = {};
  if (p.get("w")) opts = { whole: true, mode: p.get("w") === "g" ? "global" : "whole" };
  else if (p.get("b")) opts = { box: p.get("b").split(",").map(Number) };
  else if (p.get("mz")) opts = { mask: await decodeMaskExact(p.get("mz")) };
  else if (p.get("m")) opts = { mask: decodeMask(p.get("m")) };
  await setQuery(q, opts);
  return true;
}

export function syncControls() {
  $("#k").value = String(S.k);
  if ($("#k").value !== String(S.k)) {
    $("#k").append(el("option", { text: String(S.k) }));
    $("#k").value = String(S.k);
  }
  $("#exclude-self").checked = S.excludeSelf;
  for (const b of $$("#overlay-mode button")) b.classList.toggle("on", b.dataset.mode === S.overlay);
}

export function wireHistory() {
  window.addEventListener("hashchange", () => {
    if (location.hash === lastHash) return;
    readHash().catch(reportError);
  });
  $("#share").addEventListener("click", async () => {
    if (!S.query) return toast("pick a query image first", "info");
    await writeHash();
    try {
      await navigator.clipboard.writeText(location.href);
      toast("link copied", "info");
    } catch (_) {
      toast(`copy this link: ${location.href}`, "info");
    }
  });
}
