// The explain dialog: why a result matches (saliency on both images, score shares, top channels
// with the dataset patches where each is most active), for the result in the large view.
// The methods and their parameters come from the server (GET /api/explain/methods, the
// explainers' own declarations); the images are shown at once, the heat maps when they are done.
import { $, clamp, dpr, el, fmt, basename, cmap } from "./util.js";
import { api, enc, thumbURL, loadImage, reportError } from "./api.js";
import { choiceLabel } from "./state.js";
import { inputRect } from "./geometry.js";
import { modalMatch } from "./modal.js";

const EXPLAIN = { seq: 0, methods: null, job: null };

/** The explain methods as the server declares them (fetched once); the select lists them. */
async function loadMethods() {
  if (EXPLAIN.methods) return EXPLAIN.methods;
  try {
    const r = await api("/api/explain/methods");
    EXPLAIN.methods = Object.fromEntries(r.methods.map((m) => [m.name, m]));
  } catch (e) {
    return null; // an older server: keep the page's own list
  }
  const sel = $("#explain-method");
  const keep = sel.value;
  sel.replaceChildren(...Object.values(EXPLAIN.methods).map((m) => el("option", {
    value: m.name, text: m.name === "rise" ? "RISE" : m.name === "lime" ? "LIME" : m.name,
    title: `${m.title}${m.runs_model ? " (runs the model on perturbed images: seconds)" : " (instant)"}`,
  })));
  if (EXPLAIN.methods[keep]) sel.value = keep;
  sel.title = Object.values(EXPLAIN.methods).map((m) => `${m.name}: ${m.title}${m.runs_model ? " (seconds)" : " (instant)"}`).join(" · ");
  return EXPLAIN.methods;
}

/** Request parameters: both images perturbed where the method can ("mode": "both"), so the
 *  dialog shows a map on each; the declared defaults otherwise. */
function methodParams(method) {
  const m = EXPLAIN.methods && EXPLAIN.methods[method];
  if (!m) return ["occlusion", "rise", "mask"].includes(method) ? { mode: "both" } : undefined;
  const mode = m.params.find((p) => p.name === "mode");
  return mode && (mode.choices || []).includes("both") ? { mode: "both" } : undefined;
}

/** Best effort: ask the server to stop a running explanation job (the dialog was closed). */
function cancelJob() {
  const job = EXPLAIN.job;
  EXPLAIN.job = null;
  if (job) fetch(`/api/jobs/${enc(job)}/cancel`, { method: "POST" }).catch(() => {});
}

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
  const [X0, Y0, X1, Y1] = inputRect(geom, { x: 0, y: 0 }, kx, ky);
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

function queryImageURL(query, ctx) {
  const im = (query && query.image) || {};
  if (im.upload) return `/api/uploads/${enc(im.upload)}/image`;
  return thumbURL(im.cache || ctx.choice.cache, im.id);
}

const maxCssSize = () => [Math.min(500, window.innerWidth * 0.44), Math.min(420, window.innerHeight * 0.5)];

/** The two images without heat (while a model-running method works), dimmed as they will be. */
async function showImages(m, ctx, seq) {
  const q = ctx.query || {};
  const [qimg, rimg] = await Promise.all([loadImage(queryImageURL(q, ctx)).catch(() => null),
    loadImage(thumbURL(ctx.choice.cache, m.id)).catch(() => null)]);
  if (seq !== EXPLAIN.seq) return;
  const size = (img, s) => s || (img ? [img.naturalWidth, img.naturalHeight] : [1, 1]);
  drawSaliency($("#explain-q"), qimg, size(qimg, q.image_size), q.geometry, null, maxCssSize());
  drawSaliency($("#explain-r"), rimg, size(rimg, m.image_size), m.geometry, null, maxCssSize());
}

