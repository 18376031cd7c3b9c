// The Concepts tab: the stored concepts of the current cache and layer (GET …/concepts), each a
// row of its best patches (cut from the thumbnails by their boxes, in context), its size and its
// patches' labels; a filter by label; click a concept to search it (POST /api/search with
// `concept`: results, curve and rank windows as for any query, the query panel shows the concept's
// contact sheet); and the offer to compute them (method, number, progress) when none are stored.
//
// A concept search has no query image: S.concept holds it while it is the query, and any action on
// the query image (picking one, a tool, a brush key, the feature choice) leaves it.
import { $, $$, el, fmt, dpr } from "./util.js";
import { api, enc, thumbURL, loadImage, toast, reportError, followJob } from "./api.js";
import { S, choiceKey, choiceLabel, layerInfo, queryMode } from "./state.js";
import { brush, renderQueryMeta } from "./query.js";
import { runSearch, clearResults } from "./search.js";

export const CONCEPTS = { key: "", info: null, infoText: "", method: "dictionary", label: "", poll: null, n: 32, queries: 200 };

const METHOD_TEXT = {
  dictionary: "Directions learned from every cell of this layer (spherical k-means over the cached features): each concept is a recurring pattern, with the cells that express it most as its patches.",
  saliency: "Plummer et al.'s attribute discovery: nearest neighbours of sampled images, the salient part of each match, crops around the matches' own peaks, clustered.",
};
const PATCHES = 12; // patches drawn per row
const PATCH_PX = 64;

const qs = (c, method) => `layer=${enc(c.layer)}&method=${method}`;
export const sheetURL = (cq) => `/api/caches/${enc(cq.cache)}/concepts/sheet/${cq.id}?${qs(cq, cq.method)}&v=${enc(cq.version || "")}`;
const viewKey = () => (S.choice ? `${choiceKey(S.choice)}::${CONCEPTS.method}` : "");
const shown = () => !$("#concepts-view").hidden;

// -- the tab ---------------------------------------------------------------------------------------
export async function refreshConcepts(force = false) {
  if (!S.choice || !shown()) return;
  const key = viewKey();
  if (!force && key === CONCEPTS.key && CONCEPTS.info && CONCEPTS.info.status !== "computing") return renderList();
  CONCEPTS.key = key;
  CONCEPTS.info = null;
  const c = S.choice, method = CONCEPTS.method;
  syncMethod();
  $("#cn-info").textContent = "loading concepts…";
  const info = await api(`/api/caches/${enc(c.cache)}/concepts?${qs(c, method)}&patches=${PATCHES}`);
  if (CONCEPTS.key !== key) return;
  CONCEPTS.info = info;
  $("#cn-recompute").hidden = info.status !== "ready";
  document.body.dataset.concepts = info.status;
  if (info.status === "computing") {
    showComputing(c, method);
    pollJob(info.job.job, key);
    return;
  }
  if (info.status === "missing") return showMissing(c, method, info);
  empty(null);
  fillLabels(info);
  const stale = info.stale ? " · stale (cache changed since)" : "";
  CONCEPTS.infoText = `${choiceLabel(c)} · ${info.n_concepts} ${method} concepts${info.n_images ? ` of ${info.n_images.toLocaleString()} images` : ""}${stale}`;
  renderList();
}

function syncMethod() {
  for (const b of $$("#cn-method button")) b.classList.toggle("on", b.dataset.method === CONCEPTS.method);
}

/** The empty state (the Map tab's card): title, text and what goes with it; null hides it. */
function empty(title, kids = []) {
  const box = $("#cn-empty");
  box.hidden = !title;
  $("#concepts-view").classList.toggle("no-concepts", !!title);
  if (!title) return;
  $("#cn-list").replaceChildren();
  box.replaceChildren(el("div", { class: "map-empty-card" }, el("div", { class: "map-empty-title", text: title }), ...kids));
}

