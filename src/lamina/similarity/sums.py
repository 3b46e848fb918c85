"""``threshold_sums``: for every row of ``x``, the sum of per-row weights of the rows of ``y``
whose similarity is at or above each of a set of thresholds, in one streaming pass.

This is what "sum the next-token counts of every stored string at least this similar to the
prompt" needs at scale: the pairs above a threshold can be billions (a few percent of
20,000 x 858,923), far too many to list, but their weighted sums are one extra matrix product
per block, ``(values >= t) @ weights``, so memory stays at a block and the cost stays close to
that of the similarities themselves. On CPU a compiled kernel replaces that product: it lists
each row's members and adds their weights, which costs less while members are few.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lamina.ray_runtime import check_engine
from lamina.similarity._args import check_backend, check_int, resolve_backend, resolve_device
from lamina.similarity._blocks import walk_blocks
from lamina.similarity._errors import SimilarityInputError
from lamina.similarity._prepare import RowSource, prepare_inputs
from lamina.similarity._sum_consumer import SumConsumer


def _dense_weights(weights: Any, n_rows: int) -> torch.Tensor:
    """Weights (n_rows, m) as a float32 tensor (scipy sparse, numpy or torch)."""
    if weights is None:
        raise SimilarityInputError(
            f"weights is None; pass one row of weights per row of y ({n_rows}), e.g. "
            "numpy.ones(len(y)) to count the matches.")
    if hasattr(weights, "toarray"):  # scipy sparse
        weights = weights.toarray()
    if not isinstance(weights, torch.Tensor):
        try:
            weights = np.asarray(weights)
        except ValueError:  # ragged nested sequences
            weights = np.empty((0, 0), dtype=object)
        if weights.dtype != bool and not np.issubdtype(weights.dtype, np.number) or (
                np.iscomplexobj(weights)):
            raise SimilarityInputError(
                f"weights must hold real numbers, got dtype {weights.dtype}.")
        weights = torch.as_tensor(weights)
    elif weights.is_complex():
        raise SimilarityInputError(f"weights must hold real numbers, got dtype {weights.dtype}.")
    w = weights[:, None] if weights.dim() == 1 else weights
    if w.dim() != 2 or len(w) != n_rows:
        raise SimilarityInputError(
            f"weights must have one row per row of y ({n_rows}), got shape {tuple(w.shape)}.")
    w = w.to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise SimilarityInputError(
            "weights contain NaN or infinite values (or values beyond float32's range).")
    return w


def threshold_sums(
    x: Any,
    y: Any,
    weights: Any,
    thresholds: float | Sequence[float],
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    block_size: int | None = None,
    memory: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    backend: str = "auto",
    engine: str = "local",
) -> np.ndarray:
    """Sums of ``weights`` over the rows of ``y`` similar to each row of ``x``.

    Args:
        x: queries (N, d); y: rows (M, d) - tensors, arrays or a lazily read store site.
        weights: (M, m) per-row weights of y (dense or scipy sparse), e.g. next-token counts;
            a column of ones counts the matches.
        thresholds: one value or G values; a pair counts for threshold t when its similarity
            (float32, as :func:`~lamina.similarity.scan` computes it) is >= t.
        backend: "auto" (default: "numba" on CPU, "torch" on CUDA), "numba" (a compiled
            kernel lists each row's members and adds their weights; CPU only, else an error)
            or "torch" (one mask product per threshold and block). Both give the same sums.
        engine: "local" (default) or "ray": tiles of the block grid as Ray tasks, each
            summing over its band of y for its band of x; the driver adds the partial sums
            (integer weights: the same sums; float weights: equal to rounding). ``workers``
            is then the number of task slots the tiling aims at (see
            :func:`~lamina.similarity.scan`).

    Returns:
        ``sums`` (N, G, m) float64: ``sums[i, g] = sum_j [sim(x_i, y_j) >= t_g] weights[j]``.
        Rows of x or y that have no similarity (zero vectors for cosine) contribute nothing.
        The per-block products run in float32: integer weights are summed exactly while every
        sum stays below 2^24.
    """
    try:
        t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    except (TypeError, ValueError):
        t = np.empty(0)
    if t.ndim != 1 or len(t) == 0 or not np.all(np.isfinite(t)):
        raise SimilarityInputError(
            f"thresholds must be one or more finite numbers, got {thresholds!r}.")
    if y is None:
        raise SimilarityInputError(
            "y is None; pass the rows (M, d) whose weights are summed (y=x compares x with "
            "itself, each row included).")
    y = y if isinstance(y, RowSource) else RowSource(y, "y")
    w = _dense_weights(weights, len(y))  # checked before the pass over the rows
    workers = None if workers is None else check_int(workers, "workers")
    check_backend(backend)
    if check_engine(engine) == "ray":
        from lamina.similarity._ray_engine import ray_device, sums_tiles, task_block_size

        run_dev, slots = ray_device(device)
        slots, device = workers or slots, "cpu"  # the driver prepares the rows on CPU
    else:
        run_dev = resolve_device(device)
    backend = resolve_backend(backend, run_dev, torch.float32)
    px, py, size, budget = prepare_inputs(x, y, metric, None, None, device, None, False,
                                          memory, block_size)
    w = w.to(px.device)
    y_rows = torch.as_tensor(py.rows, device=px.device)
    thr = torch.as_tensor(t, dtype=torch.float32)
    compiled = backend == "numba"
    if engine == "ray":
        size, task_budget = task_block_size(run_dev, memory, block_size, size)
        usable, _ = sums_tiles(px, py, size, thr, w, y_rows, compiled, run_dev, slots,
                               task_budget or budget, progress)
    else:
        parts = walk_blocks(px, py, size,
                            lambda: SumConsumer(px.n, thr, w, y_rows, compiled), workers,
                            progress)
        usable = sum(p.out for p in parts).cpu().numpy()
    out = np.zeros((len(px.source), len(t), w.shape[1]), dtype=np.float64)
    out[px.rows] = usable
    return out
