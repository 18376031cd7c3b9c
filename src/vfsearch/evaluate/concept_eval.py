"""The ``concepts`` protocol: how discovered concepts relate to the images' labels.

Four ways of grouping the same images into ``K`` clusters are compared (Plummer et al.'s comparison
of its patch discovery with full-frame clustering and random assignment):

* ``dictionary`` — :mod:`vfsearch.concepts` dictionary concepts (every cell assigned to its
  nearest direction);
* ``saliency`` — Plummer et al.'s saliency-based attribute discovery (clusters of salient crops; an
  image can carry several);
* ``fullframe`` — spherical k-means of the images' mean-pooled features (one cluster each);
* ``random`` — every image in a uniformly random cluster.

Two views of each: ``members`` — every membership (dictionary: each image's cells spread over
its concepts, weight 1 per image; saliency: each crop; full frame and random: each image) — and
``top`` — each concept's first ``n_patches`` patches, what a user browses (full frame: the images
nearest its centre; random: random members). Each view is a (concept × label) table of weights;
**purity** = Σ_k max_l T[k, l] / Σ T and **NMI** = I(K; L) / mean(H(K), H(L)). The 95 % CIs
resample the images (with replacement) 1000 times and recompute both from the table (percentile
interval, widened to contain the estimate, as :func:`~.metrics.bootstrap_ci` does). Both
statistics are biased upwards by resampling (a duplicated image agrees with itself), so an
interval often starts at the estimate; the resamples' mean is reported with it. Random
assignment shows how much purity and NMI a clustering of this size gets by chance.

This is not Plummer et al.'s Table 2, which scores attributes by insertion/deletion through a
trained attribute model (SANE): purity and NMI only ask how well the concepts follow the labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import EvalError
from .protocols import Log

__all__ = ["METHODS", "contingency", "nmi", "purity", "run_concepts_eval",
           "write_concepts_report"]

METHODS = ("dictionary", "saliency", "fullframe", "random")
#: variants for ablations (``methods=[..., "saliency:raw"]``)
_VARIANTS = {"saliency:raw": {"baseline": False}, "saliency:whole": {"search": "whole"},
             "dictionary:nmf": {"algorithm": "nmf"}}


def contingency(concept: np.ndarray, label: np.ndarray, weight: np.ndarray, k: int,
                n_labels: int) -> np.ndarray:
    return np.bincount(concept * n_labels + label, weights=weight,
                       minlength=k * n_labels).reshape(k, n_labels)


def purity(t: np.ndarray) -> float:
    s = t.sum()
    return float(t.max(axis=1).sum() / s) if s > 0 else float("nan")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi(t: np.ndarray) -> float:
    """Normalised mutual information (arithmetic-mean normalisation) of a contingency table."""
    s = t.sum()
    if s <= 0:
        return float("nan")
    p = t / s
    pk, pl = p.sum(1), p.sum(0)
    hk, hl = _entropy(pk), _entropy(pl)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pk, pl)[nz])).sum())
    denom = (hk + hl) / 2
    return mi / denom if denom > 0 else 0.0


def _boot(members: dict, lab: np.ndarray, n_img: int, k: int, n_labels: int, n_boot: int,
          seed: int) -> dict:
    """Purity and NMI of a membership list (image, concept, weight) with CIs that resample the
    images."""
    img, con, w = members["image"], members["concept"], members["weight"]
    t = contingency(con, lab[img], w, k, n_labels)
    out = {"purity": purity(t), "nmi": nmi(t), "members": int(len(img)),
           "images": int(len(np.unique(img)))}
    rng = np.random.default_rng(seed)
    ps, ns = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        mult = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img)
        tb = contingency(con, lab[img], w * mult[img], k, n_labels)
        ps[b], ns[b] = purity(tb), nmi(tb)
    for key, v in (("purity", ps), ("nmi", ns)):
        if n_boot:
            # percentile interval, widened to contain the estimate (as bootstrap_ci does):
            # resampling images with replacement inflates both statistics (a duplicated image
            # agrees with itself), so the resamples' mean is kept to show that bias
            q_lo, q_hi = np.quantile(v, [0.025, 0.975])
            out[key + "_lo"] = float(min(q_lo, out[key]))
            out[key + "_hi"] = float(max(q_hi, out[key]))
            out[key + "_boot_mean"] = float(v.mean())
        else:
            out[key + "_lo"] = out[key + "_hi"] = out[key]
    out["_boot"] = {"purity": ps, "nmi": ns}  # the resamples, for paired differences
    return out


def _differences(rows: list[dict], refs=("random", "fullframe")) -> list[dict]:
    """Paired differences (method − reference, same view) on the same resampled images: every
    method's resamples use one seed, so the resampling bias they share cancels."""
    out = []
    by = {(r["method"], r["view"]): r for r in rows}
    for (m, view), r in by.items():
        for ref in refs:
            b = by.get((ref, view))
            if b is None or ref == m or (ref == "fullframe" and m == "random"):
                continue
            d = {"method": m, "reference": ref, "view": view}
            for key in ("purity", "nmi"):
                est = r[key] - b[key]
                diff = r["_boot"][key] - b["_boot"][key]
                lo, hi = np.quantile(diff, [0.025, 0.975]) if len(diff) else (est, est)
                d[key] = est
                d[key + "_lo"], d[key + "_hi"] = float(min(lo, est)), float(max(hi, est))
            out.append(d)
    return out


