// The score curve (every image's score by rank, for the current and the shown history searches),
// rank windows dragged on it, and the strip of results in the window (linked to the map).
import { $, clamp, dpr, el, fmt } from "./util.js";
import { api, thumbURL, loadImage, primeThumbs, reportError } from "./api.js";
import { S } from "./state.js";
import { drawResult } from "./overlay.js";
import { openLoose } from "./modal.js";
import { mapWindow } from "./map.js";

export function curveSeries() {
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

export function drawDist() {
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

export async function renderStrip(win) {
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
    const d = el("div", { class: "mini", "data-id": m.id, "data-rank": m.rank, title: `${m.path}\nrank ${m.rank} · score ${fmt(m.score, 4)}`, onclick: () => openLoose(ctx, r.items, r.items.indexOf(m)) },
      cv, el("div", { text: `${m.rank} · ${fmt(m.score, 2)}` }));
    loadImage(thumbURL(ctx.choice.cache, m.id)).then((img) => drawResult(cv, img, m, ctx, "region", null, { cssSize: [72, 72] })).catch(() => {});
    return d;
  });
  strip.replaceChildren(...kids);
}

export function wireCurve() {
  $("#logx").addEventListener("change", drawDist);
  setupDistInteraction();
}
