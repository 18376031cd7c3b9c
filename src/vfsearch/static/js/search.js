// Search: run the query (and the compare choice) on the server, then draw panes, curve and strip;
// the search options in the top bar (top k, skip self).
import { $, el } from "./util.js";
import { api, knownThumbs, primeThumbs, status, reportError } from "./api.js";
import { S, timings, shortChoice, queryMode } from "./state.js";
import { brush, renderQueryMeta } from "./query.js";
import { renderPanes } from "./results.js";
import { drawDist, renderStrip } from "./curve.js";
import { addConceptHistory, addHistory, renderHistory, writeHash } from "./history.js";
import { conceptBody, conceptMask, renderConceptMeta } from "./concepts.js";

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

export async function runSearch(opts = {}) {
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
  const cq = S.concept; // a concept as the query (concepts.js): no query image, no compare
  if (!q && !cq) return;
  if (!cq && !S.whole && brush.isEmpty()) {
    clearResults("The mask is empty: brush a region of the query image.");
    return;
  }
  const seq = ++S.seq;
  if (inflight) inflight.abort();
  inflight = new AbortController();
  const signal = inflight.signal;
  document.body.dataset.state = "searching";
  status("searching…", true);
  const mask = cq ? null : maskSnapshot();
  // the mask as drawn (brush resolution, 8 bits, lossless PNG): share links store the same bytes
  const mode = queryMode();
  const region = cq ? {} : mode !== "region" ? { mode } : { mode, mask: { png: mask.canvas.toDataURL("image/png").split(",")[1] } };
  const tEnc = performance.now();
  const choices = cq ? [{ cache: cq.cache, layer: cq.layer }] : [S.choice, ...(S.compare ? [S.compare] : [])];
  const body = cq ? () => ({ ...conceptBody(cq), k: S.k, filter: S.filter || undefined, thumbs: true })
    : (c) => ({ cache: c.cache, layer: c.layer, image: imageRef(q), k: S.k, exclude_self: S.excludeSelf, filter: S.filter || undefined, thumbs: true, known: knownThumbs(c.cache), ...region });
  const settled = await Promise.allSettled(choices.map((c) => api("/api/search", { json: body(c), signal })));
  if (seq !== S.seq) return;
  const tServer = performance.now();
  const anyOk = settled.some((r) => r.status === "fulfilled");
  const entry = !anyOk ? { ctxs: [], color: "#999", label: "" } : cq ? addConceptHistory(cq) : addHistory(q, mask, choices);
  S.panes = settled.map((r, i) => {
    if (r.status === "rejected") return { choice: choices[i], error: r.reason };
    const resp = r.value;
    primeThumbs(choices[i].cache, resp.thumbs);
    const ctx = { sid: resp.search_id, choice: choices[i], query: resp.query, mask: cq ? conceptMask(resp.query) : mask, top: resp.matches[0] ? resp.matches[0].score : 1, curve: resp.curve, color: entry.color, dashed: i > 0, label: `${entry.label} · ${shortChoice(choices[i])}` };
    entry.ctxs[i] = ctx;
    return { choice: choices[i], ctx, matches: resp.matches, total: resp.total, timing: resp.timing, stats: resp.stats, heat: {} };
  });
  if (settled[0].status === "rejected") reportError(settled[0].reason);
  else if (!$("#toast").hidden && !$("#toast").classList.contains("info")) $("#toast").hidden = true;
  S.win = null;
  S.activeCurve = S.panes[0].ctx ? S.panes[0].ctx.sid : null;
  if (cq) renderConceptMeta(cq);
  else renderQueryMeta();
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
    writeHash(); // share links hold image and concept queries
  }, 0);
  const p0 = S.panes[0];
  S.lastTiming = { total: t1 - t0, server: tServer - t0, draw: t1 - tServer, serverSearch: p0.timing ? p0.timing.search_ms : null,
    serverTotal: p0.timing ? p0.timing.total_ms : null, encode: tEnc - t0, fetch: tServer - tEnc, prep: tHist - tServer, cards: tCards - tHist, rest: t1 - tCards, cardDraw: S.prof.draw };
  timings.push(S.lastTiming);
  status(p0.error ? "search failed" : `${S.lastTiming.total.toFixed(0)} ms`);
  $("#status").title = p0.error ? "" : `search ${p0.timing.search_ms.toFixed(0)} ms on the server (${p0.timing.total_ms.toFixed(0)} ms with the query and response), ${S.lastTiming.total.toFixed(0)} ms from the end of the stroke until the results were drawn`;
  document.body.dataset.searches = String(timings.length);
  window.dispatchEvent(new CustomEvent("vfs:results", { detail: S.lastTiming }));
}

export function clearResults(message) {
  S.seq++;
  if (inflight) inflight.abort();
  S.panes = [];
  $("#panes").replaceChildren(el("div", { class: "pane" }, el("div", { class: "pane-empty", html: null, text: message })));
  $("#r-info").textContent = "";
  status("");
  document.body.dataset.state = "idle";
  drawDist();
}

export function wireSearch() {
  $("#k").addEventListener("change", (e) => {
    S.k = parseInt(e.target.value, 10);
    if (S.query || S.concept) runSearch().catch(reportError);
  });
  $("#exclude-self").addEventListener("change", (e) => {
    S.excludeSelf = e.target.checked;
    if (S.query) runSearch().catch(reportError);
  });
}