def _members_top(cs, pos: np.ndarray) -> dict:
    """The ``top`` view of a concept set: one membership per listed patch."""
    k = np.repeat(np.arange(len(cs)), np.diff(cs.offsets))
    return {"image": pos[cs.patch_image], "concept": k,
            "weight": np.ones(len(k))}


def run_concepts_eval(cache, layer: str, *, n_concepts: int = 32, n_queries: int = 200,
                      n_patches: int = 32, seed: int = 0, n_boot: int = 1000,
                      labels: str | Path | None = None, column: str | None = None,
                      methods=METHODS, log: Log | None = None) -> dict:
    """The protocol on ``layer`` of ``cache`` (labels: the cache's, a metadata ``column``, or a
    CSV ``path,label`` file ``labels``)."""
    from ..concepts import discover
    from ..concepts.cluster import kmeans

    valid = np.flatnonzero(cache.valid)
    if len(valid) < 2:
        raise EvalError(f"{cache.path} has fewer than two indexed images")
    raw = _labels(cache, labels, column)
    keep = np.array([raw[i] != "" for i in valid])
    names = sorted(set(raw[valid[keep]].tolist()))
    if len(names) < 2:
        raise EvalError("the images need at least two different labels", param="labels")
    code = {s: j for j, s in enumerate(names)}
    ids = valid[keep]
    pos = np.full(len(cache), -1, np.int64)
    pos[ids] = np.arange(len(ids))
    lab = np.array([code[raw[i]] for i in ids], np.int64)
    n_img, L = len(ids), len(names)
    rows, timing, info = [], {}, {}

    def add(method, view, members, k):
        ok = members["image"] >= 0
        members = {n: v[ok] for n, v in members.items()}
        r = _boot(members, lab, n_img, k, L, n_boot, seed)
        rows.append({"method": method, "view": view, "k": int(k), **r})

    rng = np.random.default_rng(seed)
    for method in methods:
        t0 = time.perf_counter()
        base = method.split(":")[0]
        if ":" in method and method not in _VARIANTS:
            raise EvalError(f"unknown method variant {method!r} (known: {', '.join(_VARIANTS)})",
                            param="methods")
        if base in ("dictionary", "saliency"):
            kw = {"n_patches": n_patches, "seed": seed, **_VARIANTS.get(method, {})}
            cs = discover(cache, layer, base, n_concepts=n_concepts, n_queries=n_queries,
                          store=False, **kw)
            k = len(cs)
            if base == "dictionary":
                counts = cs.extra["image_counts"][ids].astype(np.float64)
                tot = counts.sum(1, keepdims=True)
                w = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
                im, con = np.nonzero(w)
                add(method, "members", {"image": im, "concept": con, "weight": w[im, con]}, k)
            else:
                ex = cs.extra
                add(method, "members", {"image": pos[ex["crop_image"]],
                                        "concept": ex["crop_concept"].astype(np.int64),
                                        "weight": np.ones(len(ex["crop_image"]))}, k)
                info[method] = {n: cs.attrs[n] for n in ("crops", "distinct_crops",
                                                         "kept_per_query")}
            add(method, "top", _members_top(cs, pos), k)
            timing[method] = cs.attrs.get("seconds")
        elif method == "fullframe":
            p = np.asarray(cache.pooled(layer, ids), np.float32)
            centres, con, _ = kmeans(p, n_concepts, seed=seed)
            k = len(centres)
            add(method, "members", {"image": np.arange(n_img), "concept": con,
                                    "weight": np.ones(n_img)}, k)
            from ..concepts.cluster import unit

            cos = (unit(p) * centres[np.maximum(con, 0)]).sum(1)
            top = _top_members(con, cos, k, n_patches)
            add(method, "top", {"image": top, "concept": con[top], "weight": np.ones(len(top))}, k)
            timing[method] = round(time.perf_counter() - t0, 3)
        elif method == "random":
            k = n_concepts
            con = rng.integers(0, k, n_img)
            add(method, "members", {"image": np.arange(n_img), "concept": con,
                                    "weight": np.ones(n_img)}, k)
            top = _top_members(con, rng.random(n_img), k, n_patches)
            add(method, "top", {"image": top, "concept": con[top], "weight": np.ones(len(top))}, k)
            timing[method] = round(time.perf_counter() - t0, 3)
        else:
            raise EvalError(f"unknown method {method!r} (use {', '.join(METHODS)})",
                            param="methods")
        if log is not None:
            log(f"  {method}: {time.perf_counter() - t0:.1f} s")
    counts = np.bincount(lab, minlength=L)
    diffs = _differences(rows)
    for r in rows:
        r.pop("_boot")
    return {
        "protocol": "concepts", "n": int(n_img), "k": int(n_concepts), "seed": seed,
        "bootstrap": n_boot, "ci": 0.95,
        "arms": [{"name": f"{Path(str(cache.path)).name}:{layer}", "cache": str(cache.path),
                  "model": cache.model, "layer": layer, "grid": list(cache.grid(layer)),
                  "images": int(n_img)}],
        "metric": "purity and NMI of the (concept × label) table",
        "labels": {"source": str(labels) if labels else (column or "label"), "n_labels": L,
                   "majority_fraction": float(counts.max() / counts.sum()),
                   "names": names if L <= 50 else names[:50]},
        "n_queries": n_queries, "n_patches": n_patches, "rows": rows, "differences": diffs,
        "seconds": timing,
        "info": info,
    }


