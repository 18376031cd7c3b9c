// The dataset map view: every image of the cache laid out by similarity (t-SNE grid, thumbnail
// atlas pages), pan/zoom, the current scores as colour, the top-k, the curve's rank window, and
// click to search an image. main.js exposes MAP as window.vfs.MAP (tests and benchmarks read it).
import { $, $$, clamp, dpr, el, fmt, basename, cmap } from "./util.js";
import { api, enc, thumbURL, loadImage, toast, reportError } from "./api.js";
import { S, choiceKey, choiceLabel } from "./state.js";
import { curveSeries } from "./curve.js";
import { setQuery } from "./query.js";

export const MAP = { key: "", info: null, grid: null, pages: [], scores: null, scoresSid: null, top: new Map(), queryId: null,
  view: null, loading: false, poll: null, hover: -1,
  // measured in the page (benchmarks and tests read them): load of the current map, and the
  // duration of each drawMap call (the canvas commands; rasterising happens at the next frame)
  timing: null, draws: [],
  // the curve's rank window, linked to the map: cells of the images at those ranks
  order: null, orderSid: null, win: null, winCells: null };

function mapChoice() { return S.choice; }
function mapKey() { const c = mapChoice(); return c ? choiceKey(c) : ""; }
const mapQS = (c) => `layer=${enc(c.layer)}&method=tsne`;

function setView(view) {
  for (const b of $$("#view-tabs button")) b.classList.toggle("on", b.dataset.view === view);
  $("#panes").hidden = view !== "results";
  $("#map-view").hidden = view !== "map";
  document.body.dataset.view = view;
  if (view === "map") refreshMap().catch(reportError);
}

function mapEmpty(text, button = false) {
  const box = $("#map-empty");
  box.hidden = !text;
  if (!text) return;
  const kids = [el("div", { text })];
  if (button) kids.push(el("button", { class: "btn primary", id: "map-compute-empty", text: "Compute map", onclick: () => computeMap().catch(reportError) }));
  box.replaceChildren(...kids);
}

async function refreshMap() {
  const c = mapChoice();
  if (!c || $("#map-view").hidden) return;
  const key = mapKey();
  if (key !== MAP.key || !MAP.info || MAP.info.status !== "ready") await loadMap(c, key);
  await loadMapScores();
  const series = curveSeries();
  const ctx = series.find((s) => s.sid === S.activeCurve) || series[0];
  await mapWindow(S.win && ctx ? ctx : null, S.win);
  drawMap();
}

async function loadMap(c, key) {
  const t0 = performance.now();
  MAP.key = key;
  MAP.timing = null;
  MAP.info = null;
  MAP.grid = null;
  MAP.pages = [];
  MAP.scores = null;
  MAP.scoresSid = null;
  $("#map-info").textContent = "loading map…";
  const info = await api(`/api/caches/${enc(c.cache)}/map?${mapQS(c)}`);
  if (MAP.key !== key) return;
  const tInfo = performance.now();
  MAP.info = info;
  $("#map-compute").hidden = info.status === "computing";
  $("#map-compute").textContent = info.status === "ready" ? "Recompute" : "Compute map";
  if (info.status !== "ready") {
    drawMap();
    if (info.status === "computing") { mapEmpty("Computing the map…"); pollMapJob(info.job.job, c, key); }
    else if (info.status === "no_atlas") mapEmpty("The map is computed but has no thumbnail atlas yet.", true);
    else mapEmpty(`No similarity map for ${choiceLabel(c)} yet.${info.job && info.job.error ? ` Last attempt failed: ${info.job.error}` : ""}`, true);
    $("#map-info").textContent = choiceLabel(c);
    return;
  }
  mapEmpty("");
  MAP.grid = Int32Array.from(info.grid);
  MAP.cellOf = new Map();
  for (let i = 0; i < MAP.grid.length; i++) if (MAP.grid[i] >= 0) MAP.cellOf.set(MAP.grid[i], i);
  const n = info.pages;
  MAP.pages = new Array(n).fill(null);
  $("#map-info").textContent = `${choiceLabel(c)} · ${info.n.toLocaleString()} images · ${info.side}×${info.side} t-SNE grid${info.stale ? " · stale (cache changed since)" : ""}`;
  fitMap();
  for (let p = 0; p < n; p++) {
    loadImage(`/api/caches/${enc(c.cache)}/map/atlas/${p}?${mapQS(c)}&v=${enc(info.version || "")}`).then((img) => {
      if (MAP.key !== key) return;
      MAP.pages[p] = img;
      drawMap();
      if (MAP.pages.every(Boolean)) {
        MAP.timing = { info_ms: tInfo - t0, ready_ms: performance.now() - t0, pages: n, images: info.n };
        document.body.dataset.mapReady = "1";
      }
    }).catch(reportError);
  }
}

