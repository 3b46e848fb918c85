"""Compiled CPU kernels (numba): the epilogue of a scan, one pass per block row, and the
``jit`` decorator that :mod:`sums` and :mod:`_rescore` use too.

While a row of block values sits in the L1 cache, one vectorised loop takes its moments (sum
and sum of squares about the shift in float64, min and max through order-preserving integer
keys of the float bits), a second its histogram positions, a third counts the bins; then the row is
compared, chunk by chunk, with its own top-k bound and (upper-triangle scans) with the bounds
of the lists of its columns, and only chunks holding an entry above a bound are visited
entry by entry. The lists are min-heaps. The torch passes of :mod:`_hist`, :mod:`_accum` and
:mod:`_topk` read a block about ten times; this reads it once per row and is what float32
scans on CPU use by default (``backend="numba"``; the torch passes remain for CUDA, float64
and ``backend="torch"``). Same rules as those passes:
numpy's bins (values within ``lim`` of an edge re-binned exactly in float64), and an entry
enters a top-k list only when strictly above its k-th best and the shared bound."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from lamina.similarity._accum import Moments
from lamina.similarity._blocks import Block, upper_pieces
from lamina.similarity._hist import ExactHistogram
from lamina.similarity._plan import EpilogueTotals, ScanPlan
from lamina.similarity._topk import TopK

CHUNK = 64  # entries per candidate test of a row
_FM = {"reassoc", "nsz"}  # reorder reductions (vectorise); no contraction, no inf/nan games
_I32_MAX, _I32_MIN = np.int32(2**31 - 1), np.int32(-(2**31))
_LOW7 = np.int32(0x7FFFFFFF)


def jit(fastmath: Any = False) -> Any:
    """``numba.njit`` without the GIL or bounds checks, cached on disk where numba finds a
    writable place (next to this file or the user's cache directory); without one (read-only
    installs and homes), compiled once per process instead of failing at import."""

    def decorate(fn: Any) -> Any:
        opts = dict(nogil=True, boundscheck=False, fastmath=fastmath)
        try:
            return numba.njit(cache=True, **opts)(fn)
        except RuntimeError:  # "no locator available": nowhere to cache
            return numba.njit(**opts)(fn)

    return decorate


@jit(fastmath=_FM)
def _clip(v, lo, hi):
    v = v if v > lo else lo
    return v if v < hi else hi


@jit(fastmath=_FM)
def _row_moments(r, bits, lo, hi, shift, ext):
    """Sum and sum of squares about ``shift`` of ``r`` (clipped), in float64; min/max keys
    into ``ext``. (Loops start at 0 throughout: with a variable start LLVM does not vectorise
    them.)"""
    total = 0.0
    sq = 0.0
    kmin, kmax = _I32_MAX, _I32_MIN
    for j in range(r.shape[0]):
        v = np.float64(_clip(r[j], lo, hi))
        total += v
        w = v - shift
        sq += w * w
        b = bits[j]
        key = b ^ ((b >> 31) & _LOW7)  # float order as int order
        kmin = min(kmin, key)
        kmax = max(kmax, key)
    ext[0] = min(ext[0], kmin)
    ext[1] = max(ext[1], kmax)
    return total, sq


@jit(fastmath=_FM)
def _row_positions(r, lo, hi, a, off, top, lim, q):
    """Bin ids (0 below, nb+1 above) of ``r`` into ``q``; how many lie near an edge."""
    near = 0
    for j in range(r.shape[0]):
        p = _clip(r[j], lo, hi) * a + off
        p = _clip(p, np.float32(0.5), top)
        k = np.int32(p)
        q[j] = k
        near += (p - np.float32(k)) < lim
    return near


@jit()
def _exact_bin(v, edges):
    """numpy's rule in float64: edges[k-1] <= v < edges[k]; the last edge belongs to bin nb."""
    nb = edges.shape[0] - 1
    if v == edges[nb]:
        return nb
    return np.searchsorted(edges, v, side="right")


@jit()
def _row_histogram(r, lo, hi, a, off, top, lim, q, near, edges, hist):
    for j in range(r.shape[0]):
        hist[j & 3, q[j]] += 1
    fixed = 0
    if near:  # re-bin exactly, with twice the margin (the loops may round differently)
        for j in range(r.shape[0]):
            v = _clip(r[j], lo, hi)
            p = _clip(v * a + off, np.float32(0.5), top)
            if p - np.float32(np.int32(p)) < 2 * lim:
                hist[0, q[j]] -= 1
                hist[0, _exact_bin(np.float64(v), edges)] += 1
                fixed += 1
    return fixed


