// brush.js — a soft-mask brush for a <canvas> laid exactly over an image.
//
// Standalone ES module (no dependencies, no server): used by the vfsearch web app and by the
// Jupyter widget. The mask lives in a Uint8ClampedArray at "mask resolution" (the image's
// aspect ratio, longest side ≤ maxMaskSide); painting takes the max of soft round stamps, so a
// stroke's edge stays soft however often it is painted over; erasing takes the min.
//
//   import { Brush } from "./brush.js";
//   const brush = new Brush(canvas, { size: 40, hardness: 0.4 });
//   brush.setImageSize(img.naturalWidth, img.naturalHeight);
//   brush.setGrid({ rows: 7, cols: 7, crop: [x0, y0, x1, y1] });   // optional, image pixels
//   brush.addEventListener("commit", (e) => search(brush.getMask()));
//
// Events (CustomEvent on the Brush itself): "change" (mask changed, also mid-stroke),
// "commit" (an edit finished: detail.reason = stroke | box | undo | redo | clear | invert |
// fill | set), "toolchange", "history" (undo/redo availability changed).

const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);
const smoothstep = (e0, e1, x) => {
  const t = clamp((x - e0) / (e1 - e0), 0, 1);
  return t * t * (3 - 2 * t);
};

function hexToRgb(hex) {
  const h = hex.replace("#", "");
  const v = h.length === 3 ? h.split("").map((c) => c + c).join("") : h;
  return [parseInt(v.slice(0, 2), 16), parseInt(v.slice(2, 4), 16), parseInt(v.slice(4, 6), 16)];
}

function makeCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

export const DEFAULTS = {
  size: 36, // brush diameter in CSS pixels of the displayed canvas
  hardness: 0.35, // 0 = all soft edge, 1 = hard disc
  tool: "paint", // paint | erase | box
  tint: "#ff5a1f",
  tintAlpha: 0.5,
  maxMaskSide: 512,
  maxUndo: 40,
  showGrid: true,
  gridColor: "rgba(255,255,255,0.55)",
  gridShadow: "rgba(0,0,0,0.35)",
  shadeOutsideCrop: true,
  readOnly: false,
};

export class Brush extends EventTarget {
  constructor(canvas, options = {}) {
    super();
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.opts = { ...DEFAULTS, ...options };
    this.tool = this.opts.tool;
    this.size = this.opts.size;
    this.hardness = this.opts.hardness;
    this.imageW = 0;
    this.imageH = 0;
    this.w = 0; // mask resolution
    this.h = 0;
    this.mask = new Uint8ClampedArray(0);
    this.grid = null;
    this.showGrid = this.opts.showGrid;
    this._undo = [];
    this._redo = [];
    this._stroke = null;
    this._hover = null;
    this._box = null;
    this._raf = 0;
    this._tint = null;
    this._tintCtx = null;
    this._rgb = hexToRgb(this.opts.tint);
    this._onDown = this._onDown.bind(this);
    this._onMove = this._onMove.bind(this);
    this._onUp = this._onUp.bind(this);
    this._onLeave = this._onLeave.bind(this);
    canvas.style.touchAction = "none";
    canvas.addEventListener("pointerdown", this._onDown);
    canvas.addEventListener("pointermove", this._onMove);
    canvas.addEventListener("pointerup", this._onUp);
    canvas.addEventListener("pointercancel", this._onUp);
    canvas.addEventListener("pointerleave", this._onLeave);
    if (typeof ResizeObserver !== "undefined") {
      this._ro = new ResizeObserver(() => this.resize());
      this._ro.observe(canvas);
    }
    this.resize();
  }

  destroy() {
    const c = this.canvas;
    c.removeEventListener("pointerdown", this._onDown);
    c.removeEventListener("pointermove", this._onMove);
    c.removeEventListener("pointerup", this._onUp);
    c.removeEventListener("pointercancel", this._onUp);
    c.removeEventListener("pointerleave", this._onLeave);
    if (this._ro) this._ro.disconnect();
    cancelAnimationFrame(this._raf);
  }

