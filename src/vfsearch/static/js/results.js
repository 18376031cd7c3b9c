// The result panes: cards with match overlays, "more results", heat maps, the spread of the
// results over a column, the result filter and overlay mode, CSV/JSON export.
import { $, $$, clamp, el, fmt, basename } from "./util.js";
import { api, thumbURL, loadImage, primeThumbs, toast, reportError } from "./api.js";
import { S, cacheInfo, layerInfo, choiceLabel, shortChoice } from "./state.js";
import { drawResult } from "./overlay.js";
import { fillColumnSelects, fillValues } from "./dataset.js";
import { runSearch } from "./search.js";
import { openModal } from "./modal.js";
import { updateOverlap } from "./compare.js";
import { writeHash } from "./history.js";

export async function renderPanes() {
  // the thumbnails first (inline ones decode in a few ms): the cards are then built, laid out,
  // drawn and painted once, not painted empty in a frame that comes while the images load
  const panes = S.panes;
  await Promise.all(panes.flatMap((p) => (p.matches || []).map((m) =>
    loadImage(thumbURL(p.choice.cache, m.id)).catch(() => null))));
  if (S.panes !== panes) return; // a newer search's panes replaced these meanwhile
  const wrap = $("#panes");
  const nodes = [];
  const draws = [];
  S.panes.forEach((p, pi) => {
    const pane = el("div", { class: "pane", "data-pane": pi, "data-search-id": p.ctx ? p.ctx.sid : "" });
    const head = el("div", { class: "pane-head" }, el("span", { class: "sw" + (pi > 0 ? " dashed" : ""), style: `background:${p.ctx ? p.ctx.color : "#ccc"};color:${p.ctx ? p.ctx.color : "#ccc"}` }), el("b", { class: "choice", text: shortChoice(p.choice), title: choiceLabel(p.choice) }));
    pane.append(head);
    if (p.error) {
      pane.append(el("div", { class: "pane-error", text: p.error.message || String(p.error) }));
      nodes.push(pane);
      return;
    }
    const li = layerInfo(p.choice);
    head.append(el("span", { class: "muted stats", title: "shown / ranked images · feature grid · server search time", text: `top ${p.matches.length} of ${p.total.toLocaleString()}${S.filter ? ` with ${S.filter.column} = ${S.filter.value}` : ""} · ${li.grid[0]}×${li.grid[1]} · ${p.timing.search_ms.toFixed(0)} ms` }));
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
  document.body.classList.toggle("comparing", S.panes.length > 1);
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
    const card = el("figure", { class: "card", "data-id": m.id, "data-rank": m.rank, "data-score": m.score, "data-box": JSON.stringify(m.box), title: `${m.path}\nscore ${fmt(m.score, 4)} · rank ${m.rank}` },
      cv,
      el("figcaption", {},
        el("span", { class: "rank", text: `#${m.rank}` }),
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
  // every card of a pane has the same size: measured once (each canvas resized before the next
  // card's size is read would lay the page out again, card by card)
  if (!p.cardSize) p.cardSize = [m._canvas.clientWidth || 140, m._canvas.clientHeight || m._canvas.clientWidth || 140];
  drawResult(m._canvas, m._img, m, p.ctx, S.overlay, heat, { cssSize: p.cardSize });
  m._canvas.parentElement.dataset.drawn = S.overlay;
}

export function redrawCards() {
  for (const p of S.panes) p.cardSize = null; // the layout may have changed (a resize)
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
      p.ctx.heatBox = r.cell_box; // the window each map value scores ([0, 0, 1, 1] for a global query: per-cell shares)
    }
  })).catch(reportError);
  redrawCards();
}

// spread of the shown results over a column, against the dataset's base rate; collapsible, and
// collapsed unless opened when it says nothing (every result its own value: one image per label)
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
  const silent = rows.every(([, n]) => n === 1);
  const open = S.spreadOpen ?? !silent;
  const toggleOpen = () => {
    S.spreadOpen = !open;
    refreshSpreads();
  };
  const summary = silent ? `${rows.length} different value${rows.length === 1 ? "" : "s"}, one result each` : `${rows.length} value${rows.length === 1 ? "" : "s"}, most: ${rows[0][0] || "(empty)"} (${rows[0][1]})`;
  const title = el("button", { class: "spread-title", "aria-expanded": String(open), title: open ? "hide the spread" : "show the spread of the results over this column", onclick: toggleOpen },
    el("span", { class: "caret", text: open ? "▾" : "▸" }),
    open ? `${col} of the top ${p.matches.length} (vs. expected by chance)` : `${col} of the top ${p.matches.length}: ${summary}`);
  wrap.classList.toggle("collapsed", !open);
  wrap.append(title);
  if (!open) return wrap;
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
  wrap.append(grid);
  return wrap;
}

function refreshSpreads() {
  $$("#panes .pane").forEach((pane, i) => {
    const p = S.panes[i];
    const old = $(".spread-wrap", pane);
    if (p && p.ctx && old) old.replaceWith(renderSpread(p));
  });
}

function setFilter(f) {
  S.filter = f && f.column ? f : null;
  fillColumnSelects();
  if (S.query || S.concept) runSearch().catch(reportError);
}

export function setOverlay(mode) {
  S.overlay = mode;
  for (const b of $$("#overlay-mode button")) b.classList.toggle("on", b.dataset.mode === mode);
  if (mode === "heat") loadHeat();
  else redrawCards();
  writeHash();
}

export function wireResults() {
  for (const b of $$("#overlay-mode button")) b.addEventListener("click", () => setOverlay(b.dataset.mode));
  $("#r-col").addEventListener("change", (e) => {
    fillValues($("#r-val"), e.target.value, null, "—");
    if (!e.target.value) setFilter(null);
  });
  $("#r-val").addEventListener("change", (e) => setFilter(e.target.value !== "" ? { column: $("#r-col").value, value: e.target.value } : null));
  $("#spread-col").addEventListener("change", (e) => {
    S.spreadCol = e.target.value;
    S.spreadOpen = null;
    refreshSpreads();
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
}
