// The query: its image on the stage, the brush (and its toolbar), uploads (button, drop, paste),
// and switching the feature choice (which carries the query to the other cache).
import { Brush } from "../brush.js";
import { $, $$, el } from "./util.js";
import { api, enc, thumbURL, originalURL, toast, status, reportError } from "./api.js";
import { S, layerInfo, choiceKey, queryMode, MODE_TEXT } from "./state.js";
import { queryGeometry } from "./geometry.js";
import { setChoiceUI, fillColumnSelects, reloadDatasetIfNeeded, markCurrentThumb } from "./dataset.js";
import { runSearch, clearResults } from "./search.js";

/** The query's brush (a Brush from brush.js), created by wireQuery(). */
export let brush;
const stage = () => $("#stage");

export function layoutStage() {
  const q = S.query;
  if (!q) return;
  const st = stage();
  const maxW = st.clientWidth - 16, maxH = st.clientHeight - 16;
  const [w, h] = q.size;
  const s = Math.min(maxW / w, maxH / h);
  const img = $("#q-img");
  img.style.width = `${Math.round(w * s)}px`;
  img.style.height = `${Math.round(h * s)}px`;
  brush.resize();
}

function updateGrid() {
  if (!S.query) return;
  const li = layerInfo(S.choice);
  const g = queryGeometry(S.query, S.choice.cache);
  // the layer's cells as drawn on this image (a padded, full-mode grid: only the image's own cells)
  const cells = g.cells && g.cells[S.choice.layer];
  brush.setGrid(cells ? { rows: cells.rows, cols: cells.cols, crop: cells.box } : { rows: li.grid[0], cols: li.grid[1], crop: g.crop });
  S.query.geometry = g;
  renderQueryMeta();
}

export function renderQueryMeta(extra = null) {
  const q = S.query;
  const box = $("#q-meta");
  if (!q) return box.replaceChildren();
  const li = layerInfo(S.choice);
  const parts = [];
  if (q.kind === "dataset") parts.push(el("b", { text: `#${q.id}` }));
  else parts.push(el("span", {}, "upload ", el("b", { text: q.name || q.upload })));
  if (q.label) parts.push(el("b", { text: q.label }));
  parts.push(el("span", { class: "pill", title: "image size (pixels)", text: `${q.size[0]}×${q.size[1]}` }));
  parts.push(el("span", { class: "pill", title: "feature grid of this layer: rows × cols × channels, over what the model sees (its centre crop, unless indexed in mode squash or full)", text: `${li.grid[0]}×${li.grid[1]}×${li.channels}` }));
  const qi = extra || (S.panes[0] && S.panes[0].ctx && S.panes[0].ctx.query);
  const mode = qi ? qi.mode || "region" : queryMode();
  if (qi && mode === "global") parts.push(el("span", { class: "pill hot", title: "similar images: the cosine of the mean-pooled features of the whole images", text: "similar images" }));
  else if (qi && qi.n_cells) parts.push(el("span", { class: "pill hot", title: mode === "whole" ? "rigid whole-image query: every cell against the same cell of each image" : "cells the mask covers (in a box of rows × cols on the grid)", text: `${mode === "whole" ? "rigid · " : ""}${qi.n_cells} cells in ${qi.cell_box[2]}×${qi.cell_box[3]}` }));
  for (const [k, v] of Object.entries(q.meta || {})) parts.push(el("span", {}, `${k} `, el("b", { text: v })));
  box.replaceChildren(...parts);
  renderNotes(qi && qi.image && sameImage(qi.image, q) ? qi.notes : null);
  $("#q-info").textContent = q.kind === "dataset" ? q.path : q.name || "";
  $("#q-info").title = $("#q-info").textContent;
}

function sameImage(echo, q) {
  return q.kind === "dataset" ? echo.path === q.path : echo.upload === q.upload;
}

/** The query record's notes (e.g. a region partly outside the model's view): one quiet line under
 * the query, the full text on hover or click. */
function renderNotes(notes) {
  const box = $("#q-notes");
  box.hidden = !(notes && notes.length);
  if (box.hidden) return box.replaceChildren();
  box.classList.remove("open");
  box.title = `${notes.join("\n")}\n(click to show it all)`;
  box.replaceChildren(...notes.map((n) => el("div", { class: "note" }, el("span", { class: "i", text: "i" }), el("span", { class: "t", text: n }))));
}