async function computeMap() {
  const c = mapChoice();
  if (!c) return;
  const key = mapKey();
  const r = await api(`/api/caches/${enc(c.cache)}/map?${mapQS(c)}`, { method: "POST" });
  mapEmpty("Computing the map… (t-SNE, then the thumbnail atlas)");
  MAP.info = { status: "computing" };
  MAP.grid = null;
  drawMap();
  $("#map-compute").hidden = true;
  pollMapJob(r.job, c, key);
}

function pollMapJob(job, c, key) {
  clearTimeout(MAP.poll);
  const tick = async () => {
    let j;
    try { j = await api(`/api/jobs/${job}`); } catch (e) { reportError(e); return; }
    if (MAP.key !== key) return;
    if (j.status === "running") {
      $("#map-info").textContent = `computing map… ${(100 * j.progress).toFixed(0)} % · ${j.seconds.toFixed(0)} s`;
      MAP.poll = setTimeout(tick, 700);
      return;
    }
    if (j.status === "error") toast(`computing the map failed: ${j.error}`);
    MAP.key = "";
    $("#map-compute").hidden = false;
    refreshMap().catch(reportError);
  };
  MAP.poll = setTimeout(tick, 400);
}

/** The scores of the latest search on the map's cache (the pane with the same layer first). */
async function loadMapScores() {
  const c = mapChoice();
  const panes = (S.panes || []).filter((p) => p.ctx && p.choice.cache === c.cache);
  panes.sort((a, b) => (b.choice.layer === c.layer) - (a.choice.layer === c.layer));
  const p = panes[0];
  if (!p) { MAP.scores = null; MAP.scoresSid = null; MAP.top = new Map(); MAP.queryId = null; return; }
  MAP.top = new Map(p.matches.map((m) => [m.id, m.rank]));
  MAP.queryId = S.query && S.query.kind === "dataset" && S.query.cache === c.cache ? S.query.id : null;
  if (MAP.scoresSid === p.ctx.sid) return;
  const r = await fetch(`/api/searches/${p.ctx.sid}/scores`);
  if (!r.ok) return;
  MAP.scores = new Float32Array(await r.arrayBuffer());
  MAP.scoresSid = p.ctx.sid;
  MAP.scoreCanvas = null;
}

function mapWorld() { const i = MAP.info; return i && i.status === "ready" ? i.side * i.tile : 1; }

function fitMap() {
  const cv = $("#map-canvas");
  const W = cv.clientWidth || 600, H = cv.clientHeight || 600;
  const w = mapWorld();
  const s = Math.min(W, H) / w * 0.96;
  MAP.view = { s, tx: (W - w * s) / 2, ty: (H - w * s) / 2 };
}

function scoreCanvas() {
  if (MAP.scoreCanvas) return MAP.scoreCanvas;
  const side = MAP.info.side, g = MAP.grid, sc = MAP.scores;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < g.length; i++) {
    const v = g[i] >= 0 ? sc[g[i]] : NaN;
    if (isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  const c = document.createElement("canvas");
  c.width = c.height = side;
  const o = c.getContext("2d");
  const d = o.createImageData(side, side);
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < g.length; i++) {
    const v = g[i] >= 0 ? sc[g[i]] : NaN;
    const j = 4 * i;
    if (!isFinite(v)) { d.data[j + 3] = g[i] >= 0 ? 170 : 0; continue; }
    const t = clamp((v - lo) / span, 0, 1);
    const [r, gg, b] = cmap(0.1 + 0.9 * t);
    d.data[j] = r; d.data[j + 1] = gg; d.data[j + 2] = b;
    d.data[j + 3] = 235 - 180 * Math.pow(t, 0.8); // low scores: mostly colour; high: the photo shows through
  }
  o.putImageData(d, 0, 0);
  MAP.scoreCanvas = c;
  MAP.scoreRange = [lo, hi];
  return c;
}

