// The dataset map view: every image of the cache laid out by similarity (t-SNE grid, thumbnail
// atlas pages), pan/zoom, the current scores as colour, the top-k, the curve's rank window, and
// click to search an image. main.js exposes MAP as window.vfs.MAP (tests and benchmarks read it).
import { $, $$, clamp, dpr, el, fmt, basename, cmap } from "./util.js";
import { api, enc, thumbURL, loadImage, toast, reportError, followJob } from "./api.js";
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

/** The map's empty state: a title, a line of text, and (button) the offer to compute the map, with
 * the layers of this cache that already have one. */
function mapEmpty(text, { button = false, title = "", progress = false, others = [] } = {}) {
  const box = $("#map-empty");
  box.hidden = !text;
  if (text) $("#map-tip").hidden = true;
  $("#map-view").classList.toggle("no-map", !!text);
  if (!text) return;
  const kids = [];
  if (title) kids.push(el("div", { class: "map-empty-title", text: title }));
  kids.push(el("div", { class: "map-empty-text", text }));
  if (progress) kids.push(el("div", { class: "map-progress", id: "map-progress" }, el("i"), el("span", { text: "starting…" })));
  if (button) kids.push(el("button", { class: "btn primary big", id: "map-compute-empty", text: "Compute the map", onclick: () => computeMap().catch(reportError) }));
  if (others.length) kids.push(el("div", { class: "map-empty-others" }, "or view the map of ",
    ...others.map((l, i) => [i ? ", " : "", el("button", { class: "linkish", text: l, onclick: () => switchLayer(l) })])));
  const card = el("div", { class: "map-empty-card" }, ...kids);
  box.replaceChildren(card);
}

function switchLayer(layer) {
  const sel = $("#choice");
  sel.value = choiceKey({ cache: mapChoice().cache, layer });
  sel.dispatchEvent(new Event("change"));
}

/** The other layers of the map's cache that have a ready map (for the empty state). */
async function layersWithMaps(c) {
  const layers = (S.byName[c.cache] ? S.byName[c.cache].layers : []).map((l) => l.name).filter((l) => l !== c.layer);
  const infos = await Promise.all(layers.map((l) => api(`/api/caches/${enc(c.cache)}/map?${mapQS({ layer: l })}&grid=false`).catch(() => null)));
  return layers.filter((l, i) => infos[i] && infos[i].status === "ready");
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
  updateLegend();
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
    $("#map-info").textContent = choiceLabel(c);
    updateLegend();
    if (info.status === "computing") {
      mapEmpty("t-SNE of every image's pooled features, then a grid of thumbnails.", { title: `Computing the map of ${choiceLabel(c)}…`, progress: true });
      pollMapJob(info.job.job, c, key);
      return;
    }
    const n = S.byName[c.cache] ? S.byName[c.cache].indexed : 0;
    const text = info.status === "no_atlas" ? "The layout is computed but its thumbnail atlas is not: computing finishes it."
      : `The map lays out all ${n ? n.toLocaleString() + " " : ""}images by similarity (t-SNE of their pooled features on this layer), so you can browse the dataset and see where a query's matches lie. It is computed once on the server and stored with the cache.`;
    const failed = info.job && info.job.error ? ` The last attempt failed: ${info.job.error}` : "";
    mapEmpty(text + failed, { button: true, title: `No map of ${choiceLabel(c)} yet` });
    layersWithMaps(c).then((others) => {
      if (MAP.key === key && others.length && MAP.info && MAP.info.status !== "ready" && MAP.info.status !== "computing") mapEmpty(text + failed, { button: true, title: `No map of ${choiceLabel(c)} yet`, others });
    }).catch(() => {});
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
  mapEmpty("t-SNE of every image's pooled features, then a grid of thumbnails.", { title: `Computing the map of ${choiceLabel(c)}…`, progress: true });
  MAP.info = { status: "computing" };
  MAP.grid = null;
  drawMap();
  $("#map-compute").hidden = true;
  pollMapJob(r.job, c, key);
}

