// vfsearch web app: pick an image, brush a region, see the most similar regions in the dataset.
import { Brush, encodeMask, decodeMask } from "./brush.js";

const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));
const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);
const dpr = () => window.devicePixelRatio || 1;
const PALETTE = ["#2f5bea", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#b08900", "#5f3dc4"];

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k != null) e.append(k.nodeType ? k : document.createTextNode(k));
  return e;
}
const fmt = (v, d = 3) => (v == null || !isFinite(v) ? "–" : (+v).toFixed(d));
const basename = (p) => String(p).split("/").pop();
const debounce = (fn, ms) => {
  let t;
  return (...a) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...a), ms);
  };
};

// -- state -------------------------------------------------------------------------------------
const S = {
  caches: [],
  byName: {},
  choice: null, // {cache, layer}
  compare: null,
  k: 24,
  excludeSelf: true,
  query: null, // {kind: "dataset"|"upload", cache, id, upload, name, path, label, size:[w,h], meta}
  whole: false,
  panes: [], // [{ctx, matches, total, error, loading}]
  overlay: "region",
  filter: null, // {column, value}
  spreadCol: "label",
  history: [],
  colorIx: 0,
  win: null, // {start, stop, key}
  activeCurve: null,
  seq: 0,
  lastTiming: null,
  ds: { q: "", column: "", value: "", offset: 0, total: 0, loading: false, done: false },
};
window.vfs = { S, timings: [] };

// -- API ----------------------------------------------------------------------------------------
async function api(path, opts = {}) {
  const init = { ...opts };
  if (opts.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(opts.json);
    init.headers = { "Content-Type": "application/json", ...(opts.headers || {}) };
    delete init.json;
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error("cannot reach the vfsearch server (is it still running?)");
  }
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json().catch(() => null) : null;
  if (!r.ok) {
    const err = new Error(body && body.message ? body.message : `${r.status} ${r.statusText}`);
    err.status = r.status;
    err.code = body && body.error;
    throw err;
  }
  return body;
}

const enc = encodeURIComponent;
const thumbURL = (cache, id) => `/api/caches/${enc(cache)}/thumb/${id}`;
const originalURL = (cache, id) => `/api/caches/${enc(cache)}/image/${id}`;

// image cache: url -> Promise<HTMLImageElement>
const imgCache = new Map();
function loadImage(url) {
  let p = imgCache.get(url);
  if (p) return p;
  p = new Promise((resolve, reject) => {
    const im = new Image();
    im.decoding = "async";
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error(`cannot load ${url}`));
    im.src = url;
  });
  imgCache.set(url, p);
  p.catch(() => imgCache.delete(url));
  if (imgCache.size > 3000) imgCache.delete(imgCache.keys().next().value);
  return p;
}

/** Thumbnails the server sent inline (base64 JPEG) go straight into the image cache. */
function primeThumbs(cache, thumbs) {
  if (!thumbs) return;
  for (const [id, b64] of Object.entries(thumbs)) {
    const url = thumbURL(cache, id);
    if (imgCache.has(url)) continue;
    const p = new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = () => reject(new Error(`bad thumbnail ${id}`));
      im.src = `data:image/jpeg;base64,${b64}`;
    });
    imgCache.set(url, p);
    p.catch(() => imgCache.delete(url));
  }
}

// -- toast / status -----------------------------------------------------------------------------
let toastTimer;
function toast(msg, kind = "error") {
  const t = $("#toast");
  t.textContent = msg;
  t.className = `toast ${kind === "error" ? "" : "info"}`;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), kind === "error" ? 7000 : 2500);
}
function status(text, busy = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("busy", busy);
}
function reportError(e) {
  if (e && e.name === "AbortError") return;
  console.warn(e);
  toast(e.message || String(e));
}

// -- geometry (mirrors vfsearch.transforms) ---------------------------------------------------
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
function geometry(t, w, h) {
  const s = t.size;
  let g;
  if (t.mode === "whole") g = { sx: s / w, sy: s / h, left: 0, top: 0, size: s };
  else {
    const scale = t.resize / Math.min(w, h);
    const rw = Math.max(s, pyRound(w * scale)), rh = Math.max(s, pyRound(h * scale));
    g = { sx: rw / w, sy: rh / h, left: pyRound((rw - s) / 2), top: pyRound((rh - s) / 2), size: s };
  }
  g.crop = [Math.max(0, g.left / g.sx), Math.max(0, g.top / g.sy), Math.min(w, (s + g.left) / g.sx), Math.min(h, (s + g.top) / g.sy)];
  return g;
}
const cacheInfo = (name) => S.byName[name];
const layerInfo = (choice) => cacheInfo(choice.cache).layers.find((l) => l.name === choice.layer);
const choiceKey = (c) => (c ? `${c.cache}::${c.layer}` : "");
const parseChoice = (v) => {
  if (!v) return null;
  const i = v.indexOf("::");
  return { cache: v.slice(0, i), layer: v.slice(i + 2) };
};
const choiceLabel = (c) => `${c.cache} · ${c.layer}`;
const shortChoice = (c) => (S.caches.length > 1 ? `${c.cache}·${c.layer}` : c.layer);

// affine map: query-mask pixels -> result canvas pixels (R = where the result image is drawn)
function carryTransform(ctx, m, R) {
  const q = ctx.query;
  const gq = q.geometry, gr = m.geometry;
  const [H, W] = q.grid;
  const [r0, c0] = q.cell_box;
  const cw = gq.size / W, ch = gq.size / H;
  const dx = (m.offset[1] - c0) * cw, dy = (m.offset[0] - r0) * ch;
  const kx = R.w / m.image_size[0], ky = R.h / m.image_size[1];
  const [Wq, Hq] = q.image_size;
  const mw = ctx.mask.width, mh = ctx.mask.height;
  const a = kx * (Wq / mw) * (gq.sx / gr.sx);
  const d = ky * (Hq / mh) * (gq.sy / gr.sy);
  const e = R.x + (kx * (dx - gq.left + gr.left)) / gr.sx;
  const f = R.y + (ky * (dy - gq.top + gr.top)) / gr.sy;
  // where the query's crop lands in the result (intersected with the result's own crop)
  const qx0 = R.x + (kx * (dx + gr.left)) / gr.sx, qx1 = R.x + (kx * (gq.size + dx + gr.left)) / gr.sx;
  const qy0 = R.y + (ky * (dy + gr.top)) / gr.sy, qy1 = R.y + (ky * (gq.size + dy + gr.top)) / gr.sy;
  const c = gr.crop;
  const clip = [Math.max(qx0, R.x + c[0] * kx), Math.max(qy0, R.y + c[1] * ky), Math.min(qx1, R.x + c[2] * kx), Math.min(qy1, R.y + c[3] * ky)];
  return { t: [a, 0, 0, d, e, f], clip };
}

