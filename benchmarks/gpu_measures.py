"""Measures of agreement between a device's results and the CPU's, and their pass limits
(used by benchmarks/gpu_check.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Pass limits (measure, "<=" | ">=", bound). float32 differences come from summation order
# (~1e-6 relative); bfloat16 rounds every product to 8 bits of mantissa (~1% after 6 layers).
LIMITS: dict[str, list[tuple[str, str, float]]] = {
    "capture_float32": [("rel_fro", "<=", 1e-3), ("rel_max", "<=", 1e-2),
                        ("min_row_cos", ">=", 0.9999)],  # room for TF32 attention kernels
    "capture_bfloat16": [("rel_fro", "<=", 0.08), ("rel_max", "<=", 0.3),
                         ("min_row_cos", ">=", 0.98)],
    "scan_float32": [("count_diff", "<=", 0), ("hist_moved", "<=", 1e-4),
                     ("mean_diff", "<=", 1e-5), ("std_diff", "<=", 1e-5),
                     ("extreme_diff", "<=", 1e-5), ("topk_recall", ">=", 0.999),
                     ("topk_value_diff", "<=", 2e-5), ("pairs_changed", "<=", 2e-3),
                     ("pair_value_diff", "<=", 2e-5)],
    "scan_fast": [("count_diff", "<=", 0), ("hist_moved", "<=", 1e-3),
                  ("mean_diff", "<=", 1e-4), ("std_diff", "<=", 1e-4),
                  ("extreme_diff", "<=", 8e-3), ("topk_recall", ">=", 0.995),
                  ("pairs_changed", "<=", 2e-3), ("pair_value_diff", "<=", 2e-5)],
    "sums": [("rel_l1", "<=", 1e-5)],
    "approximation": [("mean_diff", "<=", 3e-3)],
}

def tensor_diff(ref: torch.Tensor, dev: torch.Tensor) -> dict[str, float]:
    """``dev`` against ``ref`` (same shape, vectors on the last axis): largest absolute
    difference, relative Frobenius norm of the difference, largest difference over the largest
    |ref|, and the smallest cosine of corresponding vectors (those of ref that are not zero)."""
    r, d = ref.double().reshape(-1, ref.shape[-1]), dev.double().reshape(-1, ref.shape[-1])
    err, rn = d - r, r.norm(dim=1)
    keep = rn > 0
    cos = (r[keep] * d[keep]).sum(1) / (rn[keep] * d[keep].norm(dim=1)).clamp_min(1e-300)
    return {"max_abs": float(err.abs().max()),
            "rel_fro": float(err.norm() / r.norm().clamp_min(1e-300)),
            "rel_max": float(err.abs().max() / r.abs().max().clamp_min(1e-300)),
            "min_row_cos": float(cos.min()) if len(cos) else 1.0}


def worst(diffs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The worst value of each measure of :func:`tensor_diff` over sites, and its site."""
    out: dict[str, Any] = {}
    for site, d in diffs.items():
        for key, v in d.items():
            if key not in out or (v < out[key] if key == "min_row_cos" else v > out[key]):
                out[key], out[f"{key}_site"] = v, site
    return out


def topk_agreement(ref_v: np.ndarray, ref_i: np.ndarray, dev_v: np.ndarray,
                   dev_i: np.ndarray, tol: float = 1e-5) -> dict[str, float]:
    """Top-k lists (rows, k), best first: ``id_overlap`` the mean share of common ids;
    ``topk_recall`` the share of dev's values >= ref's k-th value - tol (a tied neighbour
    counts as found); ``topk_value_diff`` the largest difference of the i-th values. Rows
    without neighbours (NaN in ref) are left out."""
    ok = ~np.isnan(ref_v[:, -1])
    rv, ri, dv, di = ref_v[ok], ref_i[ok], dev_v[ok], dev_i[ok]
    k = rv.shape[1]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ri, di, strict=True)])
    recall = (np.nan_to_num(dv, nan=-np.inf) >= rv[:, -1:] - tol).sum(1).clip(max=k) / k
    return {"id_overlap": float(overlap), "topk_recall": float(recall.mean()),
            "topk_value_diff": float(np.abs(dv.astype(np.float64) - rv).max())}


def pair_agreement(ref: tuple[np.ndarray, ...], dev: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Thresholded pairs (i, j, value): ``pairs_changed`` = pairs in only one of the two / all
    pairs (0 when both are empty); ``pair_value_diff`` over the common pairs."""
    a = {(int(i), int(j)): float(v) for i, j, v in zip(*ref, strict=True)}
    b = {(int(i), int(j)): float(v) for i, j, v in zip(*dev, strict=True)}
    common, union = a.keys() & b.keys(), len(a.keys() | b.keys())
    return {"pairs": len(a), "pairs_changed": (union - len(common)) / max(union, 1),
            "pair_value_diff": max((abs(a[p] - b[p]) for p in common), default=0.0)}


def scan_agreement(ref: Any, dev: Any) -> dict[str, float]:
    """Histogram, moments, extremes, top-k and pairs of two ScanResults of the same inputs;
    ``hist_moved`` = pairs in another bin / all pairs."""
    out = {"count_diff": abs(ref.count - dev.count),
           "hist_moved": float(np.abs(ref.counts - dev.counts).sum() / 2 / ref.counts.sum()),
           "mean_diff": abs(ref.mean - dev.mean), "std_diff": abs(ref.std - dev.std),
           "extreme_diff": max(abs(ref.min - dev.min), abs(ref.max - dev.max))}
    out.update(topk_agreement(ref.topk_values, ref.topk_indices, dev.topk_values,
                              dev.topk_indices))
    out.update(pair_agreement((ref.pairs_i, ref.pairs_j, ref.pairs_values),
                              (dev.pairs_i, dev.pairs_j, dev.pairs_values)))
    return out


def sums_agreement(ref: np.ndarray, dev: np.ndarray) -> dict[str, float]:
    """threshold_sums outputs: ``rel_l1`` = sum |dev - ref| / sum |ref| (a pair whose float32
    similarity falls on the other side of a threshold moves its weights), ``max_abs``."""
    err = np.abs(dev - ref)
    return {"rel_l1": float(err.sum() / max(np.abs(ref).sum(), 1e-300)),
            "max_abs": float(err.max()), "total": float(np.abs(ref).sum())}


def judge(metrics: dict[str, float], kind: str) -> list[str]:
    """The limits of ``LIMITS[kind]`` that ``metrics`` break (NaN breaks any); empty: passed."""
    failed = []
    for name, op, bound in LIMITS[kind]:
        v = metrics[name]
        if not (v <= bound if op == "<=" else v >= bound):
            failed.append(f"{name} = {v:.3g} (limit {op} {bound:g})")
    return failed
