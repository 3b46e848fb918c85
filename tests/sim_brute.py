"""Brute-force references for the similarity tests: full matrices in float64 with numpy/scipy."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def prepared(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows prepared for ``metric`` in float64, and the mask of usable rows."""
    x = np.asarray(x, dtype=np.float64)
    scale = np.linalg.norm(x, axis=1)
    if metric == "correlation":
        x = x - x.mean(1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norm = np.linalg.norm(x, axis=1)
        # only exact zeros (cosine) and constant rows (correlation, up to rounding) have no
        # value, whatever the magnitude of the row
        keep = norm > (1e-9 * scale if metric == "correlation" else 0.0)
        return x / np.where(keep, norm, 1.0)[:, None], keep
    return x, np.ones(len(x), dtype=bool)


def full(x: np.ndarray, metric: str, y: np.ndarray | None = None) -> np.ndarray:
    """Full (N, M) float64 matrix of ``metric``; rows of unusable vectors are NaN."""
    a, ka = prepared(x, metric)
    b, kb = (a, ka) if y is None else prepared(y, metric)
    if metric == "euclidean":
        out = cdist(a, b)
    else:
        out = a @ b.T
        if metric in ("cosine", "correlation"):
            out = np.clip(out, -1, 1)
    out[~ka] = np.nan
    out[:, ~kb] = np.nan
    return out


def upper(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, value) of the unique pairs i < j whose value is not NaN."""
    i, j = np.triu_indices(len(m), 1)
    v = m[i, j]
    ok = ~np.isnan(v)
    return i[ok], j[ok], v[ok]


def near_edges(values: np.ndarray, edges: np.ndarray, tol: float) -> int:
    """How many values lie within ``tol`` of some edge (where float32 and float64 may bin
    differently)."""
    pos = np.searchsorted(edges, values)
    lo = np.abs(values - edges[np.clip(pos - 1, 0, len(edges) - 1)])
    hi = np.abs(values - edges[np.clip(pos, 0, len(edges) - 1)])
    return int(np.sum(np.minimum(lo, hi) <= tol))


def topk_reference(m: np.ndarray, k: int, largest: bool, self_pairs: bool) -> np.ndarray:
    """Sorted best-k values per row (self excluded for self-similarity)."""
    m = m.astype(np.float64).copy()
    if self_pairs:
        np.fill_diagonal(m, np.nan)
    fill = -np.inf if largest else np.inf
    m = np.where(np.isnan(m), fill, m)
    s = np.sort(m, axis=1)
    return s[:, ::-1][:, :k] if largest else s[:, :k]