// -- colour map for heat overlays (inferno-like) ----------------------------------------------
const INFERNO = [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]];
function cmap(t) {
  t = clamp(t, 0, 1) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(t)), f = t - i;
  const a = INFERNO[i], b = INFERNO[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

// -- drawing one result (thumbnail + overlay) into a canvas -----------------------------------
function fitRect(iw, ih, W, H, pad = 0) {
  const s = Math.min((W - 2 * pad) / iw, (H - 2 * pad) / ih);
  const w = iw * s, h = ih * s;
  return { x: (W - w) / 2, y: (H - h) / 2, w, h };
}

const SHADE = "rgba(8,10,18,0.58)";
const INV_PAD = 2;
/** The mask's inverse as shade (alpha 0.58·(1 − m)), padded with full shade (cached). */
function inverseMask(mask, small) {
  const key = small ? "_invSmall" : "_invBig";
  if (mask[key]) return mask[key];
  const src = small ? mask.small : mask.canvas;
  const c = document.createElement("canvas");
  c.width = src.width + 2 * INV_PAD;
  c.height = src.height + 2 * INV_PAD;
  const g = c.getContext("2d");
  g.fillStyle = SHADE;
  g.fillRect(0, 0, c.width, c.height);
  g.globalCompositeOperation = "destination-out";
  g.drawImage(src, INV_PAD, INV_PAD);
  mask[key] = { canvas: c, srcW: src.width, srcH: src.height };
  return mask[key];
}

function drawResult(canvas, img, m, ctx, mode, heat, { cssSize = null, outline = true } = {}) {
  const W0 = cssSize ? cssSize[0] : canvas.clientWidth || 140;
  const H0 = cssSize ? cssSize[1] : canvas.clientHeight || W0;
  const W = Math.max(1, Math.round(W0 * dpr())), H = Math.max(1, Math.round(H0 * dpr()));
  if (canvas.width !== W) canvas.width = W;
  if (canvas.height !== H) canvas.height = H;
  const g = canvas.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, W, H);
  const R0 = fitRect(m.image_size[0], m.image_size[1], W, H);
  const x = Math.round(R0.x), y = Math.round(R0.y);  // whole pixels: no light edge lines
  const R = { x, y, w: Math.round(R0.x + R0.w) - x, h: Math.round(R0.y + R0.h) - y };
  if (img) {
    g.imageSmoothingQuality = R.w < img.naturalWidth * 0.6 ? "high" : "low";
    g.drawImage(img, R.x, R.y, R.w, R.h);
  }
  if (mode === "none" || !ctx) return R;
  const kx = R.w / m.image_size[0], ky = R.h / m.image_size[1];
  const crop = m.geometry.crop;
  if (mode === "heat" && heat) {
    // heat per grid cell: the best score of any window (position of the query's box) that
    // covers the cell, so the hot block is where the match is, at the grid's resolution
    const A = heat.length, B = heat[0].length;
    const [, , h, w] = ctx.query.cell_box;
    const [Hg, Wg] = ctx.query.grid;
    const gr = m.geometry;
    const cell = new Float32Array(Hg * Wg).fill(-Infinity);
    for (let a = 0; a < A; a++)
      for (let b = 0; b < B; b++) {
        const v = heat[a][b];
        for (let r = a; r < a + h; r++)
          for (let c = b; c < b + w; c++) if (v > cell[r * Wg + c]) cell[r * Wg + c] = v;
      }
    // colour: position within this image (its own min..max); strength: its score vs. the top
    let lo = Infinity, hi = -Infinity;
    for (const v of cell) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi - lo > 1e-6 ? hi - lo : 1;
    const strength = clamp(0.5 + 0.5 * (hi / (ctx.top || 1)), 0.5, 1);
    const off = document.createElement("canvas");
    off.width = Wg;
    off.height = Hg;
    const o = off.getContext("2d");
    const id = o.createImageData(Wg, Hg);
    for (let i = 0; i < cell.length; i++) {
      const t = hi > lo ? clamp((cell[i] - lo) / span, 0, 1) : 1;
      const [r, gg, bb] = cmap(0.1 + 0.9 * t);
      const j = i * 4;
      id.data[j] = r; id.data[j + 1] = gg; id.data[j + 2] = bb; id.data[j + 3] = 255 * strength * (0.1 + 0.65 * Math.pow(t, 1.4));
    }
    o.putImageData(id, 0, 0);
    g.save();
    g.fillStyle = "rgba(8,10,18,0.4)";
    g.fillRect(R.x, R.y, R.w, R.h);
    const X0 = R.x + (kx * gr.left) / gr.sx, Y0 = R.y + (ky * gr.top) / gr.sy;
    const X1 = R.x + (kx * (gr.size + gr.left)) / gr.sx, Y1 = R.y + (ky * (gr.size + gr.top)) / gr.sy;
    g.beginPath();
    g.rect(R.x + crop[0] * kx, R.y + crop[1] * ky, (crop[2] - crop[0]) * kx, (crop[3] - crop[1]) * ky);
    g.clip();
    g.imageSmoothingEnabled = true;
    g.imageSmoothingQuality = "medium";
    g.drawImage(off, X0, Y0, X1 - X0, Y1 - Y0);
    g.restore();
  } else if (ctx.mask) {
    // shade the image except where the query's mask lands: R minus the mask's rectangle is
    // filled directly, the rectangle gets the mask's (pre-rendered, padded) inverse
    const { t, clip } = carryTransform(ctx, m, R);
    const useSmall = ctx.mask.small && Math.abs(t[0]) * ctx.mask.width < 2 * ctx.mask.small.width;
    const inv = inverseMask(ctx.mask, useSmall);
    const fx = ctx.mask.width / inv.srcW, fy = ctx.mask.height / inv.srcH;
    const a = t[0] * fx, d = t[3] * fy;
    // pixel-aligned, so the fill's hole and the clip share their edges exactly (no seams)
    const hx0 = Math.round(Math.max(t[4], clip[0])), hy0 = Math.round(Math.max(t[5], clip[1]));
    const hx1 = Math.round(Math.min(t[4] + t[0] * ctx.mask.width, clip[2])), hy1 = Math.round(Math.min(t[5] + t[3] * ctx.mask.height, clip[3]));
    g.fillStyle = SHADE;
    g.beginPath();
    g.rect(R.x, R.y, R.w, R.h);
    if (hx1 > hx0 && hy1 > hy0) {
      g.rect(hx0, hy0, hx1 - hx0, hy1 - hy0);
      g.fill("evenodd");
      g.save();
      g.beginPath();
      g.rect(hx0, hy0, hx1 - hx0, hy1 - hy0);
      g.clip();
      g.setTransform(a, 0, 0, d, t[4] - a * INV_PAD, t[5] - d * INV_PAD);
      g.imageSmoothingEnabled = true;
      g.drawImage(inv.canvas, 0, 0);
      g.restore();
    } else g.fill();
  }
  if (outline && m.box) {
    const [x0, y0, x1, y1] = m.box;
    const lw = Math.max(1, 1.25 * dpr());
    g.lineWidth = lw * 2.2;
    g.strokeStyle = "rgba(0,0,0,0.45)";
    g.strokeRect(R.x + x0 * kx, R.y + y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky);
    g.lineWidth = lw;
    g.strokeStyle = mode === "heat" ? "#ffffff" : "#ffb020";
    g.strokeRect(R.x + x0 * kx, R.y + y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky);
  }
  return R;
}

// -- caches / choices ------------------------------------------------------------------------
async function loadCaches() {
  const r = await api("/api/caches");
  S.caches = r.caches;
  S.byName = Object.fromEntries(r.caches.map((c) => [c.name, c]));
  const opts = [];
  for (const c of r.caches)
    for (const l of c.layers)
      opts.push({ value: choiceKey({ cache: c.name, layer: l.name }), text: `${c.name} · ${l.name} — ${l.grid[0]}×${l.grid[1]}×${l.channels}` });
  const sel = $("#choice"), cmp = $("#compare");
  sel.replaceChildren(...opts.map((o) => el("option", { value: o.value, text: o.text })));
  cmp.replaceChildren(el("option", { value: "", text: "off" }), ...opts.map((o) => el("option", { value: o.value, text: o.text })));
  cmp.disabled = opts.length < 2;
  S.choice = parseChoice(opts[0].value);
}

function setChoiceUI() {
  $("#choice").value = choiceKey(S.choice);
  $("#compare").value = choiceKey(S.compare);
  for (const o of $("#compare").options) o.disabled = o.value === choiceKey(S.choice);
  fillColumnSelects();
}

function fillColumnSelects() {
  const c = cacheInfo(S.choice.cache);
  const cols = Object.keys(c.columns);
  const dsCol = $("#ds-col");
  dsCol.replaceChildren(el("option", { value: "", text: "any column" }), ...cols.map((n) => el("option", { value: n, text: n })));
  dsCol.value = cols.includes(S.ds.column) ? S.ds.column : "";
  fillValues($("#ds-val"), dsCol.value, S.ds.value, "any value");
  const rCol = $("#r-col");
  rCol.replaceChildren(el("option", { value: "", text: "all" }), ...cols.map((n) => el("option", { value: n, text: n })));
  rCol.value = S.filter && cols.includes(S.filter.column) ? S.filter.column : "";
  fillValues($("#r-val"), rCol.value, S.filter && S.filter.value, "—");
  const sp = $("#spread-col");
  sp.replaceChildren(...cols.map((n) => el("option", { value: n, text: n })));
  if (!cols.includes(S.spreadCol)) S.spreadCol = cols[0];
  sp.value = S.spreadCol;
}

function fillValues(sel, column, value, emptyText) {
  const c = cacheInfo(S.choice.cache);
  const info = column && c.columns[column];
  sel.disabled = !info;
  const opts = [el("option", { value: "", text: emptyText })];
  if (info) for (const [v, n] of info.values) opts.push(el("option", { value: v, text: `${v || "(empty)"}  ·  ${n}` }));
  sel.replaceChildren(...opts);
  sel.value = info && value != null && info.values.some(([v]) => v === value) ? value : "";
}

// -- dataset browser ---------------------------------------------------------------------------
let dsObserver;
async function reloadDataset() {
  const grid = $("#ds-grid");
  grid.replaceChildren();
  grid.scrollTop = 0;
  S.ds.offset = 0;
  S.ds.done = false;
  S.ds.token = (S.ds.token || 0) + 1;
  await loadDatasetPage();
}