/** The curve's rank window on the map: the images at ranks [start, stop) of that search, when it
 * ran on the map's cache (any layer: the map places images, the window picks them). */
export async function mapWindow(ctx, win) {
  const c = mapChoice();
  const on = ctx && win && c && ctx.choice.cache === c.cache;
  MAP.win = on ? { sid: ctx.sid, start: win.start, stop: win.stop } : null;
  const label = $("#map-win");
  if (!on) { MAP.winCells = null; label.hidden = true; drawMap(); return; }
  if (!MAP.cellOf || $("#map-view").hidden) return;  // applied when the map is shown (refreshMap)
  if (MAP.orderSid !== ctx.sid) {
    const r = await fetch(`/api/searches/${ctx.sid}/order`);
    if (!r.ok) return;
    MAP.order = new Int32Array(await r.arrayBuffer());
    MAP.orderSid = ctx.sid;
  }
  if (!MAP.win || MAP.win.sid !== ctx.sid || !MAP.cellOf) return;
  const cells = [];
  for (let k = MAP.win.start; k < Math.min(MAP.win.stop, MAP.order.length); k++) {
    const ci = MAP.cellOf.get(MAP.order[k]);
    if (ci !== undefined) cells.push(ci);
  }
  MAP.winCells = Int32Array.from(cells);
  label.textContent = `■ ranks ${(MAP.win.start + 1).toLocaleString()}–${MAP.win.stop.toLocaleString()} (${cells.length.toLocaleString()} on the map)`;
  label.hidden = false;
  document.body.dataset.mapWindow = `${MAP.win.start}-${MAP.win.stop}`;
  drawMap();
}

function drawMap() {
  const t0 = performance.now();
  drawMapNow();
  MAP.draws.push(performance.now() - t0);
  if (MAP.draws.length > 200) MAP.draws.shift();
}

