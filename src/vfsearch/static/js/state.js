// Shared app state (S), the measured search timings, and the cache/layer "choice" helpers.
// main.js exposes S and timings as window.vfs.S / window.vfs.timings (tests and benchmarks read them).
export const S = {
  caches: [],
  byName: {},
  choice: null, // {cache, layer}
  compare: null,
  k: 24,
  excludeSelf: true,
  query: null, // {kind: "dataset"|"upload", cache, id, upload, name, path, label, size:[w,h], meta}
  whole: false, // a whole-image query (no mask): in mode wholeMode
  wholeMode: "global", // "global" (similar images, pooled features) | "whole" (rigid: cell (i, j) ↔ (i, j))
  panes: [], // [{ctx, matches, total, error, loading}]
  overlay: "region",
  filter: null, // {column, value}
  spreadCol: "label",
  spreadOpen: null, // the spread panel: null = automatic (collapsed when it says nothing), or true / false
  history: [],
  colorIx: 0,
  win: null, // {start, stop, key}
  activeCurve: null,
  seq: 0,
  lastTiming: null,
  ds: { q: "", column: "", value: "", offset: 0, total: 0, loading: false, done: false },
};
/** One entry per finished search (S.lastTiming), in order. */
export const timings = [];

export const cacheInfo = (name) => S.byName[name];
export const layerInfo = (choice) => cacheInfo(choice.cache).layers.find((l) => l.name === choice.layer);
export const choiceKey = (c) => (c ? `${c.cache}::${c.layer}` : "");
export const parseChoice = (v) => {
  if (!v) return null;
  const i = v.indexOf("::");
  return { cache: v.slice(0, i), layer: v.slice(i + 2) };
};
export const choiceLabel = (c) => `${c.cache} · ${c.layer}`;
/** The API mode of the current query: "region" | "global" | "whole". */
export const queryMode = () => (S.whole ? S.wholeMode : "region");
export const MODE_TEXT = { region: "region", global: "similar images", whole: "rigid whole image" };
export const shortChoice = (c) => (S.caches.length > 1 ? `${c.cache}·${c.layer}` : c.layer);