function showMissing(c, method, info) {
  $("#cn-info").textContent = choiceLabel(c);
  $("#cn-label").replaceChildren(el("option", { value: "", text: "all" }));
  const failed = info.job && info.job.error ? el("div", { class: "map-empty-text cn-failed", text: `The last attempt failed: ${info.job.error}` }) : null;
  const seg = el("div", { class: "seg cn-choose", role: "group", "aria-label": "method" },
    ...["dictionary", "saliency"].map((m) => el("button", { class: m === method ? "on" : "", "data-method": m, text: m[0].toUpperCase() + m.slice(1), onclick: () => setMethod(m) })));
  const sel = (id, label, values, cur, title) => el("label", { class: "cn-opt", title }, el("span", { text: label }),
    el("select", { id, onchange: (e) => (CONCEPTS[id === "cn-n" ? "n" : "queries"] = +e.target.value) }, ...values.map((v) => el("option", { value: v, text: String(v), selected: v === cur }))));
  const opts = el("div", { class: "cn-opts" }, sel("cn-n", "concepts", [8, 16, 32, 64, 128], CONCEPTS.n, "how many concepts to find"),
    method === "saliency" ? sel("cn-queries", "queries", [50, 100, 200, 500, 1000], CONCEPTS.queries, "sampled query images (their nearest neighbours give the salient crops)") : null);
  const other = Object.entries(info.stored || {}).filter(([m, on]) => on && m !== method).map(([m]) => m);
  const kids = [el("div", { class: "map-empty-text", text: `${METHOD_TEXT[method]} Computed once on the server and stored with the cache.` }), failed, seg, opts,
    el("button", { class: "btn primary big", id: "cn-compute", text: `Compute ${method} concepts`, onclick: () => compute().catch(reportError) })];
  if (other.length) kids.push(el("div", { class: "map-empty-others" }, "or view the ", ...other.map((m) => el("button", { class: "linkish", text: `${m} concepts`, onclick: () => setMethod(m) }))));
  empty(`No ${method} concepts of ${choiceLabel(c)} yet`, kids);
}

function showComputing(c, method) {
  $("#cn-info").textContent = `${choiceLabel(c)} · computing…`;
  $("#cn-recompute").hidden = true;
  empty(`Computing the ${method} concepts of ${choiceLabel(c)}…`, [
    el("div", { class: "map-empty-text", text: METHOD_TEXT[method] }),
    el("div", { class: "map-progress", id: "cn-progress" }, el("i"), el("span", { text: "starting…" }))]);
}

async function compute() {
  const c = S.choice;
  if (!c) return;
  const key = viewKey(), method = CONCEPTS.method;
  const body = { n_concepts: CONCEPTS.n, ...(method === "saliency" ? { n_queries: CONCEPTS.queries } : {}) };
  const r = await api(`/api/caches/${enc(c.cache)}/concepts?${qs(c, method)}`, { json: body });
  CONCEPTS.info = { status: "computing" };
  document.body.dataset.concepts = "computing";
  showComputing(c, method);
  pollJob(r.job, key);
}

function pollJob(job, key) {
  followJob(job, CONCEPTS, {
    first: 300, every: 600, current: () => CONCEPTS.key === key,
    info: "#cn-info", bar: "#cn-progress", text: "computing concepts",
    ended: (j) => {
      if (j.status === "error") toast(`computing the concepts failed: ${j.error}`);
      refreshConcepts(true).catch(reportError);
    },
  });
}

function setMethod(m) {
  if (m === CONCEPTS.method) return;
  CONCEPTS.method = m;
  CONCEPTS.label = "";
  syncMethod();
  refreshConcepts().catch(reportError);
}

function fillLabels(info) {
  const counts = new Map();
  for (const c of info.concepts) for (const [lab, n] of c.labels) counts.set(lab, (counts.get(lab) || 0) + n);
  const labs = [...counts.entries()].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
  if (CONCEPTS.label && !counts.has(CONCEPTS.label)) CONCEPTS.label = "";
  $("#cn-label").replaceChildren(el("option", { value: "", text: `all (${labs.length} labels)` }),
    ...labs.map(([lab, n]) => el("option", { value: lab, text: `${lab || "(empty)"} · ${n}`, selected: lab === CONCEPTS.label })));
}