/** Set the query image. opts.mask: {data,width,height} | opts.box | opts.whole (opts.mode: "global"
 * | "whole" sets the whole-image mode first); with a region the search runs. */
export async function setQuery(q, opts = {}) {
  let info = q;
  if (q.kind === "dataset") {
    const r = await api(`/api/caches/${enc(q.cache)}/images/${q.id}`);
    if (!r.valid) throw new Error(`image #${q.id} was not indexed; it cannot be a query`);
    const geometries = { [q.cache]: r.geometry };
    if (q.cache !== S.choice.cache) {
      // a query from another cache than the one searched (a shared link): the geometry of the same
      // file there (when it is not there, the search says so)
      geometries[S.choice.cache] = await api(`/api/caches/${enc(S.choice.cache)}/lookup?from_cache=${enc(q.cache)}&id=${q.id}`)
        .then((x) => x.geometry, () => r.geometry);
    }
    info = { kind: "dataset", cache: q.cache, id: r.id, path: r.path, label: r.label, size: r.size, meta: r.meta, geometries };
  }
  const img = $("#q-img");
  const srcs = info.kind === "dataset" ? [originalURL(info.cache, info.id), thumbURL(info.cache, info.id)] : [`/api/uploads/${enc(info.upload)}/image`];
  let loaded = false;
  for (const src of srcs) {
    try {
      await new Promise((res, rej) => {
        img.onload = res;
        img.onerror = rej;
        img.src = src;
      });
      loaded = true;
      break;
    } catch (_) { /* try the next source (e.g. the thumbnail when the original is gone) */ }
  }
  if (!loaded) throw new Error("cannot load the query image");
  S.query = info;
  S.whole = false;
  if (opts.mode === "global" || opts.mode === "whole") S.wholeMode = opts.mode;
  S.box = opts.box ? opts.box.slice() : null;
  stage().classList.remove("empty");
  brush.setImageSize(info.size[0], info.size[1]);
  layoutStage();
  updateGrid();
  markCurrentThumb();
  updateWholeBtn();
  if (opts.mask) brush.setMask(opts.mask.data, opts.mask.width, opts.mask.height, { commit: false });
  else if (opts.box) brush.setBox(...opts.box, { commit: false });
  else if (opts.whole) {
    S.whole = true;
    brush.fill({ commit: false });
    updateWholeBtn();
  }
  if (opts.mask || opts.box || opts.whole) return runSearch();
  clearResults("Brush a region of the query image to search.");
}

const MODE_HELP = { global: "content anywhere in the image (pooled features)", whole: "cell (i, j) against cell (i, j): the layout must match" };
function updateWholeBtn() {
  // Whole is the query (not a tool): its own toggle; the tool buttons keep the next stroke's tool
  const w = $("#whole");
  w.classList.toggle("on", S.whole);
  w.setAttribute("aria-pressed", String(S.whole));
  w.title = `Query with the whole image (W)${S.whole ? `: now ${MODE_TEXT[S.wholeMode]}` : ""}`;
  $("#q-mode").hidden = !S.whole;
  // while the query is the whole image, the tools only say what the next stroke does
  $("#tool-seg").classList.toggle("idle", S.whole);
  $("#tool-seg").title = S.whole ? "the next stroke replaces the whole-image query (erasing carves it)" : "";
  for (const b of $$("#q-mode [data-wmode]")) {
    b.classList.toggle("on", b.dataset.wmode === S.wholeMode);
    b.setAttribute("aria-pressed", String(b.dataset.wmode === S.wholeMode));
  }
  $("#q-mode-help").textContent = MODE_HELP[S.wholeMode];
  document.body.dataset.mode = queryMode();
}

/** The whole-image query in `mode` ("global" | "whole"; default: the current choice). */
export function searchWhole(mode = S.wholeMode) {
  if (!S.query) return;
  S.whole = true;
  S.wholeMode = mode;
  S.box = null;
  brush.fill({ commit: false });
  updateWholeBtn();
  runSearch().catch(reportError);
}

async function uploadFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && !/\.(jpe?g|png|gif|webp|bmp|tiff?)$/i.test(file.name)) {
    toast(`${file.name} is not an image`);
    return;
  }
  status("uploading…", true);
  try {
    const fd = new FormData();
    fd.append("file", file, file.name || "pasted.png");
    const r = await api("/api/uploads", { method: "POST", body: fd });
    await setQuery({ kind: "upload", upload: r.upload, name: r.name, size: r.size, label: "", geometries: r.geometry });
    status(`uploaded ${r.name} (${r.size[0]}×${r.size[1]})`);
  } catch (e) {
    status("");
    reportError(e);
  }
}