@jit()
def _insert(row, w, col, vals, idx, bound):
    """Replace the smallest entry of list ``row`` (a min-heap: ``vals[row, 0]`` is its k-th
    best) by ``w`` (column ``col``) and restore the heap; returns the row's new bound."""
    lst, ids = vals[row], idx[row]
    k = lst.shape[0]
    p = 0
    while True:
        c = 2 * p + 1
        if c >= k:
            break
        if c + 1 < k and lst[c + 1] < lst[c]:
            c += 1
        if lst[c] >= w:
            break
        lst[p] = lst[c]
        ids[p] = ids[c]
        p = c
    lst[p] = w
    ids[p] = col
    if lst[0] > bound[row]:
        bound[row] = lst[0]
    return max(lst[0], bound[row])


@jit(fastmath=_FM)
def _count_above(r, sign, thr, thr_cols):
    """How many of ``sign * r[j]`` exceed ``thr`` or ``thr_cols[j]`` (unclipped: a superset
    of the clipped)."""
    above = 0
    for j in range(r.shape[0]):
        w = sign * r[j]
        above += (w > thr) | (w > thr_cols[j])
    return above


@jit()
def _row_topk(r, self_col, lo, hi, sign, row, c0, r0, vals, idx, bound, thr_cols):
    """Entries of row ``r`` (list ``row``; its own column ``self_col``, or -1) above the row's
    bound enter its list, and entries above their column's bound ``thr_cols[j]`` enter list
    ``c0 + j`` (id ``r0``; +inf where columns take no entries); looked for in chunks of
    ``CHUNK`` whose count above the bounds is not zero."""
    thr = max(vals[row, 0], bound[row])
    n = r.shape[0]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        if _count_above(r[start:stop], sign, thr, thr_cols[start:stop]) == 0:
            continue
        for j in range(start, stop):
            w = sign * _clip(r[j], lo, hi)
            if w > thr and j != self_col:
                thr = _insert(row, w, c0 + j, vals, idx, bound)
            if w > thr_cols[j]:
                thr_cols[j] = _insert(c0 + j, w, r0, vals, idx, bound)


@jit()
def block_epilogue(s, bits, r0, c0, diag, lo, hi, shift, mom, ext,
                   hist_on, a, off, top, lim, edges, hist, q,
                   k_on, cols, sign, vals, idx, bound, thr_cols):
    """Everything a scan takes from block values ``s`` (R, C) float32 (``bits``: the same
    memory as int32) of rows ``r0:r0+R`` against columns ``c0:c0+C``. ``diag``: a self block
    (pairs j > i count; top-k skips j == i and the square gives both directions). Values are
    clipped to [lo, hi]. Adds to ``mom`` (count, sum, sum of squares about ``shift``), ``ext``
    (min/max keys) and ``hist`` (4, nb+2); updates the top-k lists (values ``sign`` * v).
    Returns the number of values re-binned exactly."""
    n_rows = s.shape[0]
    fixed = 0
    if k_on:  # the column lists' bounds (upper-triangle scans), else none to enter
        for j in range(thr_cols.shape[0]):
            thr_cols[j] = max(vals[c0 + j, 0], bound[c0 + j]) if cols else np.inf
    for i in range(n_rows):
        r = s[i]
        j0 = i + 1 if diag else 0
        pairs = r[j0:]
        total, sq = _row_moments(pairs, bits[i, j0:], lo, hi, shift, ext)
        mom[0] += pairs.shape[0]
        mom[1] += total
        mom[2] += sq
        if hist_on:
            near = _row_positions(pairs, lo, hi, a, off, top, lim, q)
            fixed += _row_histogram(pairs, lo, hi, a, off, top, lim, q, near, edges, hist)
        if k_on:
            self_col = i if diag else -1
            _row_topk(r, self_col, lo, hi, sign, r0 + i, c0, r0 + i, vals, idx, bound, thr_cols)
    return fixed