function pollMapJob(job, c, key) {
  followJob(job, MAP, {
    first: 400, every: 700, current: () => MAP.key === key,
    info: "#map-info", bar: "#map-progress", text: "computing map",
    ended: (j) => {
      if (j.status === "error") toast(`computing the map failed: ${j.error}`);
      MAP.key = "";
      $("#map-compute").hidden = false;
      refreshMap().catch(reportError);
    },
  });
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

/** The score colour of t in [0, 1] (the map's bars and its legend). */
export const scoreColor = (t) => cmap(0.22 + 0.78 * t);

/** The current scores on the map, one pixel per grid cell: {dim, bars}. dim: a neutral dark veil,
 * thin over high scores and at most ~half opaque over the lowest (the thumbnails stay readable;
 * images without a score a little darker); bars: each cell's score colour, drawn as a strip along
 * the bottom of its tile. */
function scoreCanvas() {
  if (MAP.scoreCanvas) return MAP.scoreCanvas;
  const side = MAP.info.side, g = MAP.grid, sc = MAP.scores;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < g.length; i++) {
    const v = g[i] >= 0 ? sc[g[i]] : NaN;
    if (isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  const mk = () => { const c = document.createElement("canvas"); c.width = c.height = side; return c; };
  const dim = mk(), bars = mk();
  const od = dim.getContext("2d"), ob = bars.getContext("2d");
  const dd = od.createImageData(side, side), db = ob.createImageData(side, side);
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < g.length; i++) {
    if (g[i] < 0) continue;
    const v = sc[g[i]];
    const j = 4 * i;
    dd.data[j] = 8; dd.data[j + 1] = 10; dd.data[j + 2] = 16;
    if (!isFinite(v)) { dd.data[j + 3] = 150; continue; }
    const t = clamp((v - lo) / span, 0, 1);
    dd.data[j + 3] = 130 * Math.pow(1 - t, 1.5);
    const [r, gg, b] = scoreColor(t);
    db.data[j] = r; db.data[j + 1] = gg; db.data[j + 2] = b; db.data[j + 3] = 255;
  }
  od.putImageData(dd, 0, 0);
  ob.putImageData(db, 0, 0);
  MAP.scoreCanvas = { dim, bars };
  MAP.scoreRange = [lo, hi];
  return MAP.scoreCanvas;
}

/** The curve's rank window on the map: the images at ranks [start, stop) of that search, when it
 * ran on the map's cache (any layer: the map places images, the window picks them). */
export async function mapWindow(ctx, win) {
  const c = mapChoice();
  const on = ctx && win && c && ctx.choice.cache === c.cache;
  MAP.win = on ? { sid: ctx.sid, start: win.start, stop: win.stop } : null;
  const label = $("#map-win");
  if (!on) { MAP.winCells = null; label.hidden = true; drawMap(); updateLegend(); return; }
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
  updateLegend();
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
    const { dim, bars } = scoreCanvas();
    g.imageSmoothingEnabled = false;
    g.drawImage(dim, 0, 0, info.side * T, info.side * T);
    // a colour bar along the bottom of each tile, once a tile is big enough to show one; the rows
    // in view only
    if (s * T >= 10) {
      const r0 = clamp(Math.floor(-ty / s / T), 0, info.side), r1 = clamp(Math.ceil((H / k - ty) / s / T), 0, info.side);
      const bh = Math.min(T * 0.12, 6 / s); // at most 6 CSS px
      for (let r = r0; r < r1; r++) g.drawImage(bars, 0, r, info.side, 1, 0, (r + 1) * T - bh, info.side * T, bh);
    }
  }
  // the curve's rank window: outlined in violet after the top-k (filled when outlines are too small)
  const win = MAP.winCells && MAP.winCells.length ? MAP.winCells : null;
  if (win && s * T < 6) {
    g.fillStyle = "rgba(200, 120, 255, 0.55)";
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
      g.fillText(`${rank}`, x + T * 0.04, y + T * 0.24);
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
  tip.hidden = false;
  placeTip(ev);
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
  const rank = MAP.top.has(id) ? ` · rank ${MAP.top.get(id)}` : "";
  tip.replaceChildren(el("b", { text: info.label || "—" }), document.createTextNode(` ${basename(info.path)}${sc}${rank}`));
  placeTip(ev);
}

/** The tooltip next to the pointer, flipped to its left / above it near the stage's right and
 * bottom edges: always inside the view. */
function placeTip(ev) {
  const tip = $("#map-tip"), r = $("#map-stage").getBoundingClientRect();
  const x = ev.clientX - r.left, y = ev.clientY - r.top, w = tip.offsetWidth, h = tip.offsetHeight, gap = 14;
  const left = x + gap + w <= r.width - 4 ? x + gap : x - gap - w;
  const top = y + gap + h <= r.height - 4 ? y + gap : y - gap - h;
  tip.style.left = `${clamp(left, 4, Math.max(4, r.width - w - 4))}px`;
  tip.style.top = `${clamp(top, 4, Math.max(4, r.height - h - 4))}px`;
}

/** What the map's outlines and colours mean (only those on the map now). */
function updateLegend() {
  const box = $("#map-legend");
  const ready = MAP.info && MAP.info.status === "ready";
  const items = [];
  const sw = (cls, text, title) => el("span", { class: "lg", title }, el("i", { class: `sw ${cls}` }), text);
  if (ready && MAP.top.size) items.push(sw("top", `top ${MAP.top.size} (number: rank)`, "the current search's results"));
  if (ready && MAP.queryId !== null && MAP.cellOf && MAP.cellOf.has(MAP.queryId)) items.push(sw("query", "query image", "the image of the current query"));
  if (ready && MAP.winCells && MAP.winCells.length) items.push(sw("win", "rank window", "the images in the rank window dragged on the score curve"));
  if (ready && MAP.scores && $("#map-scores").checked) {
    const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => `rgb(${scoreColor(t).map(Math.round).join(",")}) ${t * 100}%`).join(",");
    const [lo, hi] = MAP.scoreRange || [NaN, NaN];
    items.push(el("span", { class: "lg", title: "each tile's colour bar; low scores are also dimmed" }, `score ${fmt(lo, 2)}`, el("i", { class: "grad", style: `background:linear-gradient(90deg,${stops})` }), `${fmt(hi, 2)} · dimmed = low`));
  }
  box.hidden = !items.length;
  box.replaceChildren(...items);
}

export function wireMap() {
  for (const b of $$("#view-tabs button")) b.addEventListener("click", () => setView(b.dataset.view));
  $("#map-compute").addEventListener("click", () => computeMap().catch(reportError));
  $("#map-fit").addEventListener("click", () => { fitMap(); drawMap(); });
  $("#map-scores").addEventListener("change", () => { drawMap(); updateLegend(); });
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