def _top_members(con: np.ndarray, score: np.ndarray, k: int, n: int) -> np.ndarray:
    """The ``n`` best-scoring members of each cluster."""
    o = np.lexsort((-score, con))
    c = con[o]
    start = np.searchsorted(c, np.arange(k))
    rank = np.arange(len(o)) - start[np.clip(c, 0, k - 1)]
    return o[(rank < n) & (c >= 0)]


def _labels(cache, labels, column) -> np.ndarray:
    """One label string per cache row ("" where there is none)."""
    if labels is None:
        vals = cache.column(column) if column else cache.labels
        return np.array([str(v) for v in vals], dtype=object)
    import csv

    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:
            rd = csv.DictReader(f)
            if not rd.fieldnames or not {"path", "label"} <= set(rd.fieldnames):
                raise EvalError(f"{labels}: a labels file needs 'path' and 'label' columns",
                                param="labels")
            m = {r["path"].strip(): r["label"].strip() for r in rd}
    except OSError as e:
        raise EvalError(f"cannot read {labels}: {e.strerror or e}", param="labels") from None
    out = np.array([m.get(str(p), "") for p in cache.paths], dtype=object)
    if not (out != "").any():
        raise EvalError(f"no path of {labels} is in {cache.path}", param="labels")
    return out