def key_to_float(key: int) -> float:
    """The float32 whose order-preserving integer key is ``key``."""
    k = np.int32(key)
    bits = np.array([k ^ ((k >> 31) & _LOW7)], dtype=np.int32)
    return float(bits.view(np.float32)[0])


class CpuEpilogue:
    """The ``backend="numba"`` epilogue of one worker: runs :func:`block_epilogue` on its
    blocks (CPU, float32 values), accumulating moments and histogram counts in numpy and the
    top-k lists in place in its own :class:`TopK` (shared bound ``plan.bound``). Built from the
    plan alone; :meth:`totals` hands back what it accumulated."""

    def __init__(self, plan: ScanPlan) -> None:
        self.plan = plan
        inf = np.float32(np.inf)
        self.lo, self.hi = (np.float32(-1), np.float32(1)) if plan.bounded else (-inf, inf)
        self.shift = np.float64(plan.shift or 0.0)
        self.mom = np.zeros(3)
        self.ext = np.array([_I32_MAX, _I32_MIN], dtype=np.int32)
        self.fixed = 0
        # uneven edges: the histogram's exact torch binning instead of the affine kernel
        self.hist = hist = None if plan.edges is None else ExactHistogram(
            plan.edges, plan.value, plan.device, plan.bounds)
        self.masks: dict = {}
        self.hist_on = hist is not None and hist.affine
        nb = 0 if hist is None else hist.nb
        self.hist4 = np.zeros((4, nb + 2), dtype=np.int64)
        self.edges = np.zeros(2) if hist is None else hist.edges64.numpy()
        self.affine = (np.float32(0), np.float32(0), np.float32(0), np.float32(0))
        if self.hist_on:
            self.affine = (np.float32(hist.a), np.float32(hist.b + hist.delta),
                           np.float32(nb + 1.5), np.float32(2 * hist.delta))
        self.topk = None if plan.k is None else TopK(
            plan.n_rows, plan.k, plan.device, bound=plan.bound, dtype=plan.value)
        self.sign = np.float32(1.0 if plan.largest else -1.0)
        dummy = np.zeros((1, 1), dtype=np.float32)
        self.lists = (dummy, np.zeros((1, 1), np.int64), dummy[0])
        if self.topk is not None:  # min-heaps: any order is a valid list for merge_topk
            t = self.topk
            self.lists = (t.values.numpy(), t.indices.numpy(), t.bound.numpy())
        self.q = np.empty(0, dtype=np.int32)
        self.thr_cols = np.empty(0, dtype=np.float32)

    def consume(self, blk: Block) -> None:
        """Add block ``blk`` (its values are left unchanged)."""
        s = blk.values.numpy()
        n_rows, n_cols = s.shape
        cols = self.plan.self_pairs and not blk.diagonal
        if len(self.q) < n_cols:
            self.q = np.empty(n_cols, dtype=np.int32)
            self.thr_cols = np.empty(n_cols, dtype=np.float32)
        self.fixed += block_epilogue(
            s, s.view(np.int32), blk.r0, blk.c0, blk.diagonal, self.lo, self.hi, self.shift,
            self.mom, self.ext, self.hist_on, *self.affine, self.edges, self.hist4, self.q,
            self.topk is not None, cols, self.sign, *self.lists, self.thr_cols[:n_cols],
        )
        if self.hist is not None and not self.hist_on:
            for v in upper_pieces(blk.values, self.masks) if blk.diagonal else [blk.values]:
                self.hist.add(v)

    def totals(self) -> EpilogueTotals:
        """Moments, histogram counts and top-k lists of the blocks consumed so far."""
        m = Moments(float(self.shift))
        if self.mom[0]:
            m.count = int(self.mom[0])
            m.total = float(self.mom[1])
            m.sq = float(self.mom[2])
            clip = (float(self.lo), float(self.hi))
            m.vmin = min(max(key_to_float(self.ext[0]), clip[0]), clip[1])
            m.vmax = min(max(key_to_float(self.ext[1]), clip[0]), clip[1])
        hist, n_fixed = None, 0
        if self.hist is not None:
            hist, n_fixed = self.hist.counts.clone(), self.hist.n_fixed
            if self.hist_on:
                hist += torch.from_numpy(self.hist4.sum(0))
                n_fixed += self.fixed
        return EpilogueTotals(moments=m, hist=hist, n_fixed=n_fixed, topk=self.topk)
