// API client: fetch wrapper with the server's JSON errors, image URLs and the image cache, toasts.
import { $ } from "./util.js";

// -- API ----------------------------------------------------------------------------------------
export async function api(path, opts = {}) {
  const init = { ...opts };
  if (opts.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(opts.json);
    init.headers = { "Content-Type": "application/json", ...(opts.headers || {}) };
    delete init.json;
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error("cannot reach the vfsearch server (is it still running?)");
  }
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json().catch(() => null) : null;
  if (!r.ok) {
    const err = new Error(body && body.message ? body.message : `${r.status} ${r.statusText}`);
    err.status = r.status;
    err.code = body && body.error;
    throw err;
  }
  return body;
}

export const enc = encodeURIComponent;
export const thumbURL = (cache, id) => `/api/caches/${enc(cache)}/thumb/${id}`;
export const originalURL = (cache, id) => `/api/caches/${enc(cache)}/image/${id}`;

// image cache: url -> Promise<HTMLImageElement>
const imgCache = new Map();
export function loadImage(url) {
  let p = imgCache.get(url);
  if (p) return p;
  p = new Promise((resolve, reject) => {
    const im = new Image();
    im.decoding = "async";
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error(`cannot load ${url}`));
    im.src = url;
  });
  imgCache.set(url, p);
  p.catch(() => imgCache.delete(url));
  if (imgCache.size > 3000) imgCache.delete(imgCache.keys().next().value);
  return p;
}

/** Ids of `cache` whose thumbnails the image cache holds (searches send them as `known`, and
 * the server leaves those out of its inline thumbnails); the latest `max`. */
export function knownThumbs(cache, max = 1000) {
  const prefix = thumbURL(cache, "");
  const ids = [];
  for (const url of imgCache.keys()) {
    if (!url.startsWith(prefix)) continue;
    const id = Number(url.slice(prefix.length));
    if (Number.isInteger(id) && id >= 0) ids.push(id);
  }
  return ids.slice(-max);
}

/** Thumbnails the server sent inline (base64 JPEG) go straight into the image cache. */
export function primeThumbs(cache, thumbs) {
  if (!thumbs) return;
  for (const [id, b64] of Object.entries(thumbs)) {
    const url = thumbURL(cache, id);
    if (imgCache.has(url)) continue;
    const p = new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = () => reject(new Error(`bad thumbnail ${id}`));
      im.src = `data:image/jpeg;base64,${b64}`;
    });
    imgCache.set(url, p);
    p.catch(() => imgCache.delete(url));
  }
}

// -- server jobs --------------------------------------------------------------------------------
/** "12 % · 3 s": how far a running job is. */
export const jobProgress = (j) => `${(100 * j.progress).toFixed(0)} % · ${j.seconds.toFixed(0)} s`;

/** Fill a progress bar (its <i> is the bar, its <span> the text); no bar, nothing to do. */
export function showProgress(bar, fraction, text) {
  if (!bar) return;
  $("i", bar).style.width = `${(100 * fraction).toFixed(0)}%`;
  $("span", bar).textContent = text;
}

/** Follow server job `job`: poll it (first after `first` ms, then every `every` ms) while
 * `current()` holds; at each poll that finds it running, "`text`… 12 % · 3 s" in element `info`
 * and the progress in bar `bar` (selectors); `ended(j)` once it is done or failed. The pending
 * timer lives in `owner.poll` (cleared first: a new job replaces the one followed before). */
export function followJob(job, owner, { current, info, bar, text, ended, first, every }) {
  clearTimeout(owner.poll);
  const tick = async () => {
    let j;
    try { j = await api(`/api/jobs/${job}`); } catch (e) { reportError(e); return; }
    if (!current()) return;
    if (j.status === "running") {
      $(info).textContent = `${text}… ${jobProgress(j)}`;
      showProgress($(bar), j.progress, jobProgress(j));
      owner.poll = setTimeout(tick, every);
      return;
    }
    ended(j);
  };
  owner.poll = setTimeout(tick, first);
}

// -- toast / status -----------------------------------------------------------------------------
let toastTimer;
export function toast(msg, kind = "error") {
  const t = $("#toast");
  t.textContent = msg;
  t.className = `toast ${kind === "error" ? "" : "info"}`;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), kind === "error" ? 7000 : 2500);
}
// The spinner appears only once a task has run for SPIN_AFTER ms: a quick search shows none (its
// animation would repaint the page every frame, and on a 2-core laptop those frames take CPU
// from the search the page is waiting for).
const SPIN_AFTER = 400;
let spinTimer;
export function status(text, busy = false) {
  const s = $("#status");
  s.textContent = text;
  clearTimeout(spinTimer);
  s.classList.remove("busy");
  if (busy) spinTimer = setTimeout(() => s.classList.add("busy"), SPIN_AFTER);
}
export function reportError(e) {
  if (e && e.name === "AbortError") return;
  console.warn(e);
  toast(e.message || String(e));
}