/** The concepts as rows (the label filter keeps those with patches of the label, most first). */
function renderList() {
  const info = CONCEPTS.info;
  if (!info || info.status !== "ready") return;
  const lab = CONCEPTS.label;
  const share = (c) => (c.labels.find((x) => x[0] === lab) || [lab, 0])[1] / Math.max(1, c.n_patches);
  let items = info.concepts;
  if (lab) items = items.filter((c) => share(c) > 0).sort((a, b) => share(b) - share(a) || a.id - b.id);
  const maxSize = Math.max(1, ...info.concepts.map((c) => c.size));
  const active = S.concept && S.concept.cache === S.choice.cache && S.concept.layer === S.choice.layer && S.concept.method === CONCEPTS.method ? S.concept.id : null;
  const rows = items.map((c) => conceptRow(c, lab, maxSize, c.id === active, share(c)));
  $("#cn-list").replaceChildren(...(rows.length ? rows : [el("div", { class: "cn-none", text: `No concept has patches labelled ${lab}.` })]));
  $("#cn-list").dataset.shown = String(rows.length);
  $("#cn-info").textContent = CONCEPTS.infoText + (lab ? ` · ${rows.length} with ${lab}` : "");
  $("#cn-info").title = $("#cn-info").textContent;
  for (const r of rows) observer().observe(r);
}

function conceptRow(c, lab, maxSize, active, share) {
  const top = c.labels.slice(0, 3).map(([l, n]) => `${l || "(empty)"} ${n}`).join(" · ") + (c.labels.length > 3 ? ` · +${c.labels.length - 3}` : "");
  const patches = el("div", { class: "cn-patches" });
  for (const p of c.patches.slice(0, PATCHES)) {
    patches.append(el("canvas", { class: "cn-patch" + (lab && p.label !== lab ? " dim" : ""), width: PATCH_PX, height: PATCH_PX, title: `#${p.id} ${p.label} · ${p.path}\nscore ${fmt(p.score, 3)}` }));
  }
  const row = el("div", { class: "cn-row" + (active ? " active" : ""), role: "listitem", tabindex: "0", "data-concept": c.id,
    title: `concept ${c.id}: click to search it (its direction as a one-cell query)`,
    onclick: () => searchConcept(c), onkeydown: (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), searchConcept(c)) },
  el("div", { class: "cn-head" },
    el("b", { text: `#${c.id}` }),
    el("span", { class: "cn-size", title: "cells assigned to this concept" }, el("i", { style: `width:${((100 * c.size) / maxSize).toFixed(1)}%` })),
    el("span", { class: "cn-n", text: `${c.size.toLocaleString()} cells` }),
    el("span", { class: "cn-labels", title: "labels of its patches", text: lab ? `${lab}: ${(100 * share).toFixed(0)} % of ${c.n_patches} patches · ${top}` : top })),
  patches);
  row._concept = c;
  return row;
}

let io = null;
function observer() {
  if (!io) io = new IntersectionObserver((entries) => {
    for (const en of entries) if (en.isIntersecting) { io.unobserve(en.target); drawRow(en.target); }
  }, { root: $("#cn-list"), rootMargin: "200px" });
  return io;
}

function drawRow(row) {
  const c = row._concept, cache = S.choice.cache;
  $$(".cn-patch", row).forEach((cv, i) => {
    const p = c.patches[i];
    loadImage(thumbURL(cache, p.id)).then((img) => drawPatch(cv, img, p)).catch(() => {});
  });
}

/** One patch: twice its box around it (the contact sheets' context), the box outlined. */
function drawPatch(cv, img, p) {
  const T = Math.round(PATCH_PX * dpr());
  cv.width = cv.height = T;
  const g = cv.getContext("2d");
  g.fillStyle = "#282828";
  g.fillRect(0, 0, T, T);
  const sx = img.naturalWidth / p.size[0], sy = img.naturalHeight / p.size[1];
  const x0 = p.box[0] * sx, y0 = p.box[1] * sy, x1 = p.box[2] * sx, y1 = p.box[3] * sy;
  const side = Math.max(12, 2 * Math.max(x1 - x0, y1 - y0));
  const cx0 = (x0 + x1) / 2 - side / 2, cy0 = (y0 + y1) / 2 - side / 2, s = T / side;
  g.imageSmoothingQuality = "high";
  g.drawImage(img, -cx0 * s, -cy0 * s, img.naturalWidth * s, img.naturalHeight * s);
  g.lineWidth = Math.max(1.5, 2 * dpr());
  g.strokeStyle = "#ffdc00";
  g.strokeRect((x0 - cx0) * s, (y0 - cy0) * s, (x1 - x0) * s, (y1 - y0) * s);
  cv.dataset.drawn = "1";
}

