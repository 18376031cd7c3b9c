// vfsearch web app: pick an image, brush a region, see the most similar regions in the dataset.
// The single entry point (index.html loads it as a module): wires every part, then starts.
//
//   util.js     DOM and drawing helpers
//   api.js      fetch wrapper, image URLs and cache, toasts
//   state.js    shared state S, timings, cache/layer choice helpers
//   geometry.js the server's geometry and carry → canvas maps
//   dataset.js  caches, column selects, dataset browser
//   query.js    query image, brush and toolbar, uploads, choice switch
//   search.js   run a search, then draw panes, curve and strip
//   results.js  result panes, cards, spread, filter, overlay mode, export
//   overlay.js  one match drawn with its region or heat overlay
//   curve.js    score curve, rank windows, the rank strip
//   history.js  history list and share URLs
//   maskcode.js lossless mask codes for share URLs
//   modal.js    large view, search this region, use as query
//   compare.js  the compare choice and the panes' overlap
//   map.js      dataset map view
//   explain.js  explain dialog
//   concepts.js concepts tab, a concept as the query
//
// The modules only declare things when imported (some import each other, e.g. query ↔ search);
// nothing runs until main() below wires the page and loads the caches.
import { $, clamp, debounce } from "./util.js";
import { reportError } from "./api.js";
import { S, timings, parseChoice } from "./state.js";
import { loadCaches, setChoiceUI, reloadDatasetIfNeeded, wireDataset } from "./dataset.js";
import { brush, layoutStage, setTool, changeChoice, wireQuery } from "./query.js";
import { clearResults, wireSearch } from "./search.js";
import { redrawCards, setOverlay, wireResults } from "./results.js";
import { drawDist, wireCurve } from "./curve.js";
import { readHash, syncControls, wireHistory } from "./history.js";
import { closeModal, wireModal } from "./modal.js";
import { wireCompare } from "./compare.js";
import { MAP, wireMap } from "./map.js";
import { wireExplain } from "./explain.js";
import { CONCEPTS, wireConcepts } from "./concepts.js";

// what tests and benchmarks read from the page: the state, the timings, the brush, the map
window.vfs = { S, timings, MAP, CONCEPTS };

function wire() {
  wireQuery();
  window.vfs.brush = brush;
  $("#choice").addEventListener("change", (e) => changeChoice(parseChoice(e.target.value)).catch(reportError));
  wireCompare();
  wireSearch();
  wireResults();
  wireDataset();
  wireHistory();
  $("#help-btn").addEventListener("click", () => ($("#help").hidden = false));
  $("#help-close").addEventListener("click", () => ($("#help").hidden = true));
  $("#help").addEventListener("click", (e) => e.target.id === "help" && ($("#help").hidden = true));
  wireModal();
  wireCurve();
  window.addEventListener("resize", debounce(() => {
    layoutStage();
    drawDist();
    redrawCards();
  }, 80));
  // the query column changes width with the layout too (compare narrows it): the stage and the curve follow
  const ro = new ResizeObserver(debounce(() => {
    layoutStage();
    drawDist();
  }, 40));
  ro.observe($("#stage"));
  window.addEventListener("keydown", onKey);
  wireMap();
  wireExplain();
  wireConcepts();
}

function onKey(e) {
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "input" && e.target.type !== "checkbox" && e.target.type !== "range") return;
  if (tag === "select" || tag === "textarea") return;
  if (!$("#explain").hidden) return; // the explain dialog (over the large view) has the keys
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