async function renderExplanation(ex, ctx) {
  const maxCss = maxCssSize();
  const [qimg, rimg] = await Promise.all([loadImage(queryImageURL(ex.query, ctx)).catch(() => null),
    loadImage(thumbURL(ctx.choice.cache, ex.result.id)).catch(() => null)]);
  drawSaliency($("#explain-q"), qimg, ex.query.image_size, ex.query.geometry, ex.query_saliency, maxCss);
  drawSaliency($("#explain-r"), rimg, ex.result.image_size, ex.result.geometry, ex.saliency, maxCss);
  const stat = (k, v, t = "") => el("span", { title: t }, `${k} `, el("b", { text: v }));
  const kids = [stat("method", ex.method), stat("score", fmt(ex.score, 4)), stat("space", ex.space === "grid" ? "feature cells" : "model-input px"),
    stat("time", `${(ex.seconds * 1000).toFixed(0)} ms`)];
  if (ex.insertion_auc != null) kids.push(stat("insertion AUC", fmt(ex.insertion_auc, 3), "score while restoring the most salient parts first (higher = better map)"));
  if (ex.deletion_auc != null) kids.push(stat("deletion AUC", fmt(ex.deletion_auc, 3), "score while removing the most salient parts first (lower = better map)"));
  if (ex.channel_share_sum != null) kids.push(stat("channel shares sum", fmt(ex.channel_share_sum, 4)));
  const sc = ex.concepts;
  if (sc) {
    const txt = sc.shared.length
      ? sc.shared.slice(0, 6).map((c) => `#${c.concept} (${c.query_cells}↔${c.result_cells})`).join(" · ")
      : "none";
    kids.push(stat("shared concepts", txt, `${sc.method} concepts of ${sc.layer} carried by query cells ↔ matched result cells; ${sc.same_cells} of ${sc.cells.length} matched cells carry the same concept`));
  }
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
  const { m, ctx } = modalMatch();
  await loadMethods();
  const method = $("#explain-method").value;
  const seq = ++EXPLAIN.seq;
  cancelJob();
  $("#explain").hidden = false;
  $("#explain-title").textContent = `Why does ${basename(m.path)} match?`;
  const info = EXPLAIN.methods && EXPLAIN.methods[method];
  $("#explain-info").textContent = `${choiceLabel(ctx.choice)} · ${info ? info.title : method}`;
  $("#explain-stats").replaceChildren(el("span", { class: "muted", text: "explaining…" }));
  $("#explain-channels").replaceChildren();
  delete document.body.dataset.explained;
  // the images at once (a model-running method takes seconds); the heat maps when it is done
  const shown = showImages(m, ctx, seq).catch(() => {});
  const bar = $("#explain-progress");
  const params = methodParams(method);
  const r = await api(`/api/searches/${ctx.sid}/explain`, { json: { id: m.id, method, params } });
  let j = r;
  if (j.status === "running") EXPLAIN.job = j.job;
  while (j.status === "running") {
    bar.hidden = false;
    $("i", bar).style.width = `${(100 * j.progress).toFixed(0)}%`;
    $("span", bar).textContent = `${info ? info.title : method}: ${(100 * j.progress).toFixed(0)} % · ${j.seconds.toFixed(1)} s (runs the model on perturbed images)`;
    await new Promise((res) => setTimeout(res, 500));
    if (seq !== EXPLAIN.seq || $("#explain").hidden) return;
    j = await api(`/api/jobs/${j.job}`);
  }
  EXPLAIN.job = null;
  bar.hidden = true;
  if (seq !== EXPLAIN.seq) return;
  if (j.status === "error") {
    $("#explain-stats").replaceChildren(el("span", { class: "muted", text: j.code === "cancelled" ? "cancelled" : "failed" }));
    if (j.code === "cancelled") return;
    throw new Error(`explain failed: ${j.error}`);
  }
  await shown;
  if (seq !== EXPLAIN.seq) return;
  await renderExplanation(j.result, ctx);
}

function closeExplain() {
  $("#explain").hidden = true;
  EXPLAIN.seq++;
  cancelJob();
}

export function wireExplain() {
  loadMethods().catch(() => {}); // the select lists every declared method (LIME, mask…)
  $("#modal-explain").addEventListener("click", () => explainCurrent().catch(reportError));
  $("#explain-close").addEventListener("click", closeExplain);
  $("#explain").addEventListener("click", (e) => { if (e.target.id === "explain") closeExplain(); });
  window.addEventListener("keydown", (e) => {
    if (!$("#explain").hidden && e.key === "Escape") {
      closeExplain();
      e.stopImmediatePropagation();
      e.preventDefault();
    }
  }, { capture: true });
}