function drawMapNow() {
  const cv = $("#map-canvas");
  if (!cv || $("#map-view").hidden) return;
  const W = Math.max(1, Math.round(cv.clientWidth * dpr())), H = Math.max(1, Math.round(cv.clientHeight * dpr()));
  if (cv.width !== W) cv.width = W;
  if (cv.height !== H) cv.height = H;
  const g = cv.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.fillStyle = "#181818";
  g.fillRect(0, 0, W, H);
  const info = MAP.info;
  if (!info || info.status !== "ready" || !MAP.grid) return;
  if (!MAP.view) fitMap();
  const { s, tx, ty } = MAP.view;
  const k = dpr();
  g.setTransform(s * k, 0, 0, s * k, tx * k, ty * k);
  const span = info.page_tiles * info.tile;
  g.imageSmoothingEnabled = s < 1;
  g.imageSmoothingQuality = "medium";
  for (let p = 0; p < MAP.pages.length; p++) {
    const img = MAP.pages[p];
    if (!img) continue;
    const px = p % info.pages_x, py = Math.floor(p / info.pages_x);
    g.drawImage(img, px * span, py * span, img.naturalWidth, img.naturalHeight);
  }
  const T = info.tile;
  if (s * T >= 56) drawMapThumbs(g, info, s, W / k, H / k);
  if (MAP.scores && $("#map-scores").checked) {
    g.imageSmoothingEnabled = false;
    g.drawImage(scoreCanvas(), 0, 0, info.side * T, info.side * T);
  }
  // the curve's rank window: a violet veil over its images (outlined after the top-k)
  const win = MAP.winCells && MAP.winCells.length ? MAP.winCells : null;
  if (win) {
    g.fillStyle = "rgba(190, 90, 255, 0.3)";
    for (const ci of win) g.fillRect((ci % info.side) * T, Math.floor(ci / info.side) * T, T, T);
  }
  // top-k and the query image
  g.lineWidth = Math.max(1.5 / s, T * 0.06);
  for (const [id, rank] of MAP.top) {
    const ci = MAP.cellOf.get(id);
    if (ci === undefined) continue;
    const x = (ci % info.side) * T, y = Math.floor(ci / info.side) * T;
    g.strokeStyle = "#ffb020";
    g.strokeRect(x + g.lineWidth / 2, y + g.lineWidth / 2, T - g.lineWidth, T - g.lineWidth);
    if (s * T >= 22) {
      g.fillStyle = "rgba(0,0,0,.7)";
      g.fillRect(x, y, T * 0.5, T * 0.3);
      g.fillStyle = "#ffd27a";
      g.font = `${T * 0.24}px sans-serif`;
      g.fillText(`${rank + 1}`, x + T * 0.04, y + T * 0.24);
    }
  }
  if (win && s * T >= 6) {
    g.strokeStyle = "#d59cff";
    g.lineWidth = Math.max(1.5 / s, T * 0.08);
    for (const ci of win) {
      const x = (ci % info.side) * T, y = Math.floor(ci / info.side) * T;
      g.strokeRect(x + g.lineWidth / 2, y + g.lineWidth / 2, T - g.lineWidth, T - g.lineWidth);
    }
  }
  if (MAP.queryId !== null && MAP.cellOf.has(MAP.queryId)) {
    const ci = MAP.cellOf.get(MAP.queryId);
    const x = (ci % info.side) * T, y = Math.floor(ci / info.side) * T;
    g.strokeStyle = "#2fe0ff";
    g.lineWidth *= 1.6;
    g.strokeRect(x, y, T, T);
  }
  if (MAP.hover >= 0) {
    const x = (MAP.hover % info.side) * T, y = Math.floor(MAP.hover / info.side) * T;
    g.strokeStyle = "#fff";
    g.lineWidth = 1.5 / s;
    g.strokeRect(x, y, T, T);
  }
}

/** Zoomed in past the atlas' resolution: the visible cells get their full thumbnails. */
const mapThumbs = new Map();
function drawMapThumbs(g, info, s, Wc, Hc) {
  const T = info.tile, { tx, ty } = MAP.view, c = mapChoice();
  const c0 = clamp(Math.floor(-tx / s / T), 0, info.side), c1 = clamp(Math.ceil((Wc - tx) / s / T), 0, info.side);
  const r0 = clamp(Math.floor(-ty / s / T), 0, info.side), r1 = clamp(Math.ceil((Hc - ty) / s / T), 0, info.side);
  if ((c1 - c0) * (r1 - r0) > 400) return;
  g.imageSmoothingEnabled = true;
  g.imageSmoothingQuality = "high";
  for (let r = r0; r < r1; r++)
    for (let cc = c0; cc < c1; cc++) {
      const id = MAP.grid[r * info.side + cc];
      if (id < 0) continue;
      const key = `${c.cache}:${id}`;
      const img = mapThumbs.get(key);
      if (img === undefined) {
        mapThumbs.set(key, null);
        loadImage(thumbURL(c.cache, id)).then((im) => {
          mapThumbs.set(key, im);
          if (mapThumbs.size > 1500) mapThumbs.delete(mapThumbs.keys().next().value);
          requestAnimationFrame(drawMap);
        }).catch(() => {});
        continue;
      }
      if (!img) continue;
      const q = Math.min(img.naturalWidth, img.naturalHeight);  // centre square, as the atlas tiles
      g.drawImage(img, (img.naturalWidth - q) / 2, (img.naturalHeight - q) / 2, q, q, cc * T, r * T, T, T);
    }
}

function mapCellAt(ev) {
  const info = MAP.info;
  if (!info || info.status !== "ready" || !MAP.view) return -1;
  const r = $("#map-canvas").getBoundingClientRect();
  const wx = (ev.clientX - r.left - MAP.view.tx) / MAP.view.s, wy = (ev.clientY - r.top - MAP.view.ty) / MAP.view.s;
  const col = Math.floor(wx / info.tile), row = Math.floor(wy / info.tile);
  if (col < 0 || row < 0 || col >= info.side || row >= info.side) return -1;
  return row * info.side + col;
}