function dsParams() {
  const p = new URLSearchParams();
  if (S.ds.q) p.set("q", S.ds.q);
  if (S.ds.column && S.ds.value !== "") {
    p.set("column", S.ds.column);
    p.set("value", S.ds.value);
  }
  return p;
}

async function loadDatasetPage() {
  if (S.ds.loading || S.ds.done) return;
  S.ds.loading = true;
  const token = S.ds.token;
  const cache = S.choice.cache;
  try {
    const p = dsParams();
    p.set("offset", S.ds.offset);
    p.set("limit", 120);
    const r = await api(`/api/caches/${enc(cache)}/images?${p}`);
    if (token !== S.ds.token) return;
    const grid = $("#ds-grid");
    $(".more-sentinel", grid)?.remove();
    const qid = S.query && S.query.kind === "dataset" && S.query.cache === cache ? S.query.id : null;
    for (const it of r.items) {
      const t = el("div", { class: "thumb" + (it.id === qid ? " current" : ""), "data-id": it.id, title: `${it.label} · ${it.path}  (#${it.id}, ${it.size[0]}×${it.size[1]})` },
        el("img", { src: thumbURL(cache, it.id), loading: "lazy", alt: it.label }),
        el("span", { class: "tl", text: it.label || basename(it.path) }));
      t.addEventListener("click", () => setQuery({ kind: "dataset", cache, id: it.id }).catch(reportError));
      grid.append(t);
    }
    S.ds.offset += r.items.length;
    S.ds.total = r.total;
    S.ds.done = S.ds.offset >= r.total;
    $("#ds-count").textContent = `${r.total.toLocaleString()} image${r.total === 1 ? "" : "s"}`;
    if (!S.ds.done) {
      const sent = el("div", { class: "more-sentinel" });
      grid.append(sent);
      dsObserver.observe(sent);
    }
  } catch (e) {
    reportError(e);
  } finally {
    S.ds.loading = false;
  }
}

function markCurrentThumb() {
  const qid = S.query && S.query.kind === "dataset" && S.query.cache === S.choice.cache ? S.query.id : null;
  for (const t of $$("#ds-grid .thumb")) t.classList.toggle("current", +t.dataset.id === qid);
}

// -- the query -----------------------------------------------------------------------------------
let brush;
const stage = () => $("#stage");

function layoutStage() {
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
  const g = geometry(cacheInfo(S.choice.cache).transform, ...S.query.size);
  brush.setGrid({ rows: li.grid[0], cols: li.grid[1], crop: g.crop });
  S.query.geometry = g;
  renderQueryMeta();
}

function renderQueryMeta(extra = null) {
  const q = S.query;
  const box = $("#q-meta");
  if (!q) return box.replaceChildren();
  const li = layerInfo(S.choice);
  const parts = [];
  if (q.kind === "dataset") parts.push(el("b", { text: `#${q.id}` }));
  else parts.push(el("span", {}, "upload ", el("b", { text: q.name || q.upload })));
  if (q.label) parts.push(el("b", { text: q.label }));
  parts.push(el("span", { class: "pill", title: "image size (pixels)", text: `${q.size[0]}×${q.size[1]}` }));
  parts.push(el("span", { class: "pill", title: "feature grid of this layer: rows × cols × channels, over the centre crop", text: `${li.grid[0]}×${li.grid[1]}×${li.channels}` }));
  const qi = extra || (S.panes[0] && S.panes[0].ctx && S.panes[0].ctx.query);
  if (qi && qi.n_cells) parts.push(el("span", { class: "pill hot", title: "cells the mask covers (in a box of rows × cols on the grid)", text: `${qi.n_cells} cells in ${qi.cell_box[2]}×${qi.cell_box[3]}` }));
  for (const [k, v] of Object.entries(q.meta || {})) parts.push(el("span", {}, `${k} `, el("b", { text: v })));
  box.replaceChildren(...parts);
  $("#q-info").textContent = q.kind === "dataset" ? q.path : q.name || "";
  $("#q-info").title = $("#q-info").textContent;
}

