// Compare: the second feature choice (the same query on another cache/layer, side by side) and the
// overlap of the two panes' results.
import { $, $$, el } from "./util.js";
import { api, reportError } from "./api.js";
import { S, parseChoice } from "./state.js";
import { runSearch } from "./search.js";

export async function updateOverlap() {
  if (S.panes.length !== 2 || !S.panes[0].ctx || !S.panes[1].ctx) return;
  const [a, b] = S.panes;
  const seq = S.seq;
  const o = await api(`/api/overlap?a=${a.ctx.sid}&b=${b.ctx.sid}`);
  if (seq !== S.seq) return;
  const sets = [new Set(o.shared.map((p) => p[0])), new Set(o.shared.map((p) => p[1]))];
  [a, b].forEach((p, pi) => {
    const pane = $(`#panes [data-pane="${pi}"]`);
    if (!pane) return;
    for (const card of $$(".card", pane)) if (sets[pi].has(+card.dataset.id) && +card.dataset.rank <= o.k[pi]) card.classList.add("shared");
    const head = $(".pane-head", pane);
    const note = el("span", { class: "overlap-note", title: `images in both top-${o.k[0]} / top-${o.k[1]} sets (outlined ∩); Jaccard ${o.jaccard}`, text: `∩ ${o.count} shared` });
    head.append(note);
  });
  document.body.dataset.overlap = String(o.count);
}

export function wireCompare() {
  $("#compare").addEventListener("change", (e) => {
    S.compare = parseChoice(e.target.value);
    if (S.query) runSearch().catch(reportError);
  });
}
