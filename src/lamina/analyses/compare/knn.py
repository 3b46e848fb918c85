"""Mutual k-nearest-neighbour alignment and CKNNA (Huh et al. 2024), exact, with no N x N matrix.

Neighbours. The k nearest neighbours of row i of a site are the k other rows of largest cosine
with it (self excluded), from the similarity engine's exact streamed top-k
(:func:`lamina.similarity.scan`, float32 products): O(N^2 d) time, O(N k) memory. Each site's
lists are computed once and reused for every site pair it is in (a site given on both sides as
the same array object is scanned once).

Ties, so that the neighbour *set* is well defined: rows are ordered by cosine, descending, then
by row index, ascending; the first k are the neighbours. Identical rows (exact duplicates) have
cosine exactly 1 with each other, so a row's duplicates come first (by index), and rows tied
with each other are taken by lower index where the k-th place cuts a tie. The engine's
float32 values decide the set directly wherever the k-th and (k+1)-th candidates are further
apart than a proven float32 error bound ((2 d + 8) * 2**-24 each, doubled; 2**-11 instead of
2**-24 when CUDA matmuls may use TF32); closer candidates are re-scored in float64 from the rows
as given and ordered by that value, then by index (rows whose near-tie runs past the engine's
widened list are re-scored against all rows, in blocks). The result is the set the rule
selects with float64 cosines, whatever the engine's block order or backend.

``mutual_knn`` (Huh et al. 2024; platonic-rep's ``mutual_knn``): the mean over rows of
|kNN_A(i) ∩ kNN_B(i)| / k.

``cknna`` (Huh et al. 2024; platonic-rep's ``AlignmentMetrics.cknna`` with its defaults,
``unbiased=True``, ``distance_agnostic=False``, whose values the paper reports). Kernel: linear
on the rows as given, K = X X^T, L = Y Y^T (platonic-rep's ``feats @ feats.T``; its pipeline
passes unit-normalised rows, so pass normalised rows to reproduce its numbers; neighbours are
by cosine here, which is its dot-product top-k when rows are unit length). With M the 0/1
matrix of pairs (i, j) where j is among the k nearest neighbours of i in both A and B
(mutual kNN, self excluded), CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_A∘K, M_A∘K)
HSIC_u(M_B∘L, M_B∘L)), with M_A, M_B each side's own kNN indicator and HSIC_u the unbiased
estimator of Song et al. (2012), whose correction terms do the centring (no explicit centring,
no column means; the paper's "CKA restricted to neighbour pairs"):

    HSIC_u(P, Q) = [sum(P∘Q^T) + sum(P) sum(Q) / ((N-1)(N-2)) - 2 sum(P Q) / (N-2)] / (N(N-3))

for P, Q with zero diagonals. Every term is a sum over the O(N k) nonzeros of the masks:
sum(P∘Q^T) over pairs (i, j) present in both directions, sum(P) over the pairs, and
sum(P Q) = sum over pairs (i, j) of P_ij * (row sum of Q)_j. The kernel entries are dot products
of two rows in float64. So the value equals platonic-rep's N x N computation (up to rounding
and the choice among tied neighbours) without its ``+ 1e-6`` in the denominator, which is not
scale-free: HSIC_u of masked kernels shrinks like k / N, so the constant biases large-N values.
CKNNA is NaN (with a note) for N < 4 or when a side's own HSIC_u is not positive. Like
platonic-rep's, it is not symmetric in A and B: sum(P Q) pairs the column sums of one masked
kernel with the row sums of the other, and kNN masks are not symmetric (mutual kNN is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamina.analyses.compare._rows import real_rows, row_ids
from lamina.errors import LaminaError
from lamina.similarity import scan

MEASURES_KNN = ("mutual_knn", "cknna")
#: Extra candidates the engine returns per row beyond k (near ties are settled among them).
EXTRA = 6
_CHUNK = 1 << 22  # entries per vectorised step (about 32 MB of float64)


# --------------------------------------------------------------------------- inputs
def _as_rows(x: Any, where: str) -> np.ndarray:
    """A 2-D float32/float64 numpy array of finite rows, none of them zero."""
    x = real_rows(x, where)
    zero = np.flatnonzero(~x.any(1))
    if len(zero):
        raise LaminaError(f"{where} has rows that are exactly zero ({row_ids(zero)}): their "
                          "cosine with any row is undefined, so they have no nearest "
                          "neighbours. Drop those rows on both sides first.")
    return np.ascontiguousarray(x)


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise LaminaError(f"k must be a positive int (neighbours per row), got {k!r}.")
    if k >= n - 1:
        raise LaminaError(
            f"k={k} is too large for N={n} rows: each row has only {n - 1} other rows, so with "
            f"k >= N-1 every row's neighbours are all the other rows (mutual kNN is 1 whatever "
            f"the representations). Pass k <= {n - 2}, or more rows.")
    return int(k)


# --------------------------------------------------------------------------- neighbours
@dataclass
class _Groups:
    """Identical rows: group of each row (``inv``), groups numbered by first occurrence,
    ``first`` row of each group, ``counts``, and ``members`` (row ids grouped, ascending
    within a group) starting at ``start[g]``."""

    inv: np.ndarray
    first: np.ndarray
    counts: np.ndarray
    members: np.ndarray
    start: np.ndarray


def _groups(x: np.ndarray) -> _Groups:
    flat = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inv, counts = np.unique(flat, return_index=True, return_inverse=True,
                                      return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inv, first, counts = rank[inv.ravel()], first[order], counts[order]
    members = np.argsort(inv, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _Groups(inv, first, counts, members, start)


def _unit(rows: np.ndarray) -> np.ndarray:
    r = rows.astype(np.float64)
    return r / np.linalg.norm(r, axis=-1, keepdims=True)


def _pick(gr: _Groups, cands: np.ndarray, vals: np.ndarray, need: int) -> np.ndarray:
    """The first ``need`` member rows of the groups ``cands`` (float64 cosines ``vals``),
    ordered by cosine descending, then row index."""
    sizes = gr.counts[cands]
    base = np.repeat(gr.start[cands] - np.cumsum(sizes) + sizes, sizes)
    mem = gr.members[base + np.arange(int(sizes.sum()))]
    val = np.repeat(vals, sizes)
    return mem[np.lexsort((mem, -val))[:need]]


def _tolerance(x: np.ndarray, device: str) -> float:
    """Twice a bound on the error of the engine's float32 cosines (see the module doc)."""
    unit = 2.0 ** -24
    if device.startswith("cuda") and torch.backends.cuda.matmul.allow_tf32:
        unit = 2.0 ** -11
    return 2.0 * (2 * x.shape[1] + 8) * unit