/** Set the query image. opts.mask: {data,width,height} | opts.box | opts.whole; opts.search */
async function setQuery(q, opts = {}) {
  let info = q;
  if (q.kind === "dataset") {
    const r = await api(`/api/caches/${enc(q.cache)}/images/${q.id}`);
    if (!r.valid) throw new Error(`image #${q.id} was not indexed; it cannot be a query`);
    info = { kind: "dataset", cache: q.cache, id: r.id, path: r.path, label: r.label, size: r.size, meta: r.meta };
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

function updateWholeBtn() {
  $("#whole").classList.toggle("on", S.whole);
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
    await setQuery({ kind: "upload", upload: r.upload, name: r.name, size: r.size, label: "" });
    status(`uploaded ${r.name} (${r.size[0]}×${r.size[1]})`);
  } catch (e) {
    status("");
    reportError(e);
  }
}

// -- search --------------------------------------------------------------------------------------
let inflight = null;

function maskSnapshot() {
  const m = brush.getMask();
  const canvas = brush.toCanvas();
  // a small copy for drawing on result thumbnails (drawing the full mask 24× is slow)
  const s = Math.min(1, 128 / Math.max(m.width, m.height));
  const small = document.createElement("canvas");
  small.width = Math.max(1, Math.round(m.width * s));
  small.height = Math.max(1, Math.round(m.height * s));
  const g = small.getContext("2d");
  g.imageSmoothingQuality = "high";
  g.drawImage(canvas, 0, 0, small.width, small.height);
  return { width: m.width, height: m.height, data: m.data, canvas, small };
}

function imageRef(q) {
  return q.kind === "dataset" ? { id: q.id, cache: q.cache } : { upload: q.upload };
}

async function runSearch(opts = {}) {
  S.running = (S.running || 0) + 1;
  try {
    await doSearch(opts);
  } finally {
    S.running--;
    if (!S.running) document.body.dataset.state = "idle";
  }
}

async function doSearch({ t0 = performance.now() } = {}) {
  const q = S.query;
  if (!q) return;
  if (!S.whole && brush.isEmpty()) {
    clearResults("The mask is empty: brush a region of the query image.");
    return;
  }
  const seq = ++S.seq;
  if (inflight) inflight.abort();
  inflight = new AbortController();
  const signal = inflight.signal;
  document.body.dataset.state = "searching";
  status("searching…", true);
  const mask = maskSnapshot();
  const region = S.whole ? { whole: true } : { mask: { png: mask.canvas.toDataURL("image/png").split(",")[1] } };
  const tEnc = performance.now();
  const choices = [S.choice, ...(S.compare ? [S.compare] : [])];
  const body = (c) => ({ cache: c.cache, layer: c.layer, image: imageRef(q), k: S.k, exclude_self: S.excludeSelf, filter: S.filter || undefined, thumbs: true, ...region });
  const settled = await Promise.allSettled(choices.map((c) => api("/api/search", { json: body(c), signal })));
  if (seq !== S.seq) return;
  const tServer = performance.now();
  const anyOk = settled.some((r) => r.status === "fulfilled");
  const entry = anyOk ? addHistory(q, mask, choices) : { ctxs: [], color: "#999", label: "" };
  S.panes = settled.map((r, i) => {
    if (r.status === "rejected") return { choice: choices[i], error: r.reason };
    const resp = r.value;
    primeThumbs(choices[i].cache, resp.thumbs);
    const ctx = { sid: resp.search_id, choice: choices[i], query: resp.query, mask, top: resp.matches[0] ? resp.matches[0].score : 1, curve: resp.curve, color: entry.color, dashed: i > 0, label: `${entry.label} · ${shortChoice(choices[i])}` };
    entry.ctxs[i] = ctx;
    return { choice: choices[i], ctx, matches: resp.matches, total: resp.total, timing: resp.timing, stats: resp.stats, heat: {} };
  });
  if (settled[0].status === "rejected") reportError(settled[0].reason);
  else if (!$("#toast").hidden && !$("#toast").classList.contains("info")) $("#toast").hidden = true;
  S.win = null;
  S.activeCurve = S.panes[0].ctx ? S.panes[0].ctx.sid : null;
  renderQueryMeta();
  const tHist = performance.now();
  S.prof = { draw: 0 };
  await renderPanes();
  if (seq !== S.seq) return;
  const tCards = performance.now();
  drawDist();
  renderStrip(null);
  const t1 = performance.now();
  // history and the URL are not part of the results: update them after the frame
  setTimeout(() => {
    renderHistory();
    writeHash();
  }, 0);
  const p0 = S.panes[0];
  S.lastTiming = { total: t1 - t0, server: tServer - t0, draw: t1 - tServer, serverSearch: p0.timing ? p0.timing.search_ms : null,
    serverTotal: p0.timing ? p0.timing.total_ms : null, encode: tEnc - t0, fetch: tServer - tEnc, prep: tHist - tServer, cards: tCards - tHist, rest: t1 - tCards, cardDraw: S.prof.draw };
  window.vfs.timings.push(S.lastTiming);
  status(p0.error ? "search failed" : `${S.lastTiming.total.toFixed(0)} ms`);
  $("#status").title = p0.error ? "" : `search ${p0.timing.search_ms.toFixed(0)} ms on the server (${p0.timing.total_ms.toFixed(0)} ms with the query and response), ${S.lastTiming.total.toFixed(0)} ms from the end of the stroke until the results were drawn`;
  document.body.dataset.searches = String(window.vfs.timings.length);
  window.dispatchEvent(new CustomEvent("vfs:results", { detail: S.lastTiming }));
}

function clearResults(message) {
  S.seq++;
  if (inflight) inflight.abort();
  S.panes = [];
  $("#panes").replaceChildren(el("div", { class: "pane" }, el("div", { class: "pane-empty", html: null, text: message })));
  $("#r-info").textContent = "";
  status("");
  document.body.dataset.state = "idle";
  drawDist();
}

// -- result panes ------------------------------------------------------------------------------
async function renderPanes() {
  const wrap = $("#panes");
  const nodes = [];
  const draws = [];
  S.panes.forEach((p, pi) => {
    const pane = el("div", { class: "pane", "data-pane": pi, "data-search-id": p.ctx ? p.ctx.sid : "" });
    const head = el("div", { class: "pane-head" }, el("span", { class: "sw" + (pi > 0 ? " dashed" : ""), style: `background:${p.ctx ? p.ctx.color : "#ccc"};color:${p.ctx ? p.ctx.color : "#ccc"}` }), el("b", { text: choiceLabel(p.choice) }));
    pane.append(head);
    if (p.error) {
      pane.append(el("div", { class: "pane-error", text: p.error.message || String(p.error) }));
      nodes.push(pane);
      return;
    }
    const li = layerInfo(p.choice);
    head.append(el("span", { class: "muted", title: "shown / ranked images · feature grid · server search time", text: `top ${p.matches.length} of ${p.total.toLocaleString()}${S.filter ? ` with ${S.filter.column} = ${S.filter.value}` : ""} · ${li.grid[0]}×${li.grid[1]} · ${p.timing.search_ms.toFixed(0)} ms` }));
    pane.append(renderSpread(p));
    const grid = el("div", { class: "grid" });
    pane.append(grid);
    p.grid = grid;
    draws.push(appendCards(p, pi, p.matches));
    if (p.matches.length < p.total) {
      pane.append(el("div", { class: "more-row" }, el("button", { class: "btn more", text: `More results (${(p.total - p.matches.length).toLocaleString()} more)`, onclick: () => moreResults(pi).catch(reportError) })));
    } else if (!p.matches.length) {
      grid.replaceWith(el("div", { class: "pane-empty", text: S.filter ? "No results with this filter." : "No results." }));
    }
    nodes.push(pane);
  });
  wrap.replaceChildren(...nodes);
  const p0 = S.panes[0];
  $("#r-info").textContent = "";
  await Promise.all(draws);
  updateOverlap().catch(reportError);
  if (S.overlay === "heat") await loadHeat();
}

function appendCards(p, pi, matches) {
  const top = p.ctx.top || 1;
  const jobs = [];
  for (const m of matches) {
    const cv = el("canvas");
    const card = el("figure", { class: "card", "data-id": m.id, "data-rank": m.rank, "data-score": m.score, "data-box": JSON.stringify(m.box), title: `${m.path}\nscore ${fmt(m.score, 4)} · rank ${m.rank + 1}` },
      cv,
      el("figcaption", {},
        el("span", { class: "rank", text: `#${m.rank + 1}` }),
        el("span", { class: "label", text: m.label || "—" }),
        el("span", { class: "score", text: fmt(m.score, 3) }),
        el("span", { class: "path", text: basename(m.path) }),
        el("span", { class: "sbar" }, el("i", { style: `width:${clamp((m.score / top) * 100, 0, 100).toFixed(1)}%` }))));
    card.addEventListener("click", () => openModal(pi, m.rank));
    p.grid.append(card);
    m._canvas = cv;
    jobs.push(loadImage(thumbURL(p.choice.cache, m.id)).then((img) => {
      m._img = img;
      const t = performance.now();
      drawCard(p, m);
      if (S.prof) S.prof.draw += performance.now() - t;
    }).catch(() => drawCard(p, m)));
  }
  return Promise.all(jobs);
}

function drawCard(p, m) {
  if (!m._canvas || !m._canvas.isConnected) return;
  const heat = p.heat ? p.heat[m.id] : null;
  drawResult(m._canvas, m._img, m, p.ctx, S.overlay, heat);
  m._canvas.parentElement.dataset.drawn = S.overlay;
}

function redrawCards() {
  for (const p of S.panes) if (p.matches) for (const m of p.matches) drawCard(p, m);
}

async function moreResults(pi) {
  const p = S.panes[pi];
  if (!p || !p.ctx) return;
  const start = p.matches.length;
  const params = new URLSearchParams({ start, stop: start + S.k, limit: S.k });
  if (S.filter) {
    params.set("column", S.filter.column);
    params.set("value", S.filter.value);
  }
  params.set("thumbs", "1");
  const r = await api(`/api/searches/${p.ctx.sid}/window?${params}`);
  primeThumbs(p.choice.cache, r.thumbs);
  p.matches.push(...r.items);
  const btn = $(`[data-pane="${pi}"] .more`);
  if (btn) {
    if (p.matches.length >= p.total) btn.parentElement.remove();
    else btn.textContent = `More results (${(p.total - p.matches.length).toLocaleString()} more)`;
  }
  const pane = $(`[data-pane="${pi}"]`);
  pane.replaceChild(renderSpread(p), $(".spread-wrap", pane));
  await appendCards(p, pi, r.items);
  if (S.overlay === "heat") await loadHeat();

}

async function loadHeat() {
  await Promise.all(S.panes.map(async (p) => {
    if (!p.ctx || !p.matches.length) return;
    const need = p.matches.map((m) => m.id).filter((id) => !(id in p.heat));
    for (let i = 0; i < need.length; i += 100) {
      const r = await api(`/api/searches/${p.ctx.sid}/heat?ids=${need.slice(i, i + 100).join(",")}`);
      Object.assign(p.heat, r.maps);
    }
  })).catch(reportError);
  redrawCards();
}

// spread of the shown results over a column, against the dataset's base rate
function renderSpread(p) {
  const col = S.spreadCol;
  const wrap = el("div", { class: "spread-wrap" });
  const c = cacheInfo(p.choice.cache);
  const info = c.columns[col];
  if (!info || !p.matches.length) return wrap;
  const counts = new Map();
  for (const m of p.matches) {
    const v = col === "label" ? m.label : (m.meta || {})[col] ?? "";
    counts.set(v, (counts.get(v) || 0) + 1);
  }
  const base = new Map(info.values);
  const totalBase = info.values.reduce((a, [, n]) => a + n, 0) || 1;
  const rows = [...counts.entries()].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
  const shown = rows.slice(0, 8);
  const maxN = Math.max(...shown.map((r) => r[1]), 1);
  const k = p.matches.length;
  const grid = el("div", { class: "spread", title: "results per value; the tick marks how many a random sample of the same size would have" });
  for (const [v, n] of shown) {
    const expected = base.has(v) ? (base.get(v) / totalBase) * k : null;
    const scale = Math.max(maxN, expected || 0);
    const on = S.filter && S.filter.column === col && S.filter.value === v;
    const toggle = () => setFilter(on ? null : { column: col, value: v });
    grid.append(
      el("span", { class: "lab" + (on ? " on" : ""), text: v || "(empty)", title: `${col} = ${v}: click to show only these`, onclick: toggle }),
      el("span", { class: "bar", onclick: toggle }, el("i", { style: `width:${((n / scale) * 100).toFixed(1)}%` }), expected != null ? el("u", { style: `left:${((expected / scale) * 100).toFixed(1)}%` }) : null),
      el("span", { class: "n", text: `${n}${expected != null ? ` / ${expected < 10 ? expected.toFixed(1) : Math.round(expected)}` : ""}` }),
    );
  }
  if (rows.length > shown.length) grid.append(el("span", { class: "more-values", text: `+ ${rows.length - shown.length} more values` }));
  wrap.append(el("div", { class: "spread-title", text: `${col} of the top ${k} (vs. expected by chance)` }), grid);
  return wrap;
}

function setFilter(f) {
  S.filter = f && f.column ? f : null;
  fillColumnSelects();
  if (S.query) runSearch().catch(reportError);
}

// -- distribution curve -----------------------------------------------------------------------
function curveSeries() {
  const out = [];
  const seen = new Set();
  for (const p of S.panes) if (p.ctx) { out.push(p.ctx); seen.add(p.ctx.sid); }
  for (const h of S.history) if (h.shown) for (const c of h.ctxs) if (c && !seen.has(c.sid)) { out.push(c); seen.add(c.sid); }
  return out;
}

const DIST = { padL: 38, padR: 8, padT: 8, padB: 20 };
function distScales(series, W, H) {
  let n = 1, lo = 0, hi = 0.1;
  for (const s of series) {
    n = Math.max(n, s.curve.n);
    for (const v of s.curve.scores) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  hi = Math.ceil(hi * 10) / 10;
  lo = Math.floor(lo * 10) / 10;
  const logx = $("#logx").checked;
  const x0 = DIST.padL * dpr(), x1 = W - DIST.padR * dpr();
  const y0 = DIST.padT * dpr(), y1 = H - DIST.padB * dpr();
  const fx = logx ? (r) => x0 + (x1 - x0) * (Math.log1p(r) / Math.log1p(Math.max(1, n - 1))) : (r) => x0 + (x1 - x0) * (r / Math.max(1, n - 1));
  const inv = logx ? (X) => Math.expm1(((X - x0) / (x1 - x0)) * Math.log1p(Math.max(1, n - 1))) : (X) => ((X - x0) / (x1 - x0)) * Math.max(1, n - 1);
  const fy = (v) => y1 - (y1 - y0) * ((v - lo) / (hi - lo || 1));
  return { n, lo, hi, fx, fy, inv, x0, x1, y0, y1 };
}

function drawDist() {
  const cv = $("#dist-canvas");
  const W = Math.round(cv.clientWidth * dpr()), H = Math.round(cv.clientHeight * dpr());
  if (cv.width !== W) cv.width = W;
  if (cv.height !== H) cv.height = H;
  const g = cv.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, W, H);
  const series = curveSeries();
  const legend = $("#legend");
  const D = dpr();
  if (!series.length) {
    g.fillStyle = "#9aa1ad";
    g.font = `${12 * D}px system-ui, sans-serif`;
    g.textAlign = "center";
    g.fillText("every image's score, best first, appears here after a search", W / 2, H / 2);
    legend.replaceChildren();
    return;
  }
  const sc = distScales(series, W, H);
  cv._scales = sc;
  // axes + grid
  g.font = `${10 * D}px ui-monospace, monospace`;
  g.fillStyle = "#7a8190";
  g.strokeStyle = "#eceef2";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  const steps = Math.max(1, Math.round((sc.hi - sc.lo) / 0.1));
  const every = steps > 6 ? Math.ceil(steps / 5) : 1;
  for (let i = 0; i <= steps; i += every) {
    const v = sc.lo + i * 0.1;
    const y = Math.round(sc.fy(v)) + 0.5;
    g.beginPath();
    g.moveTo(sc.x0, y);
    g.lineTo(sc.x1, y);
    g.stroke();
    g.fillText(v.toFixed(1), sc.x0 - 5 * D, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const ticks = $("#logx").checked ? [0, 9, 99, 999, 9999, 99999].filter((r) => r < sc.n) : [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * (sc.n - 1)));
  for (const r of ticks) g.fillText(String(r + 1), clamp(sc.fx(r), sc.x0 + 8 * D, sc.x1 - 10 * D), sc.y1 + 5 * D);
  // window band
  const act = series.find((s) => s.sid === S.activeCurve) || series[0];
  if (S.win) {
    const a = sc.fx(S.win.start), b = sc.fx(Math.max(S.win.start, S.win.stop - 1));
    g.fillStyle = "rgba(47,91,234,0.12)";
    g.fillRect(a - 1, sc.y0, Math.max(2, b - a + 2), sc.y1 - sc.y0);
    g.strokeStyle = "rgba(47,91,234,0.6)";
    g.strokeRect(a - 1 + 0.5, sc.y0 + 0.5, Math.max(2, b - a + 2), sc.y1 - sc.y0);
  }
  // curves (active last, thicker)
  const ordered = series.filter((s) => s !== act).concat(act ? [act] : []);
  for (const s of ordered) {
    g.beginPath();
    const { ranks, scores } = s.curve;
    for (let i = 0; i < ranks.length; i++) {
      const X = sc.fx(ranks[i]), Y = sc.fy(scores[i]);
      if (i === 0) g.moveTo(X, Y);
      else g.lineTo(X, Y);
    }
    if (ranks.length === 1) g.lineTo(sc.fx(ranks[0]) + 3 * D, sc.fy(scores[0]));
    g.strokeStyle = s.color;
    g.globalAlpha = s === act ? 1 : 0.55;
    g.lineWidth = (s === act ? 2 : 1.3) * D;
    g.setLineDash(s.dashed ? [5 * D, 3 * D] : []);
    g.stroke();
  }
  g.globalAlpha = 1;
  g.setLineDash([]);
  // shown results marker on the active curve
  legend.replaceChildren(...series.map((s) => el("span", { class: "item" + (s === act ? " active" : ""), title: `${s.label}: ${s.curve.n.toLocaleString()} images; click to browse its ranks`, onclick: () => { S.activeCurve = s.sid; S.win = null; drawDist(); renderStrip(null); } },
    el("span", { class: "sw" + (s.dashed ? " dashed" : ""), style: `background:${s.color};color:${s.color}` }), s.label)));
}

function setupDistInteraction() {
  const cv = $("#dist-canvas");
  let drag = null;
  const rankAt = (ev) => {
    const sc = cv._scales;
    const r = cv.getBoundingClientRect();
    const X = (ev.clientX - r.left) * dpr();
    return clamp(Math.round(sc.inv(clamp(X, sc.x0, sc.x1))), 0, sc.n - 1);
  };
  cv.addEventListener("pointerdown", (ev) => {
    if (!cv._scales || !curveSeries().length) return;
    cv.setPointerCapture(ev.pointerId);
    const r = rankAt(ev);
    drag = { a: r, b: r, x: ev.clientX };
    S.win = { start: r, stop: r + 1 };
    drawDist();
  });
  cv.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    drag.b = rankAt(ev);
    S.win = { start: Math.min(drag.a, drag.b), stop: Math.max(drag.a, drag.b) + 1 };
    drawDist();
  });
  const end = (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const sc = cv._scales;
    if (Math.abs(ev.clientX - d.x) < 3) {
      // a click: 24 ranks centred there
      const c = d.a;
      const s = clamp(c - 12, 0, Math.max(0, sc.n - 24));
      S.win = { start: s, stop: Math.min(sc.n, s + 24) };
    }
    drawDist();
    renderStrip(S.win).catch(reportError);
  };
  cv.addEventListener("pointerup", end);
  cv.addEventListener("pointercancel", end);
}