export function setTool(tool) {
  brush.setTool(tool);
  for (const b of $$("#tools [data-tool]")) b.classList.toggle("on", b.dataset.tool === tool);
  stage().classList.toggle("tool-box", tool === "box");
}

export async function changeChoice(c) {
  const prev = S.choice;
  S.choice = c;
  if (S.compare && choiceKey(S.compare) === choiceKey(c)) S.compare = null;
  setChoiceUI();
  if (c.cache !== prev.cache) {
    S.filter = null;
    S.ds.column = "";
    S.ds.value = "";
    fillColumnSelects();
    reloadDatasetIfNeeded();
  }
  if (!S.query) return;
  if (S.query.kind === "dataset" && S.query.cache !== c.cache) {
    // carry the query to the other cache when it holds the same image file
    try {
      const r = await api(`/api/caches/${enc(c.cache)}/lookup?from_cache=${enc(S.query.cache)}&id=${S.query.id}`);
      const m = brush.getMask();
      const whole = S.whole;
      await setQuery({ kind: "dataset", cache: c.cache, id: r.id }, whole ? { whole: true, mode: S.wholeMode } : brush.isEmpty() ? {} : { mask: m });
    } catch (e) {
      S.query = null;
      stage().classList.add("empty");
      clearResults("The query image is not in this cache: pick one on the left.");
      toast(e.message, "info");
    }
    return;
  }
  updateGrid();
  if (S.whole || !brush.isEmpty()) await runSearch();
}

export function wireQuery() {
  brush = new Brush($("#q-canvas"), { size: 40, hardness: 0.35 });
  brush.addEventListener("commit", (e) => {
    const t0 = performance.now();
    const reason = e.detail.reason;
    S.box = reason === "box" && brush.lastBox && !brush.lastBoxAdded ? brush.lastBox.slice() : null;
    if (reason !== "fill") S.whole = false;
    updateWholeBtn();
    runSearch({ t0 }).catch(reportError);
  });
  // painting (or boxing) on a whole-image query starts a fresh mask; erasing carves it
  $(".stage-inner").addEventListener("pointerdown", () => {
    if (S.whole && brush.tool !== "erase") brush.clear({ commit: false });
  }, { capture: true });
  brush.addEventListener("history", () => {
    $("#undo").disabled = !brush.canUndo();
    $("#redo").disabled = !brush.canRedo();
  });
  for (const b of $$("#tools [data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("#whole").addEventListener("click", () => searchWhole());
  for (const b of $$("#q-mode [data-wmode]")) b.addEventListener("click", () => searchWhole(b.dataset.wmode));
  $("#q-notes").addEventListener("click", (e) => e.currentTarget.classList.toggle("open"));
  $("#size").addEventListener("input", (e) => brush.setSize(+e.target.value));
  $("#soft").addEventListener("input", (e) => brush.setHardness(1 - e.target.value / 100));
  brush.setHardness(1 - $("#soft").value / 100);
  brush.setSize(+$("#size").value);
  $("#undo").addEventListener("click", () => brush.undo());
  $("#redo").addEventListener("click", () => brush.redo());
  $("#invert").addEventListener("click", () => S.query && brush.invert());
  $("#clear").addEventListener("click", () => S.query && brush.clear());
  $("#grid-toggle").addEventListener("click", (e) => {
    brush.setShowGrid(!brush.showGrid);
    e.currentTarget.classList.toggle("on", brush.showGrid);
  });

  $("#upload-btn").addEventListener("click", () => $("#upload").click());
  $("#upload").addEventListener("change", (e) => {
    uploadFile(e.target.files[0]);
    e.target.value = "";
  });
  const st = stage();
  st.addEventListener("dragover", (e) => {
    e.preventDefault();
    st.classList.add("dragover");
  });
  st.addEventListener("dragleave", () => st.classList.remove("dragover"));
  st.addEventListener("drop", (e) => {
    e.preventDefault();
    st.classList.remove("dragover");
    const f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) uploadFile(f);
  });
  window.addEventListener("paste", (e) => {
    const f = [...(e.clipboardData?.files || [])].find((x) => x.type.startsWith("image/"));
    if (f) uploadFile(f);
  });
}
