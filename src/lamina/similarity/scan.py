"""``scan``: exact all-pairs statistics in one streaming pass over row blocks.

Self-similarity computes only the upper triangle of block pairs; every statistic (histogram,
moments, top-k per row in both directions, thresholded pairs) is taken from each block while it
is in memory, so the cost is that of the matrix products and memory never holds N x N values.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lamina.ray_runtime import check_engine
from lamina.similarity._accum import PairGuard, default_max_pairs, to_numpy
from lamina.similarity._args import (
    BOUNDED,
    check_backend,
    check_int,
    check_real,
    resolve_backend,
    resolve_device,
    resolve_precision,
)
from lamina.similarity._blocks import walk_blocks
from lamina.similarity._consume import ScanConsumer, merge
from lamina.similarity._errors import SimilarityInputError
from lamina.similarity._hist import make_edges
from lamina.similarity._plan import ScanPlan
from lamina.similarity._prepare import Prepared, prepare_inputs, select_rows
from lamina.similarity._rescore import (
    candidate_threshold,
    estimate_shift,
    exact_pairs,
    needs_rescoring,
    rescore_topk,
)
from lamina.similarity._result import ScanResult


def scan(
    x: Any,
    y: Any = None,
    *,
    metric: str = "cosine",
    bins: int | np.ndarray | None = None,
    range: tuple[float, float] | None = (-1, 1),
    topk: int | None = None,
    largest: bool = True,
    threshold: float | None = None,
    subset: Any = None,
    device: str | torch.device | None = None,
    dtype: Any = None,
    subset_y: Any = None,
    threshold_below: bool = False,
    max_pairs: int | None = None,
    fast: bool = False,
    widen: int | None = None,
    block_size: int | None = None,
    memory: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    backend: str = "auto",
    engine: str = "local",
) -> ScanResult:
    """Statistics of all pair values of ``x`` (N, d) (unique pairs i < j), or of ``x`` against
    ``y`` (M, d) (all N*M pairs), in one pass.

    metric: "cosine", "correlation" (cosine of row-centred vectors), "dot" or "euclidean".
    bins, range: histogram (numpy's rules and edges); counts identical to ``numpy.histogram``
        of the same values. Cosine and correlation values are clamped to [-1, 1].
    topk, largest: the k largest (or smallest) values per row of x and their column ids
        (self excluded).
    threshold: a finite number; every pair with value >= threshold (<= with
        ``threshold_below``), as sparse (i, j, value); stops with :class:`TooManyPairsError`
        beyond ``max_pairs`` (default: half the memory budget). Duplicate groups (connected
        components of those pairs): :func:`lamina.similarity.duplicate_groups`.
    subset, subset_y: row ids or boolean masks; results refer to original row ids.
    device: None picks CUDA when available. dtype: None/"float32" (default), "float64", or
        "bfloat16"/"float16" (= ``fast=True``): low-precision products; top-k candidates
        (``widen`` per row, default max(2k, k + 12)) and threshold candidates (a proven error
        margin) are re-scored exactly in float32; histogram and moments use the
        low-precision values. Euclidean top-k and thresholds are always re-scored from the
        differences (the histogram uses sqrt(|a|^2 + |b|^2 - 2 a.b), like torch.cdist).
    block_size, memory: rows per block and working-memory budget in bytes (default: a
        quarter of free memory, at most 1 GiB on CPU). workers: threads computing blocks
        (CPU default: torch's thread count, each single-threaded). progress: a tqdm bar.
    backend: "auto" (default: "numba" for float32 values on CPU, else "torch"), "numba" (the
        compiled one-pass epilogue and top-k re-scoring; CPU and float32 values only, else an
        error) or "torch" (tensor passes, what CUDA and float64 use). Both give the same
        counts, pairs and top-k values up to rounding (float64 moments summed in another
        order; fast-mode re-scored products; columns of tied top-k values may differ);
        ``result.meta["backend"]`` records the one used.
    engine: "local" (default: threads of this process) or "ray": the block pairs as Ray
        tasks (tiles of the block grid; the cluster's GPUs when it has them and ``device``
        is None, else one CPU per task), each returning partial statistics merged by the
        driver: the same counts, top-k and pairs, moments to rounding. Ray is started on
        this machine when no runtime runs (:func:`lamina.ray_runtime.ensure_ray`);
        ``workers`` is then the number of task slots the tiling aims at (default: the
        cluster's GPUs or CPUs); ``result.meta`` gives tasks, bytes moved and task time.
    """
    t0 = time.perf_counter()
    # options first: a bad one is reported before the pass over the rows
    k = None if topk is None else check_int(topk, "topk")
    widen = None if widen is None else check_int(widen, "widen")
    workers = None if workers is None else check_int(workers, "workers")
    if threshold is not None:
        threshold = check_real(threshold, "threshold")
        limit = None if max_pairs is None else check_int(max_pairs, "max_pairs")
    check_backend(backend)
    value = resolve_precision(dtype, fast).value
    if check_engine(engine) == "ray":  # tasks compute on the cluster's devices
        from lamina.similarity._ray_engine import ray_device, scan_tiles, task_block_size

        run_dev, slots = ray_device(device)
        slots, device = workers or slots, "cpu"  # the driver prepares the rows on CPU
    else:
        run_dev = resolve_device(device)
    # "numba" where it cannot run is an error before the pass over the rows
    backend = resolve_backend(backend, run_dev, value)
    edges = None if bins is None else make_edges(bins, range, value)
    px, py, size, budget = prepare_inputs(
        x, y, metric, subset, subset_y, device, dtype, fast, memory, block_size
    )
    other = px if py is None else py
    precision, dev = px.precision, px.device
    if engine == "ray":
        size, task_budget = task_block_size(run_dev, memory, block_size, size)
    n_other = other.n - (1 if py is None else 0)

    plan = ScanPlan(run_dev, precision.value, px.n, py is None, largest,
                    shift=estimate_shift(px, py, budget), bounded=metric in BOUNDED,
                    backend=backend)
    if (precision.fast and precision.matmul.itemsize == 2 and metric != "euclidean"
            and backend != "numba"):
        plan.patterns = precision.matmul
    if k is not None:
        if k > n_other:
            raise SimilarityInputError(
                f"topk={k} is too large: each row has only {n_other} other rows to compare with "
                f"(rows used: {px.n if py is None else other.n}); pass topk < that."
            )
        plan.k = k
        if needs_rescoring(px):
            plan.k = max(k, min(n_other, widen if widen is not None else max(2 * k, k + 12)))
        # shared by the workers; in the value dtype (a rounded bound could exceed a k-th best)
        plan.bound = torch.full((px.n,), -torch.inf, dtype=precision.value, device=dev)
    if edges is not None:
        plan.edges = edges
        plan.bounds = (-1.0, 1.0) if metric in BOUNDED else (
            (0.0, np.inf) if metric == "euclidean" else None)
    if threshold is not None:
        limit = default_max_pairs(budget) if limit is None else limit
        note = f"limit {limit:,} pairs, {limit * 20 / 2**20:,.0f} MiB"
        plan.guard = PairGuard(threshold, threshold_below, limit, note)
        if needs_rescoring(px):
            plan.candidate = candidate_threshold(threshold, threshold_below, px, other)

    # the CPU epilogue clips values itself; fast mode without thresholded pairs takes
    # moments and histogram from the bit patterns and re-scores top-k: no clamping needed
    clamp = (plan.patterns is None and backend != "numba") or plan.guard is not None
    if engine == "ray":
        merged, run_meta = scan_tiles(px, py, size, plan, clamp, run_dev, slots,
                                      task_budget or budget, progress)
        n_workers = slots
    else:
        consumers = walk_blocks(px, py, size, lambda: ScanConsumer(plan), workers, progress,
                                clamp=clamp)
        merged, run_meta, n_workers = merge(consumers, plan), {"engine": "local"}, len(consumers)
    result = ScanResult(
        metric=metric, count=merged.count, mean=merged.mean, std=merged.std,
        min=merged.min, max=merged.max,
        n_zero=len(px.zero_rows), zero_rows=px.zero_rows,
        n_zero_y=0 if py is None else len(py.zero_rows), largest=largest,
    )
    if plan.edges is not None:
        result.counts, result.edges = merged.counts, plan.edges
        result.below, result.above = merged.below, merged.above
    if plan.k is not None:
        _fill_topk(result, merged.topk, px, other, k, largest, subset, budget, backend)
    if plan.guard is not None:
        _fill_pairs(result, merged.pairs, plan.guard, px, other, budget)
    result.meta = dict(
        device=str(run_dev), value_dtype=str(precision.value).replace("torch.", ""),
        matmul_dtype=str(precision.matmul).replace("torch.", ""), fast=precision.fast,
        backend=backend, block_size=size, memory_budget=budget, cached=px.data is not None,
        workers=n_workers, n_rows=px.n, n_cols=other.n,
        seconds=time.perf_counter() - t0, histogram_exact_rebinned=merged.n_fixed, **run_meta,
    )
    return result


def _fill_topk(
    result: ScanResult, best: tuple[torch.Tensor, torch.Tensor], px: Prepared,
    other: Prepared, k: int, largest: bool, subset: Any, budget: int, backend: str,
) -> None:
    vals, idx = best
    if needs_rescoring(px):
        vals, idx = rescore_topk(px, other, idx, k, largest, budget, backend)
    elif not largest:
        vals = -vals
    np_value = _np_value(px)
    vals, idx = to_numpy(vals).astype(np_value), to_numpy(idx)
    rows = select_rows(subset, len(px.source))
    rows = np.arange(len(px.source)) if rows is None else rows
    pos = np.searchsorted(px.rows, rows)
    pos = np.minimum(pos, px.n - 1)
    ok = px.rows[pos] == rows
    out_v = np.full((len(rows), k), np.nan, dtype=np_value)
    out_i = np.full((len(rows), k), -1, dtype=np.int64)
    out_v[ok] = vals[pos[ok]]
    out_i[ok] = other.rows[idx[pos[ok]]]
    result.rows, result.topk_values, result.topk_indices = rows, out_v, out_i


def _fill_pairs(
    result: ScanResult, pairs: tuple[torch.Tensor, ...], guard: PairGuard, px: Prepared,
    other: Prepared, budget: int,
) -> None:
    i, j, v = pairs
    if needs_rescoring(px) and len(i):
        v = exact_pairs(px, other, i, j, budget)
        keep = v <= guard.threshold if guard.below else v >= guard.threshold
        i, j, v = i[keep.to(i.device)], j[keep.to(j.device)], v[keep]
    i, j = px.rows[to_numpy(i)], other.rows[to_numpy(j)]
    order = np.lexsort((j, i))
    result.threshold = guard.threshold
    result.pairs_i, result.pairs_j = i[order], j[order]
    result.pairs_values = to_numpy(v).astype(_np_value(px))[order]


def _np_value(px: Prepared) -> type:
    """numpy dtype of reported values: float64 for float64 scans, else float32."""
    return np.float64 if px.precision.value == torch.float64 else np.float32