async function renderStrip(win) {
  const strip = $("#strip"), head = $("#strip-head");
  const series = curveSeries();
  const ctx = series.find((s) => s.sid === S.activeCurve) || series[0];
  mapWindow(win && ctx ? ctx : null, win).catch(reportError);
  if (!win || !ctx) {
    strip.replaceChildren();
    head.textContent = ctx ? "" : "";
    strip.dataset.start = "";
    return;
  }
  const token = (renderStrip.token = (renderStrip.token || 0) + 1);
  const width = win.stop - win.start;
  head.textContent = `ranks ${win.start + 1}–${win.stop} of ${ctx.label}${width > 40 ? ` (40 evenly spaced of ${width.toLocaleString()})` : ""} · loading…`;
  const r = await api(`/api/searches/${ctx.sid}/window?start=${win.start}&stop=${win.stop}&limit=40&thumbs=1`);
  if (token !== renderStrip.token) return;
  primeThumbs(ctx.choice.cache, r.thumbs);
  head.textContent = `ranks ${win.start + 1}–${win.stop} of ${ctx.label}${width > 40 ? ` (40 evenly spaced of ${width.toLocaleString()})` : ""}`;
  strip.dataset.start = String(win.start);
  strip.dataset.stop = String(win.stop);
  const kids = r.items.map((m) => {
    const cv = el("canvas");
    const d = el("div", { class: "mini", "data-id": m.id, "data-rank": m.rank, title: `${m.path}\nrank ${m.rank + 1} · score ${fmt(m.score, 4)}`, onclick: () => openLoose(ctx, r.items, r.items.indexOf(m)) },
      cv, el("div", { text: `${m.rank + 1} · ${fmt(m.score, 2)}` }));
    loadImage(thumbURL(ctx.choice.cache, m.id)).then((img) => drawResult(cv, img, m, ctx, "region", null, { cssSize: [72, 72] })).catch(() => {});
    return d;
  });
  strip.replaceChildren(...kids);
}

