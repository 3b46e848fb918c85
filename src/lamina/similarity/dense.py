"""``matrix``: the full matrix of pair values, only when asked and only when it fits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lamina.similarity._args import available_memory
from lamina.similarity._blocks import Block, walk_blocks
from lamina.similarity._errors import MemoryLimitError
from lamina.similarity._prepare import prepare_inputs, select_rows

_NP = {torch.float32: np.float32, torch.float64: np.float64}


def matrix(
    x: Any,
    y: Any = None,
    metric: str = "cosine",
    dtype: Any = None,
    *,
    subset: Any = None,
    subset_y: Any = None,
    device: str | torch.device | None = None,
    block_size: int | None = None,
    memory: int | None = None,
) -> np.ndarray:
    """The (N, N) matrix of ``metric`` between rows of ``x`` (or (N, M) against ``y``), as a
    numpy array (float32 unless ``dtype="float64"``; "bfloat16"/"float16" compute the products
    in that precision). Rows follow ``subset`` order when given, else the input order.

    Computed block by block with the same kernel as :func:`scan`, so its entries are the values
    ``scan`` counts. Rows that are zero vectors (cosine) or constant (correlation) have no
    value: their rows and columns are 0 (never NaN); the diagonal is computed like any entry.
    Raises :class:`MemoryLimitError` when the matrix would exceed ``memory`` (default: half of
    free memory)."""
    px, py, size, _ = prepare_inputs(
        x, y, metric, subset, subset_y, device, dtype, False, memory, block_size
    )
    other = px if py is None else py
    value = px.precision.value
    np_dtype = _NP.get(value, np.float32)
    rows_x = _order(subset, len(px.source))
    rows_y = rows_x if py is None else _order(subset_y, len(py.source))
    need = len(rows_x) * len(rows_y) * np.dtype(np_dtype).itemsize
    limit = memory if memory is not None else available_memory(torch.device("cpu")) // 2
    if need > limit:
        raise MemoryLimitError(
            f"the {len(rows_x):,} x {len(rows_y):,} matrix needs {need / 2**30:.2f} GiB but the "
            f"limit is {limit / 2**30:.2f} GiB; use lamina.similarity.scan() for histograms, "
            "top-k and thresholds without the matrix, or pass subset= (or a larger memory=)."
        )
    out = np.zeros((len(rows_x), len(rows_y)), dtype=np_dtype)
    # positions of usable rows inside the output (rows follow the caller's order)
    at_x = _positions(px.rows, rows_x)
    at_y = at_x if py is None else _positions(other.rows, rows_y)

    class Writer:  # each worker writes its blocks into disjoint parts of ``out``
        def consume(self, blk: Block) -> None:
            s = blk.values.cpu().numpy().astype(np_dtype, copy=False)
            r, c = s.shape
            ri, ci = at_x[blk.r0 : blk.r0 + r], at_y[blk.c0 : blk.c0 + c]
            out[np.ix_(ri, ci)] = s
            if py is None and not blk.diagonal:
                out[np.ix_(ci, ri)] = s.T

    walk_blocks(px, py, size, Writer)
    return out


def _order(subset: Any, n: int) -> np.ndarray:
    sel = select_rows(subset, n)
    return np.arange(n) if sel is None else sel


def _positions(usable: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in ``rows`` (the output order) of each usable row id (``usable`` ascending)."""
    where = np.empty(int(rows.max()) + 1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return where[usable]