  // -- setup ---------------------------------------------------------------------------------
  /** Natural size of the image under the canvas; resets the mask (and the undo history). */
  setImageSize(width, height) {
    this.imageW = width;
    this.imageH = height;
    const s = Math.min(1, this.opts.maxMaskSide / Math.max(width, height));
    // keep at least 48 px on the short side (aspect error ≤ 1 %) when the image allows
    const minScale = Math.min(1, 48 / Math.min(width, height));
    const scale = Math.max(s, minScale);
    this.w = Math.max(1, Math.round(width * scale));
    this.h = Math.max(1, Math.round(height * scale));
    this.mask = new Uint8ClampedArray(this.w * this.h);
    this._tint = makeCanvas(this.w, this.h);
    this._tintCtx = this._tint.getContext("2d");
    this._tintData = this._tintCtx.createImageData(this.w, this.h);
    this._undo = [];
    this._redo = [];
    this._emit("history");
    this._syncTint(0, 0, this.w, this.h);
    this.resize();
  }

  /** Draw the model's feature grid: rows × cols cells over crop = [x0, y0, x1, y1] (image px). */
  setGrid(grid) {
    this.grid = grid;
    this.render();
  }

  setShowGrid(on) {
    this.showGrid = !!on;
    this.render();
  }

  setTool(tool) {
    if (!["paint", "erase", "box"].includes(tool)) throw new Error(`unknown tool ${tool}`);
    this.tool = tool;
    this._emit("toolchange", { tool });
    this.render();
  }

  setSize(px) {
    this.size = clamp(+px, 1, 1000);
    this.render();
  }

  setHardness(h) {
    this.hardness = clamp(+h, 0, 1);
  }

  setTint(hex, alpha) {
    this._rgb = hexToRgb(hex);
    if (alpha != null) this.opts.tintAlpha = alpha;
    this._syncTint(0, 0, this.w, this.h);
    this.render();
  }