// -- a concept as the query ----------------------------------------------------------------------------
/** Search concept `c` (a record of the tab) of the current choice and method. */
export function searchConcept(c) {
  const ch = S.choice;
  runConcept({ cache: ch.cache, layer: ch.layer, id: c.id, method: CONCEPTS.method, size: c.size, labels: c.labels, patches: c.patches, version: CONCEPTS.info && CONCEPTS.info.version });
}

/** Search the concept query `cq` (from the tab, a share link or the history). */
export function runConcept(cq) {
  S.concept = cq;
  showConceptQuery(cq);
  $('#view-tabs [data-view="results"]').click();
  return runSearch().catch(reportError);
}

/** Open a concept search from a share link (#c=…&l=…&cn=METHOD:ID): the concept's record is
 * fetched for the current choice; false when the cache has no such concept. */
export async function openConceptLink(method, id) {
  const c = S.choice;
  if (!["dictionary", "saliency"].includes(method) || !Number.isInteger(id)) return false;
  const info = await api(`/api/caches/${enc(c.cache)}/concepts?${qs(c, method)}&patches=${PATCHES}`);
  const rec = info.status === "ready" && info.concepts.find((x) => x.id === id);
  if (!rec) {
    toast(`no ${method} concept ${id} in ${choiceLabel(c)}`);
    return false;
  }
  CONCEPTS.method = method;
  CONCEPTS.info = info;
  CONCEPTS.key = viewKey();
  searchConcept(rec);
  return true;
}

/** The search body of the concept query on choice c (search.js). */
export function conceptBody(cq) {
  return { cache: cq.cache, layer: cq.layer, concept: { id: cq.id, method: cq.method } };
}

/** The query's mask, for the result overlays: the one cell of the virtual query image (the model
 * input) that holds the concept; carried onto each match as any mask is. */
export function conceptMask(query) {
  const [w, h] = query.image_size;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  const [x0, y0, x1, y1] = query.box;
  g.fillRect(x0, y0, x1 - x0, y1 - y0);
  const s = Math.min(1, 128 / Math.max(w, h));
  const small = document.createElement("canvas");
  small.width = Math.max(1, Math.round(w * s));
  small.height = Math.max(1, Math.round(h * s));
  small.getContext("2d").drawImage(canvas, 0, 0, small.width, small.height);
  return { width: w, height: h, data: null, canvas, small };
}

/** The query panel for a concept: its contact sheet over the stage, its facts under it. */
function showConceptQuery(cq) {
  document.body.classList.add("concept-query");
  $("#q-concept").hidden = false;
  $("#qc-title").textContent = `Concept ${cq.id}`;
  $("#qc-sub").textContent = `${cq.method} · ${cq.layer} · ${cq.size.toLocaleString()} cells`;
  $("#qc-back").hidden = !S.query;
  const img = $("#qc-img"), alt = $("#qc-patches");
  img.hidden = false;
  alt.hidden = true;
  img.onerror = () => { // no stored sheet: its patches, cut from the thumbnails
    img.hidden = true;
    alt.hidden = false;
    alt.replaceChildren(...cq.patches.slice(0, 16).map((p) => {
      const cv = el("canvas", { class: "cn-patch", width: PATCH_PX, height: PATCH_PX, title: `#${p.id} ${p.label}` });
      loadImage(thumbURL(cq.cache, p.id)).then((im) => drawPatch(cv, im, p)).catch(() => {});
      return cv;
    }));
  };
  img.src = sheetURL(cq);
  renderConceptMeta(cq);
  $("#q-notes").hidden = true;
}

