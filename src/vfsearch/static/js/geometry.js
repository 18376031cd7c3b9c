// Geometry, from the server's data only (the browser never recomputes it; vfsearch.geometry does):
// - an image's `geometry` (the model's view of it: sx, sy, left, top, size, crop) comes with the
//   image record (per cache for uploads, whose transform differs by cache), every search's query
//   and every match;
// - each match's `carry` = {matrix: [a, 0, 0, d, e, f], clip: [x0, y0, x1, y1]} maps query-image
//   pixels → result-image pixels (and clips to where the query's model view lands in the result).
// This module turns those into canvas maps.

/** The query's geometry under the transform of `cache` (the one that runs the search), from the
 * `geometries` ({cache name: geometry}) the server sent with the query image. */
export function queryGeometry(q, cache) {
  return q.geometries[cache];
}

/** Affine map: query-mask pixels → result canvas pixels (R = where the result image is drawn),
 * and the clip box on that canvas: {t: [a, 0, 0, d, e, f], clip: [x0, y0, x1, y1]}. */
export function carryTransform(ctx, m, R) {
  const { matrix, clip } = m.carry;
  const kx = R.w / m.image_size[0], ky = R.h / m.image_size[1];
  const [Wq, Hq] = ctx.query.image_size;
  const mw = ctx.mask.width, mh = ctx.mask.height;
  const a = kx * (Wq / mw) * matrix[0];
  const d = ky * (Hq / mh) * matrix[3];
  const e = R.x + kx * matrix[4], f = R.y + ky * matrix[5];
  return { t: [a, 0, 0, d, e, f], clip: [R.x + kx * clip[0], R.y + ky * clip[1], R.x + kx * clip[2], R.y + ky * clip[3]] };
}

/** Where geometry g's model input (input = [width, height]) lands on a canvas showing the image
 * at R with scale kx, ky (canvas px per image px): [X0, Y0, X1, Y1]. */
export function inputRect(g, R, kx, ky) {
  const [iw, ih] = g.input || [g.size, g.size];
  return [R.x + (kx * g.left) / g.sx, R.y + (ky * g.top) / g.sy, R.x + (kx * (iw + g.left)) / g.sx, R.y + (ky * (ih + g.top)) / g.sy];
}
