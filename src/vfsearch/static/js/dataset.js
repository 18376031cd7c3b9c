// The caches and their column selects (feature choice, dataset and result filters), and the
// dataset browser (filtered, paged thumbnail grid; a click makes the image the query).
import { $, $$, el, basename, debounce } from "./util.js";
import { api, enc, thumbURL, reportError } from "./api.js";
import { S, cacheInfo, choiceKey, parseChoice } from "./state.js";
import { setQuery } from "./query.js";

// -- caches / choices ------------------------------------------------------------------------
export async function loadCaches() {
  const r = await api("/api/caches");
  S.caches = r.caches;
  S.byName = Object.fromEntries(r.caches.map((c) => [c.name, c]));
  const opts = [];
  for (const c of r.caches)
    for (const l of c.layers)
      // one cache: its name says nothing (and a long option text is cut in the top bar)
      opts.push({ value: choiceKey({ cache: c.name, layer: l.name }), text: `${r.caches.length > 1 ? `${c.name} · ` : ""}${l.name} — ${l.grid[0]}×${l.grid[1]}×${l.channels}`, title: `${c.name} · ${l.name}: grid ${l.grid[0]}×${l.grid[1]}, ${l.channels} channels` });
  const sel = $("#choice"), cmp = $("#compare");
  sel.replaceChildren(...opts.map((o) => el("option", { value: o.value, text: o.text, title: o.title })));
  cmp.replaceChildren(el("option", { value: "", text: "off" }), ...opts.map((o) => el("option", { value: o.value, text: o.text, title: o.title })));
  cmp.disabled = opts.length < 2;
  S.choice = parseChoice(opts[0].value);
}

export function setChoiceUI() {
  $("#choice").value = choiceKey(S.choice);
  $("#compare").value = choiceKey(S.compare);
  for (const o of $("#compare").options) o.disabled = o.value === choiceKey(S.choice);
  fillColumnSelects();
}

export function fillColumnSelects() {
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

export function fillValues(sel, column, value, emptyText) {
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

export function markCurrentThumb() {
  const qid = S.query && S.query.kind === "dataset" && S.query.cache === S.choice.cache ? S.query.id : null;
  for (const t of $$("#ds-grid .thumb")) t.classList.toggle("current", +t.dataset.id === qid);
}

export function reloadDatasetIfNeeded() {
  const grid = $("#ds-grid");
  if (grid.dataset.cache !== S.choice.cache) {
    grid.dataset.cache = S.choice.cache;
    reloadDataset();
  }
}

async function randomQuery() {
  const p = dsParams();
  const r = await api(`/api/caches/${enc(S.choice.cache)}/random?${p}`);
  await setQuery({ kind: "dataset", cache: S.choice.cache, id: r.id });
}

export function wireDataset() {
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
}
