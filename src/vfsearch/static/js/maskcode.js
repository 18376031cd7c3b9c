// Lossless mask codes for share links: the brush's 8-bit mask exactly as it was searched (the page
// sends that mask as a PNG, so a link that restores it byte for byte reproduces the search bit for
// bit). brush.js's encodeMask (16 levels, downsampled) stays for the widget and old links.
//
//   "<W>.<H>.<x0>.<y0>.<w>.<h>.<codec><data>"
//
// W × H: the mask's size (the brush's mask resolution); x0, y0, w, h: the bounding box of its
// non-zero values (0 outside; an empty mask has w = h = 0); data: the box's bytes row by row, each
// as its residual from the gradient prediction clamp(left + up − up-left, 0, 255) (mod 256: smooth
// brush edges become runs of small numbers), then deflated ("z", CompressionStream deflate-raw) or
// as they are ("r", where the browser cannot deflate), in base64url without padding.

const MAX_PIXELS = 1 << 22;

function b64url(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64url(text) {
  const bin = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function pipe(bytes, stream) {
  return new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(stream)).arrayBuffer());
}

const pred = (a, b, c) => { const p = a + b - c; return p < 0 ? 0 : p > 255 ? 255 : p; };

/** {data (0–255), width, height} → the link text (async: deflate runs as a stream). */
export async function encodeMaskExact({ data, width: W, height: H }) {
  let x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (let y = 0; y < H; y++)
    for (let x = 0, row = y * W; x < W; x++)
      if (data[row + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
  if (x1 < 0) return `${W}.${H}.0.0.0.0.r`;
  const w = x1 - x0 + 1, h = y1 - y0 + 1;
  const res = new Uint8Array(w * h);
  const at = (x, y) => (x < 0 || y < 0 ? 0 : data[(y0 + y) * W + x0 + x]);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) res[y * w + x] = (at(x, y) - pred(at(x - 1, y), at(x, y - 1), at(x - 1, y - 1))) & 255;
  const head = `${W}.${H}.${x0}.${y0}.${w}.${h}.`;
  if (typeof CompressionStream === "undefined") return head + "r" + b64url(res);
  return head + "z" + b64url(await pipe(res, new CompressionStream("deflate-raw")));
}

/** The link text → {data: Uint8ClampedArray, width, height}; throws on anything malformed. */
export async function decodeMaskExact(text) {
  const parts = String(text).split(".");
  const bad = (why) => new Error(`the link's mask cannot be read (${why})`);
  if (parts.length !== 7) throw bad("format");
  const [W, H, x0, y0, w, h] = parts.slice(0, 6).map((v) => (/^\d+$/.test(v) ? parseInt(v, 10) : NaN));
  if (![W, H, x0, y0, w, h].every(Number.isFinite) || !(W > 0 && H > 0 && W * H <= MAX_PIXELS)) throw bad("size");
  if (x0 + w > W || y0 + h > H) throw bad("box");
  const codec = parts[6][0], body = parts[6].slice(1);
  const data = new Uint8ClampedArray(W * H);
  if (!w || !h) return { data, width: W, height: H };
  let res;
  try {
    res = unb64url(body);
    if (codec === "z") {
      if (typeof DecompressionStream === "undefined") throw bad("this browser cannot inflate it");
      res = await pipe(res, new DecompressionStream("deflate-raw"));
    } else if (codec !== "r") throw bad("codec");
  } catch (e) {
    throw e.message && e.message.startsWith("the link") ? e : bad("data");
  }
  if (res.length !== w * h) throw bad("length");
  const at = (x, y) => (x < 0 || y < 0 ? 0 : data[(y0 + y) * W + x0 + x]);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) data[(y0 + y) * W + x0 + x] = (res[y * w + x] + pred(at(x - 1, y), at(x, y - 1), at(x - 1, y - 1))) & 255;
  return { data, width: W, height: H };
}

/** A 32-bit FNV-1a hash of a mask (its size and every value): history entries of the same mask. */
export function maskHash({ data, width, height }) {
  let h = 0x811c9dc5 ^ width ^ (height << 16);
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 0x01000193);
  return (h >>> 0).toString(36);
}
