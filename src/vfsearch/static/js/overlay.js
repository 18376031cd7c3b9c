// Match overlays: one result (thumbnail + the query's region carried onto it, or its heat map)
// drawn into a canvas. Used by the result grid, the rank strip and the large view.
import { clamp, dpr, cmap, fitRect } from "./util.js";
import { carryTransform, inputRect } from "./geometry.js";

const SHADE = "rgba(8,10,18,0.58)";
const INV_PAD = 2;
/** The mask's inverse as shade (alpha 0.58·(1 − m)), padded with full shade (cached). */
function inverseMask(mask, small) {
  const key = small ? "_invSmall" : "_invBig";
  if (mask[key]) return mask[key];
  const src = small ? mask.small : mask.canvas;
  const c = document.createElement("canvas");
  c.width = src.width + 2 * INV_PAD;
  c.height = src.height + 2 * INV_PAD;
  const g = c.getContext("2d");
  g.fillStyle = SHADE;
  g.fillRect(0, 0, c.width, c.height);
  g.globalCompositeOperation = "destination-out";
  g.drawImage(src, INV_PAD, INV_PAD);
  mask[key] = { canvas: c, srcW: src.width, srcH: src.height };
  return mask[key];
}

export function drawResult(canvas, img, m, ctx, mode, heat, { cssSize = null, outline = true } = {}) {
  const W0 = cssSize ? cssSize[0] : canvas.clientWidth || 140;
  const H0 = cssSize ? cssSize[1] : canvas.clientHeight || W0;
  const W = Math.max(1, Math.round(W0 * dpr())), H = Math.max(1, Math.round(H0 * dpr()));
  if (canvas.width !== W) canvas.width = W;
  if (canvas.height !== H) canvas.height = H;
  const g = canvas.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, W, H);
  const R0 = fitRect(m.image_size[0], m.image_size[1], W, H);
  const x = Math.round(R0.x), y = Math.round(R0.y);  // whole pixels: no light edge lines
  const R = { x, y, w: Math.round(R0.x + R0.w) - x, h: Math.round(R0.y + R0.h) - y };
  if (img) {
    g.imageSmoothingQuality = R.w < img.naturalWidth * 0.6 ? "high" : "low";
    g.drawImage(img, R.x, R.y, R.w, R.h);
  }
  if (mode === "none" || !ctx) return R;
  const kx = R.w / m.image_size[0], ky = R.h / m.image_size[1];
  const crop = m.geometry.crop;
  if (mode === "heat" && heat) {
    // heat per grid cell: the best score of any window (position of the query's box) that
    // covers the cell, so the hot block is where the match is, at the grid's resolution (a global
    // query's maps are per-cell shares of the score: windows of 1 × 1, the heat response says so)
    const A = heat.length, B = heat[0].length;
    const [, , h, w] = ctx.heatBox || ctx.query.cell_box;
    const Hg = A + h - 1, Wg = B + w - 1;  // this image's grid (its own in a full-mode cache)
    const cell = new Float32Array(Hg * Wg).fill(-Infinity);
    for (let a = 0; a < A; a++)
      for (let b = 0; b < B; b++) {
        const v = heat[a][b];
        for (let r = a; r < a + h; r++)
          for (let c = b; c < b + w; c++) if (v > cell[r * Wg + c]) cell[r * Wg + c] = v;
      }
    // colour: position within this image (its own min..max); strength: its score vs. the top
    let lo = Infinity, hi = -Infinity;
    for (const v of cell) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi - lo > 1e-6 ? hi - lo : 1;
    const strength = clamp(0.5 + 0.5 * (hi / (ctx.top || 1)), 0.5, 1);
    const off = document.createElement("canvas");
    off.width = Wg;
    off.height = Hg;
    const o = off.getContext("2d");
    const id = o.createImageData(Wg, Hg);
    for (let i = 0; i < cell.length; i++) {
      const t = hi > lo ? clamp((cell[i] - lo) / span, 0, 1) : 1;
      const [r, gg, bb] = cmap(0.1 + 0.9 * t);
      const j = i * 4;
      id.data[j] = r; id.data[j + 1] = gg; id.data[j + 2] = bb; id.data[j + 3] = 255 * strength * (0.1 + 0.65 * Math.pow(t, 1.4));
    }
    o.putImageData(id, 0, 0);
    g.save();
    g.fillStyle = "rgba(8,10,18,0.4)";
    g.fillRect(R.x, R.y, R.w, R.h);
    const [X0, Y0, X1, Y1] = inputRect(m.geometry, R, kx, ky);
    g.beginPath();
    g.rect(R.x + crop[0] * kx, R.y + crop[1] * ky, (crop[2] - crop[0]) * kx, (crop[3] - crop[1]) * ky);
    g.clip();
    g.imageSmoothingEnabled = true;
    g.imageSmoothingQuality = "medium";
    g.drawImage(off, X0, Y0, X1 - X0, Y1 - Y0);
    g.restore();
  } else if (ctx.mask) {
    // shade the image except where the query's mask lands: R minus the mask's rectangle is
    // filled directly, the rectangle gets the mask's (pre-rendered, padded) inverse
    const { t, clip } = carryTransform(ctx, m, R);
    const useSmall = ctx.mask.small && Math.abs(t[0]) * ctx.mask.width < 2 * ctx.mask.small.width;
    const inv = inverseMask(ctx.mask, useSmall);
    const fx = ctx.mask.width / inv.srcW, fy = ctx.mask.height / inv.srcH;
    const a = t[0] * fx, d = t[3] * fy;
    // pixel-aligned, so the fill's hole and the clip share their edges exactly (no seams)
    const hx0 = Math.round(Math.max(t[4], clip[0])), hy0 = Math.round(Math.max(t[5], clip[1]));
    const hx1 = Math.round(Math.min(t[4] + t[0] * ctx.mask.width, clip[2])), hy1 = Math.round(Math.min(t[5] + t[3] * ctx.mask.height, clip[3]));
    g.fillStyle = SHADE;
    g.beginPath();
    g.rect(R.x, R.y, R.w, R.h);
    if (hx1 > hx0 && hy1 > hy0) {
      g.rect(hx0, hy0, hx1 - hx0, hy1 - hy0);
      g.fill("evenodd");
      g.save();
      g.beginPath();
      g.rect(hx0, hy0, hx1 - hx0, hy1 - hy0);
      g.clip();
      g.setTransform(a, 0, 0, d, t[4] - a * INV_PAD, t[5] - d * INV_PAD);
      g.imageSmoothingEnabled = true;
      g.drawImage(inv.canvas, 0, 0);
      g.restore();
    } else g.fill();
  }
  // a whole-image query (similar images, rigid) matches the whole view: no box to outline
  if (outline && m.box && (ctx.query.mode || "region") === "region") {
    const [x0, y0, x1, y1] = m.box;
    const lw = Math.max(1, 1.25 * dpr());
    g.lineWidth = lw * 2.2;
    g.strokeStyle = "rgba(0,0,0,0.45)";
    g.strokeRect(R.x + x0 * kx, R.y + y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky);
    g.lineWidth = lw;
    g.strokeStyle = mode === "heat" ? "#ffffff" : "#ffb020";
    g.strokeRect(R.x + x0 * kx, R.y + y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky);
  }
  return R;
}