// -- history -------------------------------------------------------------------------------------
function historyKey(q, mask, choices) {
  const m = S.whole ? "whole" : encodeMask(mask.data, mask.width, mask.height, 48);
  return [q.kind, q.cache || "", q.id ?? q.upload, m, choices.map(choiceKey).join("|"), S.k, S.filter ? `${S.filter.column}=${S.filter.value}` : ""].join("/");
}

function addHistory(q, mask, choices) {
  const key = historyKey(q, mask, choices);
  let h = S.history.find((x) => x.key === key);
  if (h) {
    S.history.splice(S.history.indexOf(h), 1);
  } else {
    const color = PALETTE[S.colorIx++ % PALETTE.length];
    const name = q.kind === "dataset" ? `#${q.id} ${basename(q.path).replace(/\.[^.]+$/, "")}` : q.name || "upload";
    S.qn = (S.qn || 0) + 1;
    h = { key, color, q: { ...q }, mask, whole: S.whole, choices, ctxs: [], shown: true, pinned: false, label: `Q${S.qn} ${name}`, thumb: null };
    h.thumb = historyThumb(mask);
  }
  h.ctxs = [];
  S.history.unshift(h);
  // at most 4 curves shown automatically; pinned ones stay
  let auto = 0;
  for (const x of S.history) if (x.shown && !x.pinned && ++auto > 4) x.shown = false;
  if (S.history.length > 30) S.history.length = 30;
  return h;
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

function renderHistory() {
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
    return el("div", { class: "hist" + (h === cur ? " current" : ""), title: `${h.label}\n${h.choices.map(choiceLabel).join(" vs ")}`, onclick: () => restoreHistory(h).catch(reportError) },
      el("img", { src: h.thumb, alt: "" }), dot, el("div", { text: `${h.label.split(" ")[0]} ${h.choices.length > 1 ? "⇄" : ""}` }));
  }));
}

async function restoreHistory(h) {
  S.choice = h.choices[0];
  S.compare = h.choices[1] || null;
  setChoiceUI();
  reloadDatasetIfNeeded();
  await setQuery(h.q, h.whole ? { whole: true } : { mask: h.mask });
}

function reloadDatasetIfNeeded() {
  const grid = $("#ds-grid");
  if (grid.dataset.cache !== S.choice.cache) {
    grid.dataset.cache = S.choice.cache;
    reloadDataset();
  }
}

// -- modal (large view) ------------------------------------------------------------------------
const MODAL = { items: null, ix: 0, ctx: null, pane: null };

function openModal(pi, rank) {
  const p = S.panes[pi];
  const ix = p.matches.findIndex((m) => m.rank === rank);
  openLoose(p.ctx, p.matches, ix, p);
}

function openLoose(ctx, items, ix, pane = null) {
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
  const rows = [["rank", `${m.rank + 1}`], ["score", fmt(m.score, 5)], ["id", m.id], ["path", m.path], ["label", m.label], ...Object.entries(m.meta || {}),
    ["size", `${m.image_size[0]}×${m.image_size[1]}`], ["cell offset", `row ${m.offset[0]}, col ${m.offset[1]}`], ["match box", m.box.map((v) => v.toFixed(0)).join(", ")], ["features", choiceLabel(ctx.choice)]];
  $("#modal-meta").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: String(v) }))));
  $("#modal-prev").disabled = ix <= 0;
  $("#modal-next").disabled = ix >= items.length - 1;
}

function closeModal() {
  $("#modal").hidden = true;
}

async function modalCarry() {
  const { items, ix, ctx } = MODAL;
  const m = items[ix];
  closeModal();
  S.choice = ctx.choice;
  setChoiceUI();
  reloadDatasetIfNeeded();
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

// -- URL state ------------------------------------------------------------------------------------
function writeHash() {
  const q = S.query;
  if (!q) return;
  const p = new URLSearchParams();
  p.set("c", S.choice.cache);
  p.set("l", S.choice.layer);
  if (q.kind === "dataset") {
    if (q.cache !== S.choice.cache) p.set("qc", q.cache);
    p.set("i", q.id);
  } else p.set("u", q.upload);
  if (S.whole) p.set("w", "1");
  else if (S.box) p.set("b", S.box.map((v) => v.toFixed(1)).join(","));
  else {
    const m = brush.getMask();
    p.set("m", encodeMask(m.data, m.width, m.height, 64));
  }
  if (S.k !== 24) p.set("k", S.k);
  if (S.compare) p.set("cmp", choiceKey(S.compare));
  if (S.overlay !== "region") p.set("ov", S.overlay);
  if (S.filter) p.set("f", `${S.filter.column}=${S.filter.value}`);
  if (!S.excludeSelf) p.set("self", "1");
  const hash = "#" + p.toString();
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

async function readHash() {
  const h = location.hash.slice(1);
  if (!h) return false;
  const p = new URLSearchParams(h);
  const c = p.get("c"), l = p.get("l");
  if (c && S.byName[c]) {
    const layer = S.byName[c].layers.some((x) => x.name === l) ? l : S.byName[c].default_layer;
    S.choice = { cache: c, layer };
  }
  const cmp = parseChoice(p.get("cmp"));
  S.compare = cmp && S.byName[cmp.cache] && choiceKey(cmp) !== choiceKey(S.choice) ? cmp : null;
  if (p.get("k")) S.k = clamp(parseInt(p.get("k"), 10) || 24, 1, 500);
  if (p.get("ov")) S.overlay = ["region", "heat", "none"].includes(p.get("ov")) ? p.get("ov") : "region";
  if (p.get("f")) {
    const [column, ...rest] = p.get("f").split("=");
    S.filter = { column, value: rest.join("=") };
  }
  if (p.get("self")) S.excludeSelf = false;
  syncControls();
  setChoiceUI();
  let q = null;
  if (p.get("i") != null) q = { kind: "dataset", cache: p.get("qc") || S.choice.cache, id: parseInt(p.get("i"), 10) };
  else if (p.get("u")) q = { kind: "upload", upload: p.get("u") };
  if (!q) return false;
  if (q.kind === "upload") {
    const r = await api(`/api/uploads/${enc(q.upload)}`);
    Object.assign(q, { size: r.size, name: r.name });
  }
  let opts = {};
  if (p.get("w")) opts = { whole: true };
  else if (p.get("b")) opts = { box: p.get("b").split(",").map(Number) };
  else if (p.get("m")) opts = { mask: decodeMask(p.get("m")) };
  await setQuery(q, opts);
  return true;
}

function syncControls() {
  $("#k").value = String(S.k);
  if ($("#k").value !== String(S.k)) {
    $("#k").append(el("option", { text: String(S.k) }));
    $("#k").value = String(S.k);
  }
  $("#exclude-self").checked = S.excludeSelf;
  for (const b of $$("#overlay-mode button")) b.classList.toggle("on", b.dataset.mode === S.overlay);
}

// -- wiring -----------------------------------------------------------------------------------------
function setTool(tool) {
  brush.setTool(tool);
  for (const b of $$("#tools [data-tool]")) b.classList.toggle("on", b.dataset.tool === tool);
  stage().classList.toggle("tool-box", tool === "box");
}

function setOverlay(mode) {
  S.overlay = mode;
  for (const b of $$("#overlay-mode button")) b.classList.toggle("on", b.dataset.mode === mode);
  if (mode === "heat") loadHeat();
  else redrawCards();
  writeHash();
}

function wire() {
  brush = new Brush($("#q-canvas"), { size: 40, hardness: 0.35 });
  window.vfs.brush = brush;
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
  $("#whole").addEventListener("click", () => {
    if (!S.query) return;
    S.whole = true;
    brush.fill({ commit: false });
    updateWholeBtn();
    runSearch().catch(reportError);
  });
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

  $("#choice").addEventListener("change", (e) => changeChoice(parseChoice(e.target.value)).catch(reportError));
  $("#compare").addEventListener("change", (e) => {
    S.compare = parseChoice(e.target.value);
    if (S.query) runSearch().catch(reportError);
  });
  $("#k").addEventListener("change", (e) => {
    S.k = parseInt(e.target.value, 10);
    if (S.query) runSearch().catch(reportError);
  });
  $("#exclude-self").addEventListener("change", (e) => {
    S.excludeSelf = e.target.checked;
    if (S.query) runSearch().catch(reportError);
  });
  for (const b of $$("#overlay-mode button")) b.addEventListener("click", () => setOverlay(b.dataset.mode));
  $("#r-col").addEventListener("change", (e) => {
    fillValues($("#r-val"), e.target.value, null, "—");
    if (!e.target.value) setFilter(null);
  });
  $("#r-val").addEventListener("change", (e) => setFilter(e.target.value !== "" ? { column: $("#r-col").value, value: e.target.value } : null));
  $("#spread-col").addEventListener("change", (e) => {
    S.spreadCol = e.target.value;
    $$(".pane").forEach((pane, i) => {
      const p = S.panes[i];
      const old = $(".spread-wrap", pane);
      if (p && p.ctx && old) old.replaceWith(renderSpread(p));
    });
  });

  // dataset browser
  dsObserver = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadDatasetPage();
  }, { root: $("#ds-grid"), rootMargin: "300px" });
  $("#ds-q").addEventListener("input", debounce((e) => {
    S.ds.q = e.target.value.trim();
    reloadDataset();
  }, 200));
  $("#ds-col").addEventListener("change", (e) => {
    S.ds.column = e.target.value;
    S.ds.value = "";
    fillValues($("#ds-val"), S.ds.column, "", "any value");
    reloadDataset();
  });
  $("#ds-val").addEventListener("change", (e) => {
    S.ds.value = e.target.value;
    reloadDataset();
  });
  $("#random").addEventListener("click", () => randomQuery().catch(reportError));
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

  // header actions
  $("#share").addEventListener("click", async () => {
    writeHash();
    try {
      await navigator.clipboard.writeText(location.href);
      toast("link copied", "info");
    } catch (_) {
      toast(`copy this link: ${location.href}`, "info");
    }
  });
  const exportAs = (format) => {
    const p = S.panes[0];
    if (!p || !p.ctx) return toast("run a search first");
    const a = el("a", { href: `/api/searches/${p.ctx.sid}/export?format=${format}&k=${p.matches.length}`, download: "" });
    document.body.append(a);
    a.click();
    a.remove();
  };
  $("#export-csv").addEventListener("click", () => exportAs("csv"));
  $("#export-json").addEventListener("click", () => exportAs("json"));
  $("#help-btn").addEventListener("click", () => ($("#help").hidden = false));
  $("#help-close").addEventListener("click", () => ($("#help").hidden = true));
  $("#help").addEventListener("click", (e) => e.target.id === "help" && ($("#help").hidden = true));

  // modal
  $("#modal-close").addEventListener("click", closeModal);
  $("#modal").addEventListener("click", (e) => e.target.id === "modal" && closeModal());
  $("#modal-prev").addEventListener("click", () => { MODAL.ix = Math.max(0, MODAL.ix - 1); showModalItem(); });
  $("#modal-next").addEventListener("click", () => { MODAL.ix = Math.min(MODAL.items.length - 1, MODAL.ix + 1); showModalItem(); });
  $("#modal-carry").addEventListener("click", () => modalCarry().catch(reportError));
  $("#modal-use").addEventListener("click", () => modalUse().catch(reportError));

  $("#logx").addEventListener("change", drawDist);
  setupDistInteraction();
  window.addEventListener("resize", debounce(() => {
    layoutStage();
    drawDist();
    redrawCards();
  }, 80));
  window.addEventListener("keydown", onKey);
}