def _neighbours(x: np.ndarray, k: int, progress: bool) -> np.ndarray:
    """(N, k) int64: each row's k neighbours (row ids, ascending), by the rule above."""
    n = len(x)
    gr = _groups(x)
    n_u = len(gr.first)
    need = k - (gr.counts - 1)  # places left after a row's own duplicates
    chosen = np.full((n_u, k), -1, dtype=np.int64)  # chosen[g, :need[g]]: rows outside g
    m = min(k + EXTRA, n_u - 1)
    if m > 0 and (need > 0).any():
        xu = x if n_u == n else x[gr.first]
        res = scan(xu, topk=m, progress=progress)
        vals = res.topk_values.astype(np.float64)
        ids = res.topk_indices.astype(np.int64)
        tol = _tolerance(x, str(res.meta.get("device", "cpu")))
        _choose(gr, vals, ids, need, chosen, tol, exhaustive=m == n_u - 1, xu=xu)
    out = np.empty((n, k), dtype=np.int64)
    single = gr.counts[gr.inv] == 1
    out[single] = chosen[gr.inv[single]]
    for g in np.flatnonzero(gr.counts > 1):  # rows with duplicates: those first, by index
        mem = gr.members[gr.start[g]: gr.start[g] + gr.counts[g]]
        kk = min(len(mem) - 1, k)
        head = np.broadcast_to(mem[:kk], (len(mem), kk)).copy()
        for t in range(min(kk, len(mem))):
            head[t] = np.delete(mem[: kk + 1], t)
        out[mem, :kk] = head
        if kk < k:
            out[mem, kk:] = chosen[g, : k - kk]
    return np.sort(out, axis=1)