def concepts_markdown(rep: dict) -> str:
    lab = rep["labels"]
    lines = [f"### concepts: {rep['metric']}", "",
             (f"{rep['n']} images of {rep['arms'][0]['name']} "
              f"({'×'.join(map(str, rep['arms'][0]['grid']))}), K = {rep['k']} concepts, "
              f"{lab['n_labels']} labels from `{lab['source']}` (largest label: "
              f"{lab['majority_fraction']:.3f} of the images), saliency with "
              f"{rep['n_queries']} queries, top view = first {rep['n_patches']} patches per "
              f"concept; seed {rep['seed']}; 95 % CI from {rep['bootstrap']} bootstrap "
              "resamples of the images."), "",
             "| method | view | K | members | images | purity [95 % CI] | NMI [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(
            f"| {r['method']} | {r['view']} | {r['k']} | {r['members']} | {r['images']} | "
            f"{r['purity']:.3f} [{r['purity_lo']:.3f}, {r['purity_hi']:.3f}] | "
            f"{r['nmi']:.3f} [{r['nmi_lo']:.3f}, {r['nmi_hi']:.3f}] |")
    if rep.get("differences"):
        lines += ["", "Paired differences (method − reference, same view, same resampled images):",
                  "", "| method | reference | view | purity [95 % CI] | NMI [95 % CI] |",
                  "|---|---|---|---|---|"]
        for d in rep["differences"]:
            lines.append(
                f"| {d['method']} | {d['reference']} | {d['view']} | "
                f"{d['purity']:+.3f} [{d['purity_lo']:+.3f}, {d['purity_hi']:+.3f}] | "
                f"{d['nmi']:+.3f} [{d['nmi_lo']:+.3f}, {d['nmi_hi']:+.3f}] |")
    secs = ", ".join(f"{m} {s:.1f} s" for m, s in rep["seconds"].items() if s is not None)
    lines += ["", f"Time: {secs}."]
    return "\n".join(lines) + "\n"


def concepts_figure(rep: dict, out: Path, prefix: str) -> list[Path]:
    from .report import _plt, save_figure

    plt = _plt()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    methods = list(dict.fromkeys(r["method"] for r in rep["rows"]))
    views = list(dict.fromkeys(r["view"] for r in rep["rows"]))
    table = {(r["method"], r["view"]): r for r in rep["rows"]}
    x = np.arange(len(methods))
    width = 0.8 / len(views)
    for ax, key in zip(axes, ("purity", "nmi"), strict=True):
        for j, v in enumerate(views):
            rs = [table.get((m, v)) for m in methods]
            mean = np.array([r[key] if r else np.nan for r in rs])
            err = np.array([[r[key] - r[key + "_lo"] if r else 0 for r in rs],
                            [r[key + "_hi"] - r[key] if r else 0 for r in rs]])
            ax.bar(x + (j - (len(views) - 1) / 2) * width, mean, width, yerr=err, capsize=3,
                   label=v)
        ax.set_xticks(x, methods)
        ax.set_ylabel(key)
        ax.set_title(f"{key} (K={rep['k']}, {rep['n']} images, 95 % CI)")
        ax.legend(fontsize=8)
    if "majority_fraction" in rep["labels"]:
        axes[0].axhline(rep["labels"]["majority_fraction"], color="gray", ls=":", lw=0.8)
    return [save_figure(plt, fig, out / f"{prefix}_summary.png")]


def write_concepts_report(rep: dict, out, prefix: str | None = None, figures: bool = True,
                          log: Log | None = None) -> dict:
    """``<prefix>.json``, ``<prefix>.md`` and the figure in ``out``."""
    from .report import write_files

    return write_files(rep, out, prefix or "concepts", concepts_markdown(rep),
                       concepts_figure if figures else None, log)