const tipCache = new Map();
async function mapHover(ev) {
  const ci = mapCellAt(ev);
  const tip = $("#map-tip");
  if (ci !== MAP.hover) { MAP.hover = ci; drawMap(); }
  const id = ci >= 0 ? MAP.grid[ci] : -1;
  if (id < 0) { tip.hidden = true; return; }
  const c = mapChoice();
  const r = $("#map-stage").getBoundingClientRect();
  tip.style.left = `${Math.min(ev.clientX - r.left + 14, r.width - 200)}px`;
  tip.style.top = `${ev.clientY - r.top + 14}px`;
  tip.hidden = false;
  const key = `${c.cache}:${id}`;
  let rec = tipCache.get(key);
  if (!rec) {
    tip.textContent = `#${id}`;
    rec = api(`/api/caches/${enc(c.cache)}/images/${id}`).catch(() => null);
    tipCache.set(key, rec);
    if (tipCache.size > 2000) tipCache.delete(tipCache.keys().next().value);
  }
  const info = await rec;
  if (MAP.hover !== ci || !info) return;
  const sc = MAP.scores && isFinite(MAP.scores[id]) ? ` · score ${fmt(MAP.scores[id], 3)}` : "";
  const rank = MAP.top.has(id) ? ` · #${MAP.top.get(id) + 1}` : "";
  tip.replaceChildren(el("b", { text: info.label || "—" }), document.createTextNode(` ${basename(info.path)}${sc}${rank}`));
}

export function wireMap() {
  for (const b of $$("#view-tabs button")) b.addEventListener("click", () => setView(b.dataset.view));
  $("#map-compute").addEventListener("click", () => computeMap().catch(reportError));
  $("#map-fit").addEventListener("click", () => { fitMap(); drawMap(); });
  $("#map-scores").addEventListener("change", drawMap);
  const stage = $("#map-stage");
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    if (!MAP.view || e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, tx: MAP.view.tx, ty: MAP.view.ty, moved: false };
    stage.setPointerCapture(e.pointerId);
  });
  stage.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (drag.moved) {
        stage.classList.add("dragging");
        MAP.view.tx = drag.tx + dx;
        MAP.view.ty = drag.ty + dy;
        $("#map-tip").hidden = true;
        drawMap();
        return;
      }
    }
    mapHover(e).catch(() => {});
  });
  stage.addEventListener("pointerup", (e) => {
    const d = drag;
    drag = null;
    stage.classList.remove("dragging");
    if (!d || d.moved) return;
    const ci = mapCellAt(e);
    const id = ci >= 0 ? MAP.grid[ci] : -1;
    if (id < 0) return;
    const c = mapChoice();
    setQuery({ kind: "dataset", cache: c.cache, id }, e.shiftKey ? {} : { whole: true }).catch(reportError);
  });
  stage.addEventListener("pointerleave", () => { $("#map-tip").hidden = true; if (MAP.hover >= 0) { MAP.hover = -1; drawMap(); } });
  stage.addEventListener("wheel", (e) => {
    if (!MAP.view) return;
    e.preventDefault();
    const r = stage.getBoundingClientRect();
    const mx = e.clientX - r.left, my = e.clientY - r.top;
    const f = Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015));
    const w = mapWorld();
    const s = clamp(MAP.view.s * f, Math.min(r.width, r.height) / w * 0.25, 8);
    const k = s / MAP.view.s;
    MAP.view.tx = mx - (mx - MAP.view.tx) * k;
    MAP.view.ty = my - (my - MAP.view.ty) * k;
    MAP.view.s = s;
    drawMap();
  }, { passive: false });
  new ResizeObserver(() => drawMap()).observe(stage);
  window.addEventListener("vfs:results", () => { if (!$("#map-view").hidden) refreshMap().catch(reportError); });
  $("#choice").addEventListener("change", () => setTimeout(() => refreshMap().catch(reportError), 0));
}