async function changeChoice(c) {
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
      await setQuery({ kind: "dataset", cache: c.cache, id: r.id }, whole ? { whole: true } : brush.isEmpty() ? {} : { mask: m });
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

async function randomQuery() {
  const p = dsParams();
  const r = await api(`/api/caches/${enc(S.choice.cache)}/random?${p}`);
  await setQuery({ kind: "dataset", cache: S.choice.cache, id: r.id });
}

function onKey(e) {
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "input" && e.target.type !== "checkbox" && e.target.type !== "range") return;
  if (tag === "select" || tag === "textarea") return;
  const modalOpen = !$("#modal").hidden;
  if (e.key === "Escape") {
    closeModal();
    $("#help").hidden = true;
    return;
  }
  if (modalOpen) {
    if (e.key === "ArrowLeft") $("#modal-prev").click();
    else if (e.key === "ArrowRight") $("#modal-next").click();
    else if (e.key === "Enter") $("#modal-carry").click();
    return;
  }
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "z") {
    e.preventDefault();
    if (e.shiftKey) brush.redo();
    else brush.undo();
    return;
  }
  if (mod && e.key.toLowerCase() === "y") {
    e.preventDefault();
    brush.redo();
    return;
  }
  if (mod || e.altKey) return;
  const k = e.key.toLowerCase();
  if (k === "b") setTool("paint");
  else if (k === "e") setTool("erase");
  else if (k === "x") setTool("box");
  else if (k === "w") $("#whole").click();
  else if (k === "i") $("#invert").click();
  else if (e.key === "Delete" || e.key === "Backspace") $("#clear").click();
  else if (k === "g") $("#grid-toggle").click();
  else if (k === "r") $("#random").click();
  else if (k === "m") $(".more")?.click();
  else if (k === "v") setOverlay({ region: "heat", heat: "none", none: "region" }[S.overlay]);
  else if (e.key === "[" || e.key === "]") {
    const s = $("#size");
    s.value = clamp(+s.value + (e.key === "]" ? 6 : -6), +s.min, +s.max);
    brush.setSize(+s.value);
  } else if (e.key === "?") $("#help").hidden = false;
  else return;
  e.preventDefault();
}

async function main() {
  wire();
  try {
    await loadCaches();
  } catch (e) {
    reportError(e);
    document.body.dataset.state = "error";
    return;
  }
  setChoiceUI();
  let restored = false;
  try {
    restored = await readHash();
  } catch (e) {
    reportError(e);
  }
  syncControls();
  reloadDatasetIfNeeded();
  if (!restored) clearResults("Pick a query image on the left (or press R), then brush a region.");
  drawDist();
  document.body.dataset.state = "idle";
  document.body.dataset.ready = "1";
}

main();

// == views: dataset map · explain · compare overlap ===============================================
const MAP = { key: "", info: null, grid: null, pages: [], scores: null, scoresSid: null, top: new Map(), queryId: null,
  view: null, loading: false, poll: null, hover: -1,
  // measured in the page (benchmarks and tests read them): load of the current map, and the
  // duration of each drawMap call (the canvas commands; rasterising happens at the next frame)
  timing: null, draws: [],
  // the curve's rank window, linked to the map: cells of the images at those ranks
  order: null, orderSid: null, win: null, winCells: null };
