// vfsearch Jupyter widget (anywidget ESM): a HighlightWidget = image + brush canvas + toolbar.
//
// The brush is NOT bundled here: Python sends the text of vfsearch/static/brush.js (the web app's
// own module) in the `_brush_js` traitlet; it is imported once per page from a Blob URL.
// The mask goes back to Python as binary: raw uint8 (mask_width × mask_height) in `mask_data`.

const _modules = new Map(); // brush.js text -> Promise<module>

function loadBrush(source) {
  if (!_modules.has(source)) {
    const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    _modules.set(source, import(/* webpackIgnore: true */ url));
  }
  return _modules.get(source);
}

function toBytes(v) {
  if (!v) return new Uint8Array(0);
  if (v instanceof Uint8Array) return v;
  if (v instanceof DataView) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (v.buffer instanceof ArrayBuffer) return new Uint8Array(v.buffer, v.byteOffset || 0, v.byteLength);
  return new Uint8Array(0);
}

const CSS = `
.vfs-hw { display: inline-flex; flex-direction: column; gap: 4px; font: 12px sans-serif; }
.vfs-hw .vfs-bar { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.vfs-hw button { padding: 2px 8px; border: 1px solid #aaa; border-radius: 3px; background: #f4f4f4; cursor: pointer; }
.vfs-hw button.on { background: #ff5a1f; color: #fff; border-color: #d94a15; }
.vfs-hw button:disabled { opacity: .45; cursor: default; }
.vfs-hw .vfs-stage { position: relative; line-height: 0; user-select: none; }
.vfs-hw .vfs-stage img { display: block; width: 100%; height: auto; pointer-events: none; }
.vfs-hw .vfs-stage canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; cursor: crosshair; }
.vfs-hw .vfs-label { color: #444; }
`;

function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const k of kids) e.append(k);
  return e;
}

async function render({ model, el: root }) {
  const { Brush } = await loadBrush(model.get("_brush_js"));

  const style = el("style", { textContent: CSS });
  const label = el("div", { className: "vfs-label" });
  const paint = el("button", { textContent: "brush", title: "paint (B)" });
  const erase = el("button", { textContent: "erase", title: "erase (E)" });
  const size = el("input", { type: "range", min: 4, max: 160, title: "brush size" });
  const undo = el("button", { textContent: "undo" });
  const redo = el("button", { textContent: "redo" });
  const clear = el("button", { textContent: "clear" });
  const bar = el("div", { className: "vfs-bar" }, paint, erase, el("span", { textContent: "size" }), size, undo, redo, clear);
  const img = el("img", { alt: "" });
  const canvas = el("canvas");
  const stage = el("div", { className: "vfs-stage" }, img, canvas);
  const box = el("div", { className: "vfs-hw" }, style, label, bar, stage);
  root.append(box);

  const brush = new Brush(canvas, { size: model.get("size"), hardness: model.get("hardness") });
  let imgUrl = null;

  function sendMask() {
    const m = brush.getMask();
    model.set("mask_width", m.width);
    model.set("mask_height", m.height);
    model.set("mask_data", new DataView(m.data.buffer.slice(0)));
    model.save_changes();
  }

  function applyPythonMask() {
    const w = model.get("mask_width"), h = model.get("mask_height");
    const d = toBytes(model.get("mask_data"));
    if (!brush.w || !w || !h || d.length !== w * h) return;
    brush.setMask(Uint8Array.from(d), w, h, { commit: false });
  }

  function loadImage() {
    const bytes = toBytes(model.get("image_data"));
    if (imgUrl) URL.revokeObjectURL(imgUrl);
    imgUrl = bytes.length ? URL.createObjectURL(new Blob([bytes.slice()])) : null;
    img.onload = () => {
      brush.setImageSize(model.get("image_width") || img.naturalWidth, model.get("image_height") || img.naturalHeight);
      brush.resize();
      applyPythonMask();
      root.dataset.ready = "1";
    };
    if (imgUrl) img.src = imgUrl;
    else img.removeAttribute("src");
  }

  function syncUi() {
    stage.style.width = `${model.get("display_width")}px`;
    label.textContent = model.get("label");
    label.style.display = model.get("label") ? "" : "none";
    paint.classList.toggle("on", brush.tool === "paint");
    erase.classList.toggle("on", brush.tool === "erase");
    size.value = brush.size;
    undo.disabled = !brush.canUndo();
    redo.disabled = !brush.canRedo();
    brush.resize();
  }

  function setTool(t) {
    brush.setTool(t);
    model.set("tool", t);
    model.save_changes();
  }

  paint.onclick = () => setTool("paint");
  erase.onclick = () => setTool("erase");
  size.oninput = () => {
    brush.setSize(+size.value);
    model.set("size", +size.value);
    model.save_changes();
  };
  undo.onclick = () => brush.undo();
  redo.onclick = () => brush.redo();
  clear.onclick = () => brush.clear();

  brush.addEventListener("commit", sendMask);
  brush.addEventListener("history", syncUi);
  brush.addEventListener("toolchange", syncUi);

  // model change → handler; registered here, removed again when the view goes away
  const handlers = [
    ["change:image_data", () => loadImage()],
    ["change:tool", () => { brush.setTool(model.get("tool")); syncUi(); }],
    ["change:size", () => { brush.setSize(model.get("size")); syncUi(); }],
    ["change:hardness", () => brush.setHardness(model.get("hardness"))],
    ["change:_mask_push", () => applyPythonMask()],
    ["change:display_width", syncUi],
    ["change:label", syncUi],
  ];
  for (const [event, fn] of handlers) model.on(event, fn);

  brush.setTool(model.get("tool"));
  syncUi();
  loadImage();

  return () => {
    for (const [event, fn] of handlers) model.off(event, fn);
    brush.destroy();
    if (imgUrl) URL.revokeObjectURL(imgUrl);
  };
}

export default { render };