def _choose(gr: _Groups, vals: np.ndarray, ids: np.ndarray, need: np.ndarray,
            chosen: np.ndarray, tol: float, exhaustive: bool, xu: np.ndarray) -> None:
    """Fill ``chosen[g, :need[g]]`` from the engine's lists (float32 ``vals``, best first,
    candidate groups ``ids``): directly where the float32 values are unambiguous, else by
    float64 re-scoring."""
    n_u, m = ids.shape
    rows = np.flatnonzero(need > 0)
    size = gr.counts[ids[rows]]
    cum = np.cumsum(size, axis=1)
    p = np.argmax(cum >= need[rows, None], axis=1)  # the candidate holding the last place
    rem = need[rows] - np.where(p > 0, cum[np.arange(len(rows)), p - 1], 0)
    col = np.arange(m)
    v = vals[rows]
    vp = v[np.arange(len(rows)), p]
    above = np.where(p > 0, v[np.arange(len(rows)), np.maximum(p - 1, 0)], np.inf)
    nxt = v[np.arange(len(rows)), np.minimum(p + 1, m - 1)]
    below = np.where(p + 1 < m, nxt, -np.inf if exhaustive else vp)
    whole = rem == size[np.arange(len(rows)), p]
    sure = (vp - below > tol) & (whole | (above - vp > tol))
    # unambiguous rows: every member of candidates before p, the first `rem` members of p
    r_sure = np.flatnonzero(sure)
    take = np.where(col < p[r_sure, None], size[r_sure],
                    np.where(col == p[r_sure, None], rem[r_sure, None], 0))
    nz = take > 0
    tk = take[nz]
    cand = ids[rows[r_sure]][nz]
    owner = np.repeat(rows[r_sure], nz.sum(1))
    offs = np.repeat(gr.start[cand] - np.cumsum(tk) + tk, tk)
    flat_owner = np.repeat(owner, tk)
    per = need[rows[r_sure]]
    slot = np.arange(len(flat_owner)) - np.repeat(np.cumsum(per) - per, per)
    chosen[flat_owner, slot] = gr.members[offs + np.arange(len(flat_owner))]
    # near ties: re-score the candidates down to vp - tol in float64
    full = []
    for r in np.flatnonzero(~sure):
        g = rows[r]
        window = np.flatnonzero(v[r] >= vp[r] - tol)
        if window[-1] == m - 1 and not exhaustive:
            full.append(g)
            continue
        cands = ids[g, : window[-1] + 1]
        cos = _unit(xu[cands]) @ _unit(xu[g])
        chosen[g, : need[g]] = _pick(gr, cands, cos, int(need[g]))
    if full:
        _choose_full(gr, np.asarray(full), need, chosen, xu)