export function renderConceptMeta(cq = S.concept) {
  if (!cq) return;
  const li = layerInfo({ cache: cq.cache, layer: cq.layer });
  const top = (cq.labels || []).slice(0, 3).map(([l, n]) => `${l} ${n}`).join(" · ");
  $("#q-meta").replaceChildren(
    el("b", { text: `concept #${cq.id}` }),
    el("span", { class: "pill", title: "discovery method", text: cq.method }),
    el("span", { class: "pill", title: "feature grid of this layer: rows × cols × channels", text: li ? `${li.grid[0]}×${li.grid[1]}×${li.channels}` : cq.layer }),
    el("span", { class: "pill hot", title: "the concept's direction as a one-cell query: each image's best cell", text: "one-cell query" }),
    el("span", { title: "cells assigned to the concept" }, "size ", el("b", { text: cq.size.toLocaleString() })),
    top ? el("span", { title: "labels of its patches" }, "patches ", el("b", { text: top })) : null);
  $("#q-info").textContent = `${cq.method} concept ${cq.id} · ${cq.layer}`;
  $("#q-info").title = $("#q-info").textContent;
}

/** Leave the concept query (the query image is the query again). With `rerun`, the image's own
 * search runs again when it has a region; without one the results are cleared. */
export function exitConcept({ rerun = true } = {}) {
  if (!S.concept) return;
  S.concept = null;
  document.body.classList.remove("concept-query");
  $("#q-concept").hidden = true;
  $$("#cn-list .cn-row.active").forEach((r) => r.classList.remove("active"));
  renderQueryMeta({ mode: queryMode() });
  if (!S.query) {
    $("#q-info").textContent = "";
    clearResults("Pick a query image on the left (or press R), then brush a region — or click a concept.");
  } else if (!S.whole && brush.isEmpty()) clearResults("Brush a region of the query image to search.");
  else if (rerun) runSearch().catch(reportError);
}

const BRUSH_KEYS = new Set(["b", "e", "x", "w", "i", "delete", "backspace"]);

export function wireConcepts() {
  S.concept = null;
  for (const b of $$("#view-tabs button")) b.addEventListener("click", () => {
    $("#concepts-view").hidden = b.dataset.view !== "concepts";
    if (b.dataset.view === "concepts") refreshConcepts().catch(reportError);
  });
  for (const b of $$("#cn-method button")) b.addEventListener("click", () => setMethod(b.dataset.method));
  $("#cn-label").addEventListener("change", (e) => {
    CONCEPTS.label = e.target.value;
    renderList();
  });
  $("#cn-recompute").addEventListener("click", () => {
    const p = (CONCEPTS.info && CONCEPTS.info.params) || {};
    if (p.n_concepts) CONCEPTS.n = p.n_concepts;
    compute().catch(reportError);
  });
  $("#qc-back").addEventListener("click", () => exitConcept());
  // the query image again: a new one is loaded (setQuery), a tool or brush key, the feature choice
  $("#q-img").addEventListener("load", () => exitConcept({ rerun: false }));
  $("#tools").addEventListener("click", (e) => e.target.closest("button") && exitConcept(), true);
  document.addEventListener("change", (e) => {
    if (e.target.id === "choice") exitConcept({ rerun: false });
  }, true);
  window.addEventListener("keydown", (e) => {
    const tag = (e.target.tagName || "").toLowerCase();
    if (!S.concept || ["input", "select", "textarea"].includes(tag) || !$("#modal").hidden || !$("#explain").hidden) return;
    const k = e.key.toLowerCase();
    if (((e.ctrlKey || e.metaKey) && (k === "z" || k === "y")) || (!e.ctrlKey && !e.metaKey && !e.altKey && BRUSH_KEYS.has(k))) exitConcept();
  }, true);
  // a share link restores image queries only: say so rather than copy the image's link
  $("#share").parentElement.addEventListener("click", (e) => {
    if (S.concept && e.target.closest("#share")) {
      e.stopPropagation();
      toast(`share links restore image queries only; this is ${S.concept.method} concept ${S.concept.id} of ${S.concept.layer}`, "info");
    }
  }, true);
  $("#choice").addEventListener("change", () => setTimeout(() => refreshConcepts().catch(reportError), 0));
  window.addEventListener("vfs:results", () => {
    if (shown() && CONCEPTS.info && CONCEPTS.info.status === "ready") renderList();
  });
}
