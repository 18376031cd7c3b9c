// Small DOM and drawing helpers shared by every module (no app state).
export const $ = (sel, el = document) => el.querySelector(sel);
export const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));
export const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);
export const dpr = () => window.devicePixelRatio || 1;
export function el(tag, attrs = {}, ...kids) {
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
export const fmt = (v, d = 3) => (v == null || !isFinite(v) ? "–" : (+v).toFixed(d));
export const basename = (p) => String(p).split("/").pop();
export const debounce = (fn, ms) => {
  let t;
  return (...a) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...a), ms);
  };
};

// -- colour map for heat overlays (inferno-like) ----------------------------------------------
const INFERNO = [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]];
export function cmap(t) {
  t = clamp(t, 0, 1) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(t)), f = t - i;
  const a = INFERNO[i], b = INFERNO[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

export function fitRect(iw, ih, W, H, pad = 0) {
  const s = Math.min((W - 2 * pad) / iw, (H - 2 * pad) / ih);
  const w = iw * s, h = ih * s;
  return { x: (W - w) / 2, y: (H - h) / 2, w, h };
}