  /** Match the canvas backing store to its CSS size × devicePixelRatio. */
  resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    const W = Math.max(1, Math.round(r.width * dpr));
    const H = Math.max(1, Math.round(r.height * dpr));
    if (this.canvas.width !== W || this.canvas.height !== H) {
      this.canvas.width = W;
      this.canvas.height = H;
    }
    this.render();
  }

  // -- mask access ----------------------------------------------------------------------------
  isEmpty() {
    const m = this.mask;
    for (let i = 0; i < m.length; i++) if (m[i]) return false;
    return true;
  }

  /** {width, height, data: Uint8ClampedArray (0–255), imageWidth, imageHeight} */
  getMask() {
    return { width: this.w, height: this.h, data: this.mask.slice(), imageWidth: this.imageW, imageHeight: this.imageH };
  }

  /** Bounding box of the mask in image pixels [x0, y0, x1, y1], or null when empty. */
  bbox() {
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    const { w, h, mask } = this;
    for (let y = 0; y < h; y++) {
      const row = y * w;
      for (let x = 0; x < w; x++) {
        if (mask[row + x]) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          y1 = y;
        }
      }
    }
    if (x1 < 0) return null;
    const sx = this.imageW / w, sy = this.imageH / h;
    return [x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy];
  }

  /** The mask as a canvas (mask resolution): white with alpha = mask value. */
  toCanvas(color = "#ffffff") {
    const [r, g, b] = hexToRgb(color);
    const c = makeCanvas(this.w, this.h);
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(this.w, this.h);
    const d = img.data, m = this.mask;
    for (let i = 0, j = 0; i < m.length; i++, j += 4) {
      d[j] = r; d[j + 1] = g; d[j + 2] = b; d[j + 3] = m[i];
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  /** PNG (alpha = mask) as a base64 string without the data: prefix. */
  toPNGBase64() {
    return this.toCanvas().toDataURL("image/png").split(",")[1];
  }

  /** Replace the mask from values (0–255 or 0–1 floats) of any size (resampled bilinearly). */
  setMask(data, width, height, { commit = true, reason = "set" } = {}) {
    this._pushUndo();
    const float = !(data instanceof Uint8Array || data instanceof Uint8ClampedArray);
    const k = float ? 255 : 1;
    const { w, h } = this;
    const out = this.mask;
    for (let y = 0; y < h; y++) {
      const fy = clamp(((y + 0.5) * height) / h - 0.5, 0, height - 1);
      const y0 = Math.floor(fy), y1 = Math.min(height - 1, y0 + 1), ty = fy - y0;
      for (let x = 0; x < w; x++) {
        const fx = clamp(((x + 0.5) * width) / w - 0.5, 0, width - 1);
        const x0 = Math.floor(fx), x1 = Math.min(width - 1, x0 + 1), tx = fx - x0;
        const a = data[y0 * width + x0], b = data[y0 * width + x1];
        const c = data[y1 * width + x0], d = data[y1 * width + x1];
        out[y * w + x] = k * ((a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty);
      }
    }
    this._changed(0, 0, w, h, commit ? reason : null);
  }

  /** Replace the mask by drawing an image source's alpha through an affine map
   * (a, b, c, d, e, f as in CanvasRenderingContext2D.setTransform) from source pixels to
   * image pixels; pass clip = [x0, y0, x1, y1] (image px) to keep only that region. */
  setMaskFromSource(src, transform, { clip = null, commit = true } = {}) {
    const c = makeCanvas(this.w, this.h);
    const ctx = c.getContext("2d", { willReadFrequently: true });
    const sx = this.w / this.imageW, sy = this.h / this.imageH;
    ctx.scale(sx, sy);
    if (clip) {
      ctx.beginPath();
      ctx.rect(clip[0], clip[1], clip[2] - clip[0], clip[3] - clip[1]);
      ctx.clip();
    }
    ctx.transform(...transform);
    ctx.drawImage(src, 0, 0);
    const d = ctx.getImageData(0, 0, this.w, this.h).data;
    const vals = new Uint8ClampedArray(this.w * this.h);
    for (let i = 0; i < vals.length; i++) vals[i] = d[i * 4 + 3];
    this.setMask(vals, this.w, this.h, { commit, reason: "set" });
  }

  /** Fill a box given in image pixels (replaces the mask unless add = true). */
  setBox(x0, y0, x1, y1, { add = false, commit = true } = {}) {
    this._pushUndo();
    if (!add) this.mask.fill(0);
    const sx = this.w / this.imageW, sy = this.h / this.imageH;
    const a = clamp(Math.round(Math.min(x0, x1) * sx), 0, this.w), b = clamp(Math.round(Math.max(x0, x1) * sx), 0, this.w);
    const c = clamp(Math.round(Math.min(y0, y1) * sy), 0, this.h), d = clamp(Math.round(Math.max(y0, y1) * sy), 0, this.h);
    for (let y = c; y < d; y++) this.mask.fill(255, y * this.w + a, y * this.w + b);
    this._changed(0, 0, this.w, this.h, commit ? "box" : null);
  }

  clear({ commit = true } = {}) {
    this._pushUndo();
    this.mask.fill(0);
    this._changed(0, 0, this.w, this.h, commit ? "clear" : null);
  }

  fill({ commit = true } = {}) {
    this._pushUndo();
    this.mask.fill(255);
    this._changed(0, 0, this.w, this.h, commit ? "fill" : null);
  }

  invert({ commit = true } = {}) {
    this._pushUndo();
    const m = this.mask;
    for (let i = 0; i < m.length; i++) m[i] = 255 - m[i];
    this._changed(0, 0, this.w, this.h, commit ? "invert" : null);
  }

  canUndo() { return this._undo.length > 0; }
  canRedo() { return this._redo.length > 0; }

  undo() { return this._step(this._undo, this._redo, "undo"); }
  redo() { return this._step(this._redo, this._undo, "redo"); }

  /** Undo or redo: the latest mask of `from` becomes the mask, the current one goes on `to`. */
  _step(from, to, what) {
    if (!from.length) return false;
    to.push(this.mask);
    this.mask = from.pop();
    this._changed(0, 0, this.w, this.h, what, true);
    return true;
  }

  // -- coordinates -----------------------------------------------------------------------------
  /** Client (CSS) coordinates → mask pixels. */
  _toMask(ev) {
    const r = this.canvas.getBoundingClientRect();
    return [((ev.clientX - r.left) / r.width) * this.w, ((ev.clientY - r.top) / r.height) * this.h];
  }

  _radiusMask(pressure = 1) {
    const r = this.canvas.getBoundingClientRect();
    const perCss = this.w / Math.max(1, r.width);
    return Math.max(0.5, (this.size / 2) * perCss * pressure);
  }

  // -- painting ------------------------------------------------------------------------------
  _stamp(cx, cy, radius, erase) {
    const { w, h, mask } = this;
    const hard = this.hardness;
    const R = radius + 0.5;
    const x0 = Math.max(0, Math.floor(cx - R)), x1 = Math.min(w - 1, Math.ceil(cx + R));
    const y0 = Math.max(0, Math.floor(cy - R)), y1 = Math.min(h - 1, Math.ceil(cy + R));
    for (let y = y0; y <= y1; y++) {
      const dy = y + 0.5 - cy;
      const row = y * w;
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx;
        const t = Math.sqrt(dx * dx + dy * dy) / radius;
        if (t >= 1) continue;
        const v = 255 * (1 - smoothstep(hard, 1, t));
        const i = row + x;
        if (erase) {
          const e = 255 - v;
          if (e < mask[i]) mask[i] = e;
        } else if (v > mask[i]) mask[i] = v;
      }
    }
    return [x0, y0, x1 + 1, y1 + 1];
  }

  _segment(p, q, erase) {
    const dx = q[0] - p[0], dy = q[1] - p[1];
    const dist = Math.hypot(dx, dy);
    const r0 = p[2], r1 = q[2];
    const step = Math.max(0.5, Math.min(r0, r1) * 0.25);
    const n = Math.max(1, Math.ceil(dist / step));
    let box = null;
    for (let i = 1; i <= n; i++) {
      const t = i / n;
      const b = this._stamp(p[0] + dx * t, p[1] + dy * t, r0 + (r1 - r0) * t, erase);
      box = box ? [Math.min(box[0], b[0]), Math.min(box[1], b[1]), Math.max(box[2], b[2]), Math.max(box[3], b[3])] : b;
    }
    return box;
  }

  _onDown(ev) {
    if (this.opts.readOnly || !this.w || (ev.pointerType === "mouse" && ev.button !== 0)) return;
    ev.preventDefault();
    try { this.canvas.setPointerCapture(ev.pointerId); } catch (_) { /* synthetic events */ }
    const [x, y] = this._toMask(ev);
    this._pushUndo();
    if (this.tool === "box") {
      this._box = { x0: x, y0: y, x1: x, y1: y, add: ev.shiftKey, id: ev.pointerId };
      this.render();
      return;
    }
    const erase = this.tool === "erase" || (ev.pointerType === "pen" && (ev.buttons & 32));
    const pr = ev.pointerType === "pen" && ev.pressure > 0 ? 0.35 + 0.65 * ev.pressure : 1;
    const p = [x, y, this._radiusMask(pr)];
    this._stroke = { last: p, erase, id: ev.pointerId, changed: true };
    const b = this._stamp(p[0], p[1], p[2], erase);
    this._changed(...b, null);
  }

  _onMove(ev) {
    const r = this.canvas.getBoundingClientRect();
    this._hover = [ev.clientX - r.left, ev.clientY - r.top];
    if (this._box && ev.pointerId === this._box.id) {
      const [x, y] = this._toMask(ev);
      this._box.x1 = x;
      this._box.y1 = y;
      this.render();
      return;
    }
    const s = this._stroke;
    if (!s || ev.pointerId !== s.id) {
      this.render();
      return;
    }
    const events = typeof ev.getCoalescedEvents === "function" ? ev.getCoalescedEvents() : [];
    let box = null;
    for (const e of events.length ? events : [ev]) {
      const [x, y] = this._toMask(e);
      const pr = e.pointerType === "pen" && e.pressure > 0 ? 0.35 + 0.65 * e.pressure : 1;
      const q = [x, y, this._radiusMask(pr)];
      const b = this._segment(s.last, q, s.erase);
      s.last = q;
      box = box ? [Math.min(box[0], b[0]), Math.min(box[1], b[1]), Math.max(box[2], b[2]), Math.max(box[3], b[3])] : b;
    }
    if (box) this._changed(...box, null);
  }

  _onUp(ev) {
    if (this._box && ev.pointerId === this._box.id) {
      const b = this._box;
      this._box = null;
      const sx = this.imageW / this.w, sy = this.imageH / this.h;
      const x0 = Math.min(b.x0, b.x1), x1 = Math.max(b.x0, b.x1);
      const y0 = Math.min(b.y0, b.y1), y1 = Math.max(b.y0, b.y1);
      if (x1 - x0 < 1 || y1 - y0 < 1) {
        this._undo.pop();
        this.render();
        return;
      }
      if (!b.add) this.mask.fill(0);
      const a = clamp(Math.round(x0), 0, this.w), bb = clamp(Math.round(x1), 0, this.w);
      const c = clamp(Math.round(y0), 0, this.h), d = clamp(Math.round(y1), 0, this.h);
      for (let y = c; y < d; y++) this.mask.fill(255, y * this.w + a, y * this.w + bb);
      this.lastBox = [x0 * sx, y0 * sy, x1 * sx, y1 * sy];
      this.lastBoxAdded = !!b.add;
      this._changed(0, 0, this.w, this.h, "box");
      return;
    }
    const s = this._stroke;
    if (!s || ev.pointerId !== s.id) return;
    this._stroke = null;
    this._redo = [];
    this._emit("history");
    this._emit("commit", { reason: "stroke" });
  }

  _onLeave() {
    this._hover = null;
    this.render();
  }

  _pushUndo() {
    this._undo.push(this.mask.slice());
    if (this._undo.length > this.opts.maxUndo) this._undo.shift();
    this._redo = [];
    this._emit("history");
  }

  _changed(x0, y0, x1, y1, reason, keepRedo = false) {
    this._syncTint(x0, y0, x1, y1);
    this.render();
    this._emit("change");
    if (keepRedo) this._emit("history");
    if (reason) this._emit("commit", { reason });
  }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // the displayed mask: tint with alpha ∝ value, plus a light contour where it crosses 1/2
  _syncTint(x0, y0, x1, y1) {
    if (!this._tintCtx) return;
    const E = 2; // contour half-width (mask pixels)
    x0 = clamp(Math.floor(x0) - E, 0, this.w);
    y0 = clamp(Math.floor(y0) - E, 0, this.h);
    x1 = clamp(Math.ceil(x1) + E, 0, this.w);
    y1 = clamp(Math.ceil(y1) + E, 0, this.h);
    if (x1 <= x0 || y1 <= y0) return;
    const d = this._tintData.data, m = this.mask, w = this.w, h = this.h;
    const [r, g, b] = this._rgb;
    const a = this.opts.tintAlpha;
    const off = (x, y) => x < 0 || y < 0 || x >= w || y >= h || m[y * w + x] < 128;
    for (let y = y0; y < y1; y++) {
      for (let x = x0, i = y * w + x0, j = i * 4; x < x1; x++, i++, j += 4) {
        const v = m[i];
        let edge = false;
        if (v >= 128) {
          for (let k = 1; k <= E && !edge; k++) edge = off(x - k, y) || off(x + k, y) || off(x, y - k) || off(x, y + k);
        }
        if (edge) {
          d[j] = 255; d[j + 1] = 255; d[j + 2] = 255; d[j + 3] = 235;
        } else {
          d[j] = r; d[j + 1] = g; d[j + 2] = b; d[j + 3] = v * a;
        }
      }
    }
    this._tintCtx.putImageData(this._tintData, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  // -- drawing ---------------------------------------------------------------------------------
  render() {
    if (this._raf) return;
    this._raf = requestAnimationFrame(() => {
      this._raf = 0;
      this._draw();
    });
  }

  /** Draw now (the next animation frame is not awaited). */
  renderNow() {
    cancelAnimationFrame(this._raf);
    this._raf = 0;
    this._draw();
  }

  _draw() {
    const { ctx, canvas } = this;
    const W = canvas.width, H = canvas.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (!this.w) return;
    const kx = W / this.imageW, ky = H / this.imageH;
    const g = this.grid;
    if (g && g.crop && this.opts.shadeOutsideCrop) {
      const [cx0, cy0, cx1, cy1] = g.crop;
      ctx.fillStyle = "rgba(10,12,20,0.45)";
      ctx.beginPath();
      ctx.rect(0, 0, W, H);
      ctx.rect(cx0 * kx, cy0 * ky, (cx1 - cx0) * kx, (cy1 - cy0) * ky);
      ctx.fill("evenodd");
    }
    if (this._tint) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this._tint, 0, 0, W, H);
    }
    if (g && this.showGrid && g.rows && g.cols && g.crop) {
      const [cx0, cy0, cx1, cy1] = g.crop;
      const X0 = cx0 * kx, Y0 = cy0 * ky, X1 = cx1 * kx, Y1 = cy1 * ky;
      const dpr = window.devicePixelRatio || 1;
      ctx.beginPath();
      for (let i = 0; i <= g.cols; i++) {
        const x = Math.round(X0 + ((X1 - X0) * i) / g.cols) + 0.5;
        ctx.moveTo(x, Y0);
        ctx.lineTo(x, Y1);
      }
      for (let j = 0; j <= g.rows; j++) {
        const y = Math.round(Y0 + ((Y1 - Y0) * j) / g.rows) + 0.5;
        ctx.moveTo(X0, y);
        ctx.lineTo(X1, y);
      }
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = this.opts.gridShadow;
      ctx.stroke();
      ctx.lineWidth = dpr;
      ctx.strokeStyle = this.opts.gridColor;
      ctx.stroke();
    }
    if (this._box) {
      const b = this._box;
      const sx = W / this.w, sy = H / this.h;
      const x = Math.min(b.x0, b.x1) * sx, y = Math.min(b.y0, b.y1) * sy;
      const w = Math.abs(b.x1 - b.x0) * sx, h = Math.abs(b.y1 - b.y0) * sy;
      ctx.fillStyle = `rgba(${this._rgb.join(",")},0.25)`;
      ctx.fillRect(x, y, w, h);
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 1.5 * (window.devicePixelRatio || 1);
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(x, y, w, h);
      ctx.setLineDash([]);
    }
    if (this._hover && this.tool !== "box" && !this.opts.readOnly) {
      const dpr = window.devicePixelRatio || 1;
      const [hx, hy] = this._hover;
      const r = (this.size / 2) * dpr;
      ctx.beginPath();
      ctx.arc(hx * dpr, hy * dpr, r, 0, Math.PI * 2);
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = "rgba(0,0,0,0.45)";
      ctx.stroke();
      ctx.lineWidth = 1.25 * dpr;
      ctx.strokeStyle = this.tool === "erase" ? "#7dd3fc" : "#fff";
      ctx.stroke();
      if (this.hardness < 1) {
        ctx.beginPath();
        ctx.arc(hx * dpr, hy * dpr, r * this.hardness, 0, Math.PI * 2);
        ctx.setLineDash([3 * dpr, 3 * dpr]);
        ctx.lineWidth = dpr;
        ctx.stroke();
        ctx.setLineDash([]);
      }
    }
  }
}

// -- compact mask encoding (share URLs) ------------------------------------------------------
// "<w>.<h>.<runs>": 16 levels, each run = a letter A–P (level) + its length in base 36
// (omitted when 1). The mask is downsampled to at most maxSide on its longest side first.

export function encodeMask(data, width, height, maxSide = 64) {
  const s = Math.min(1, maxSide / Math.max(width, height));
  const w = Math.max(1, Math.round(width * s)), h = Math.max(1, Math.round(height * s));
  const float = !(data instanceof Uint8Array || data instanceof Uint8ClampedArray);
  const k = float ? 1 : 1 / 255;
  const q = new Uint8Array(w * h);
  // area average
  for (let y = 0; y < h; y++) {
    const ya = Math.floor((y * height) / h), yb = Math.max(ya + 1, Math.floor(((y + 1) * height) / h));
    for (let x = 0; x < w; x++) {
      const xa = Math.floor((x * width) / w), xb = Math.max(xa + 1, Math.floor(((x + 1) * width) / w));
      let sum = 0, n = 0;
      for (let yy = ya; yy < yb; yy++) for (let xx = xa; xx < xb; xx++) { sum += data[yy * width + xx]; n++; }
      const v = (sum / n) * k;
      q[y * w + x] = v > 0 ? Math.max(1, Math.round(v * 15)) : 0;
    }
  }
  let out = "";
  for (let i = 0; i < q.length;) {
    let j = i;
    while (j < q.length && q[j] === q[i]) j++;
    const run = j - i;
    out += String.fromCharCode(65 + q[i]) + (run === 1 ? "" : run.toString(36));
    i = j;
  }
  return `${w}.${h}.${out}`;
}

export function decodeMask(text) {
  const parts = String(text).split(".");
  if (parts.length < 3) throw new Error("bad mask encoding");
  const w = parseInt(parts[0], 10), h = parseInt(parts[1], 10);
  const runs = parts.slice(2).join(".");
  if (!(w > 0 && h > 0 && w * h <= 1 << 22)) throw new Error("bad mask size");
  const data = new Float32Array(w * h);
  const re = /([A-P])([0-9a-z]*)/g;
  let pos = 0, m, consumed = 0;
  while ((m = re.exec(runs)) && m.index === consumed) {
    consumed = re.lastIndex;
    const level = m[1].charCodeAt(0) - 65;
    const run = m[2] ? parseInt(m[2], 36) : 1;
    if (pos + run > w * h) throw new Error("bad mask encoding");
    data.fill(level / 15, pos, pos + run);
    pos += run;
  }
  if (pos !== w * h || consumed !== runs.length) throw new Error("bad mask encoding");
  return { width: w, height: h, data };
}