window.vfs.MAP = MAP;

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
async function mapWindow(ctx, win) {
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

function wireMap() {
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

// -- explain -------------------------------------------------------------------------------------
const EXPLAIN = { seq: 0 };

function drawSaliency(canvas, img, size, geom, sal, maxCss) {
  const s = Math.min(maxCss[0] / size[0], maxCss[1] / size[1]);
  const css = [Math.max(1, Math.round(size[0] * s)), Math.max(1, Math.round(size[1] * s))];
  canvas.style.width = `${css[0]}px`;
  canvas.style.height = `${css[1]}px`;
  const W = Math.round(css[0] * dpr()), H = Math.round(css[1] * dpr());
  canvas.width = W;
  canvas.height = H;
  const g = canvas.getContext("2d");
  if (img) g.drawImage(img, 0, 0, W, H);
  if (!sal || !sal.length) return;
  const h = sal.length, w = sal[0].length;
  // signed maps (exact shares): 0 stays 0, blue = lowers the score; one-signed maps (RISE has a
  // large constant offset): stretched min..max
  let top = 0, lo = Infinity, hi = -Infinity;
  for (const row of sal) for (const v of row) if (v != null) { if (Math.abs(v) > top) top = Math.abs(v); if (v < lo) lo = v; if (v > hi) hi = v; }
  const signed = lo < 0 && hi > 0;
  const base = signed ? 0 : lo;
  top = (signed ? top : hi - lo) || 1;
  const off = document.createElement("canvas");
  off.width = w;
  off.height = h;
  const o = off.getContext("2d");
  const d = o.createImageData(w, h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const v = ((sal[y][x] ?? base) - base) / top, j = 4 * (y * w + x);
      if (v >= 0) { const [r, gg, b] = cmap(0.15 + 0.85 * v); d.data[j] = r; d.data[j + 1] = gg; d.data[j + 2] = b; }
      else { d.data[j] = 40; d.data[j + 1] = 110; d.data[j + 2] = 255; }
      d.data[j + 3] = 255 * (0.05 + 0.7 * Math.pow(Math.abs(v), 0.8));
    }
  o.putImageData(d, 0, 0);
  // same geometry as the heat overlay: the map covers the model's input square, clipped to the crop
  const kx = W / size[0], ky = H / size[1], crop = geom.crop;
  const X0 = (kx * geom.left) / geom.sx, Y0 = (ky * geom.top) / geom.sy;
  const X1 = (kx * (geom.size + geom.left)) / geom.sx, Y1 = (ky * (geom.size + geom.top)) / geom.sy;
  g.save();
  g.fillStyle = "rgba(8,10,18,0.35)";
  g.fillRect(0, 0, W, H);
  g.beginPath();
  g.rect(crop[0] * kx, crop[1] * ky, (crop[2] - crop[0]) * kx, (crop[3] - crop[1]) * ky);
  g.clip();
  g.imageSmoothingEnabled = w >= 32;
  g.drawImage(off, X0, Y0, X1 - X0, Y1 - Y0);
  g.restore();
}

function queryImageURL(ex, ctx) {
  const im = ex.query.image || {};
  if (im.upload) return `/api/uploads/${enc(im.upload)}/image`;
  return thumbURL(im.cache || ctx.choice.cache, im.id);
}

async function renderExplanation(ex, ctx) {
  const maxCss = [Math.min(500, window.innerWidth * 0.44), Math.min(420, window.innerHeight * 0.5)];
  const [qimg, rimg] = await Promise.all([loadImage(queryImageURL(ex, ctx)).catch(() => null),
    loadImage(thumbURL(ctx.choice.cache, ex.result.id)).catch(() => null)]);
  drawSaliency($("#explain-q"), qimg, ex.query.image_size, ex.query.geometry, ex.query_saliency, maxCss);
  drawSaliency($("#explain-r"), rimg, ex.result.image_size, ex.result.geometry, ex.saliency, maxCss);
  const stat = (k, v, t = "") => el("span", { title: t }, `${k} `, el("b", { text: v }));
  const kids = [stat("method", ex.method), stat("score", fmt(ex.score, 4)), stat("space", ex.space === "grid" ? "feature cells" : "model-input px"),
    stat("time", `${(ex.seconds * 1000).toFixed(0)} ms`)];
  if (ex.insertion_auc != null) kids.push(stat("insertion AUC", fmt(ex.insertion_auc, 3), "score while restoring the most salient parts first (higher = better map)"));
  if (ex.deletion_auc != null) kids.push(stat("deletion AUC", fmt(ex.deletion_auc, 3), "score while removing the most salient parts first (lower = better map)"));
  if (ex.channel_share_sum != null) kids.push(stat("channel shares sum", fmt(ex.channel_share_sum, 4)));
  if (!ex.query_saliency) kids.push(el("span", { class: "muted", text: "(this method explains the result image only)" }));
  $("#explain-stats").replaceChildren(...kids);
  const chans = ex.top_channels || [];
  const rows = chans.map((c) => {
    const row = el("div", { class: "chan" }, el("span", { text: `channel ${c.channel} · ${fmt(c.share, 4)}` }));
    for (const p of c.patches) {
      const cv = el("canvas", { title: `#${p.id} ${p.label} · activation ${fmt(p.activation, 2)}` });
      row.append(cv);
      loadImage(thumbURL(ctx.choice.cache, p.id)).then((img) => drawPatch(cv, img, p)).catch(() => {});
    }
    return row;
  });
  if (rows.length) rows.unshift(el("div", { class: "muted", text: "Top channels (share of the score) and the dataset patches where each is most active:" }));
  $("#explain-channels").replaceChildren(...rows);
  document.body.dataset.explained = ex.method;
}

function drawPatch(cv, img, p) {
  const S0 = 64 * dpr();
  cv.width = cv.height = S0;
  const g = cv.getContext("2d");
  const [w, h] = p.image_size;
  // zoom on the patch: a square 3× the box around it (clipped to the image)
  const [x0, y0, x1, y1] = p.box;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const side = Math.min(Math.max(w, h), Math.max(x1 - x0, y1 - y0) * 3);
  const sx = clamp(cx - side / 2, 0, Math.max(0, w - side)), sy = clamp(cy - side / 2, 0, Math.max(0, h - side));
  const fx = img.naturalWidth / w, fy = img.naturalHeight / h;
  g.drawImage(img, sx * fx, sy * fy, side * fx, side * fy, 0, 0, S0, S0);
  const k = S0 / side;
  g.lineWidth = 2 * dpr();
  g.strokeStyle = "#ffb020";
  g.strokeRect((x0 - sx) * k, (y0 - sy) * k, (x1 - x0) * k, (y1 - y0) * k);
}

async function explainCurrent() {
  const { items, ix, ctx } = MODAL;
  const m = items[ix];
  const method = $("#explain-method").value;
  const seq = ++EXPLAIN.seq;
  $("#explain").hidden = false;
  $("#explain-title").textContent = `Why does ${basename(m.path)} match?`;
  $("#explain-info").textContent = `${choiceLabel(ctx.choice)} · ${method}`;
  for (const id of ["#explain-q", "#explain-r"]) { const c = $(id); c.width = c.height = 1; }
  $("#explain-stats").replaceChildren(el("span", { class: "muted", text: "explaining…" }));
  $("#explain-channels").replaceChildren();
  delete document.body.dataset.explained;
  const bar = $("#explain-progress");
  // the model-running methods also perturb the query image ("both"), so both images get a map
  const params = method === "occlusion" || method === "rise" ? { mode: "both" } : undefined;
  const r = await api(`/api/searches/${ctx.sid}/explain`, { json: { id: m.id, method, params } });
  let j = r;
  while (j.status === "running") {
    bar.hidden = false;
    $("i", bar).style.width = `${(100 * j.progress).toFixed(0)}%`;
    $("span", bar).textContent = `${method}: ${(100 * j.progress).toFixed(0)} % · ${j.seconds.toFixed(1)} s (runs the model on perturbed images)`;
    await new Promise((res) => setTimeout(res, 500));
    if (seq !== EXPLAIN.seq || $("#explain").hidden) return;
    j = await api(`/api/jobs/${j.job}`);
  }
  bar.hidden = true;
  if (seq !== EXPLAIN.seq) return;
  if (j.status === "error") throw new Error(`explain failed: ${j.error}`);
  await renderExplanation(j.result, ctx);
}

function wireExplain() {
  $("#modal-explain").addEventListener("click", () => explainCurrent().catch(reportError));
  $("#explain-close").addEventListener("click", () => { $("#explain").hidden = true; EXPLAIN.seq++; });
  $("#explain").addEventListener("click", (e) => { if (e.target.id === "explain") { $("#explain").hidden = true; EXPLAIN.seq++; } });
  window.addEventListener("keydown", (e) => {
    if (!$("#explain").hidden && e.key === "Escape") {
      $("#explain").hidden = true;
      EXPLAIN.seq++;
      e.stopImmediatePropagation();
      e.preventDefault();
    }
  }, { capture: true });
}

// -- compare overlap ---------------------------------------------------------------------------------
async function updateOverlap() {
  if (S.panes.length !== 2 || !S.panes[0].ctx || !S.panes[1].ctx) return;
  const [a, b] = S.panes;
  const seq = S.seq;
  const o = await api(`/api/overlap?a=${a.ctx.sid}&b=${b.ctx.sid}`);
  if (seq !== S.seq) return;
  const sets = [new Set(o.shared.map((p) => p[0])), new Set(o.shared.map((p) => p[1]))];
  [a, b].forEach((p, pi) => {
    const pane = $(`#panes [data-pane="${pi}"]`);
    if (!pane) return;
    for (const card of $$(".card", pane)) if (sets[pi].has(+card.dataset.id) && +card.dataset.rank < o.k[pi]) card.classList.add("shared");
    const head = $(".pane-head", pane);
    const note = el("span", { class: "overlap-note", title: `images in both top-${o.k[0]} / top-${o.k[1]} sets (outlined ∩); Jaccard ${o.jaccard}`, text: `∩ ${o.count} shared` });
    head.append(note);
  });
  document.body.dataset.overlap = String(o.count);
}

wireMap();
wireExplain();