def _choose_full(gr: _Groups, full: np.ndarray, need: np.ndarray, chosen: np.ndarray,
                 xu: np.ndarray) -> None:
    """Rows whose near ties run past the engine's list: float64 cosines against all rows."""
    n_u = len(xu)
    unit = np.empty(xu.shape, dtype=np.float64)
    step = max(1, _CHUNK // xu.shape[1])
    for s in range(0, n_u, step):
        unit[s: s + step] = _unit(xu[s: s + step])
    per = max(1, _CHUNK // n_u)
    for s in range(0, len(full), per):
        block = full[s: s + per]
        cos = unit[block] @ unit.T
        for g, row in zip(block, cos, strict=True):
            row[g] = -np.inf  # the row itself (its duplicates are placed separately)
            q = int(need[g])
            q_u = min(q, n_u - 1)  # groups needed at most (each has >= 1 member)
            kth = np.partition(row, n_u - q_u)[n_u - q_u]
            cands = np.flatnonzero(row >= kth)
            chosen[g, :q] = _pick(gr, cands, row[cands], q)


# --------------------------------------------------------------------------- measures
@dataclass
class _Site:
    """One site's neighbours ``idx`` (N, k), kernel entries ``kern`` (N, k) = x_i . x_j in
    float64 (for CKNNA), and its own HSIC_u term ``hsic``."""

    idx: np.ndarray
    kern: np.ndarray | None = None
    hsic: float = math.nan


def _kernel(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n, k = idx.shape
    out = np.empty((n, k), dtype=np.float64)
    step = max(1, _CHUNK // (k * x.shape[1]))
    for s in range(0, n, step):
        a = x[s: s + step].astype(np.float64)
        b = x[idx[s: s + step]].astype(np.float64)
        out[s: s + step] = np.einsum("ckd,cd->ck", b, a)
    return out


def _hsic_u(n: int, i: np.ndarray, j: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """platonic-rep's ``hsic_unbiased(P, Q)`` for N x N matrices P, Q that are zero except at
    the pairs (i[t], j[t]) (distinct, i != j), where they are p[t] and q[t]."""
    if n < 4:
        return math.nan
    if len(i) == 0:
        return 0.0
    key = i * n + j
    order = np.argsort(key)
    skey = key[order]
    rev = j * n + i
    pos = np.minimum(np.searchsorted(skey, rev), len(skey) - 1)
    hit = skey[pos] == rev
    t1 = float(np.dot(p[hit], q[order[pos[hit]]]))  # sum(P * Q^T)
    row_q = np.bincount(i, weights=q, minlength=n)
    t3 = float(np.dot(p, row_q[j]))  # sum(P @ Q)
    total = t1 + float(p.sum()) * float(q.sum()) / ((n - 1) * (n - 2)) - 2.0 * t3 / (n - 2)
    return total / (n * (n - 3))


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry of ``a`` (N, k): whether it is in the same row of ``b``, and where."""
    n, k = a.shape
    inside = np.empty((n, k), dtype=bool)
    where = np.empty((n, k), dtype=np.int64)
    step = max(1, _CHUNK // (k * k))
    for s in range(0, n, step):
        eq = a[s: s + step, :, None] == b[s: s + step, None, :]
        inside[s: s + step] = eq.any(2)
        where[s: s + step] = eq.argmax(2)
    return inside, where


def _site(x: np.ndarray, k: int, cknna: bool, progress: bool) -> _Site:
    site = _Site(_neighbours(x, k, progress))
    if cknna:
        n = len(x)
        site.kern = _kernel(x, site.idx)
        i = np.repeat(np.arange(n), k)
        vals = site.kern.ravel()
        site.hsic = _hsic_u(n, i, site.idx.ravel(), vals, vals)
    return site


def _pair(a: _Site, b: _Site, measures: Sequence[str]) -> dict[str, tuple[float, str | None]]:
    n, k = a.idx.shape
    inside, where = _overlap(a.idx, b.idx)
    out: dict[str, tuple[float, str | None]] = {}
    if "mutual_knn" in measures:
        out["mutual_knn"] = (float(inside.sum()) / (n * k), None)
    if "cknna" in measures:
        assert a.kern is not None and b.kern is not None
        i = np.broadcast_to(np.arange(n)[:, None], (n, k))[inside]
        lv = np.take_along_axis(b.kern, where, axis=1)[inside]
        hab = _hsic_u(n, i, a.idx[inside], a.kern[inside], lv)
        if n < 4:
            out["cknna"] = (math.nan, f"CKNNA's unbiased HSIC needs at least 4 rows; got {n}.")
        elif not (a.hsic > 0 and b.hsic > 0):
            out["cknna"] = (math.nan, "undefined: a side's own HSIC over its neighbour pairs is "
                                      "not positive (the kernel has no spread there).")
        else:
            out["cknna"] = (hab / math.sqrt(a.hsic * b.hsic), None)
    return out


def knn_measures(rows_a: Mapping[str, torch.Tensor | np.ndarray],
                 rows_b: Mapping[str, torch.Tensor | np.ndarray], measures: Sequence[str],
                 k: int = 10, *, progress: bool = False) -> list[dict]:
    """Mutual kNN and CKNNA for every (site_a, site_b) pair (definitions, ties and CKNNA's
    kernel and centring in the module doc).

    rows_a[site], rows_b[site]: [N, d_site] (numpy or torch), row i the same input everywhere.
    measures: names from :data:`MEASURES_KNN`. k: neighbours per row, 1 <= k <= N - 2.
    progress: the engine's progress bar for each site's scan.

    Returns one dict per (site_a, site_b, measure), keys ``site_a``, ``site_b``, ``measure``,
    ``value``, ``note`` (None, or why a value is NaN). Cost: one exact top-k scan per distinct
    site (O(N^2 d)), then O(N k (d + k)) per site pair; memory O(N k) per site besides the rows.
    """
    names = (measures,) if isinstance(measures, str) else tuple(measures)
    unknown = [m for m in names if m not in MEASURES_KNN]
    if unknown:
        raise LaminaError(f"Unknown kNN measure {unknown[0]!r}: choose from "
                          f"{', '.join(MEASURES_KNN)}.")
    for side, rows in (("rows_a", rows_a), ("rows_b", rows_b)):
        if not isinstance(rows, Mapping) or not rows:
            raise LaminaError(f"{side} must be a non-empty mapping site -> array [N, d].")
    if not names:
        return []
    arrays = {}
    for side, rows in (("a", rows_a), ("b", rows_b)):
        for s, x in rows.items():
            arrays[(side, s)] = _as_rows(x, f"rows_{side}[{s!r}]")
    sizes = {len(x) for x in arrays.values()}
    if len(sizes) > 1:
        got = ", ".join(f"{side}:{s}={len(x)}" for (side, s), x in arrays.items())
        raise LaminaError(f"Every site must have the same N rows (the same inputs); got {got}.")
    k = _check_k(k, sizes.pop())
    cknna = "cknna" in names
    cache: dict[int, _Site] = {}
    sites: dict[tuple[str, str], _Site] = {}
    for (side, s), x in arrays.items():
        src = (rows_a if side == "a" else rows_b)[s]
        if id(src) not in cache:
            cache[id(src)] = _site(x, k, cknna, progress)
        sites[(side, s)] = cache[id(src)]
    out = []
    for sa in rows_a:
        for sb in rows_b:
            values = _pair(sites[("a", sa)], sites[("b", sb)], names)
            for m in names:
                val, note = values[m]
                out.append({"site_a": sa, "site_b": sb, "measure": m, "value": val,
                            "note": note})
    return out


__all__ = ["EXTRA", "MEASURES_KNN", "knn_measures"]
