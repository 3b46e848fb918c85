"""Input preparation: row sources (tensor, array or lazily read array-like), row subsets, metric
preparation (normalise / centre, drop zero vectors), the range check of dot and euclidean
values, and :func:`prepare_inputs`, which validates and prepares x (and y) for every entry
point of the engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamina.similarity._args import (
    BOUNDED,
    Precision,
    block_size,
    check_metric,
    memory_budget,
    resolve_device,
    resolve_precision,
)
from lamina.similarity._errors import SimilarityInputError


# --------------------------------------------------------------------------- row sources
class RowSource:
    """Rows of ``x``: a torch tensor, a numpy array or an array-like with ``.shape`` and row
    slicing (read block by block, never whole)."""

    def __init__(self, x: Any, name: str = "x") -> None:
        self.name = name
        if x is None:
            raise SimilarityInputError(f"{name} is None; pass a 2-D array of numbers (N, d).")
        if isinstance(x, (torch.Tensor, np.ndarray)):
            self.kind = "tensor" if isinstance(x, torch.Tensor) else "numpy"
            _check_dtype(x.dtype, name)
        elif hasattr(x, "shape") and hasattr(x, "__getitem__"):
            self.kind = "lazy"  # its blocks' dtypes are checked as they are read
        else:
            try:
                x = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise SimilarityInputError(
                    f"{name} must be a 2-D array of numbers (N, d); could not convert it: {exc}"
                ) from None
            self.kind = "numpy"
        self.x = x
        try:
            shape = tuple(int(s) for s in x.shape)
        except (TypeError, ValueError):
            raise SimilarityInputError(
                f"{name} must be a 2-D array of numbers (N, d); its shape is {x.shape!r}."
            ) from None
        if len(shape) != 2:
            raise SimilarityInputError(f"{name} must be 2-D (N, d), got shape {shape}.")
        if shape[0] == 0 or shape[1] == 0:
            raise SimilarityInputError(f"{name} is empty (shape {shape}); pass at least one row.")
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as a tensor (on the source's device)."""
        block = self.x[start:stop]
        if isinstance(block, torch.Tensor):
            if self.kind == "lazy":
                _check_dtype(block.dtype, self.name)
            return block
        return _to_tensor(block, self.name)

    def take(self, ids: np.ndarray, max_span: int = 4096) -> torch.Tensor:
        """Rows ``ids`` (ascending, unique). Lazy sources are read in spans of nearby rows."""
        if self.kind == "tensor":
            return self.x.index_select(0, torch.as_tensor(ids, device=self.x.device))
        if self.kind == "numpy":
            return _to_tensor(self.x[ids], self.name)
        parts, i = [], 0
        while i < len(ids):  # merge ids whose gaps are small into one slice read
            j = i + 1
            while j < len(ids) and ids[j] - ids[j - 1] <= 32 and ids[j] - ids[i] < max_span:
                j += 1
            block = self.read(int(ids[i]), int(ids[j - 1]) + 1)
            parts.append(block[torch.as_tensor(ids[i:j] - ids[i], device=block.device)])
            i = j
        return torch.cat(parts)


def _check_dtype(dtype: Any, name: str) -> None:
    """Real numbers only: complex values would lose their imaginary part, strings and objects
    are no vectors."""
    if isinstance(dtype, torch.dtype):
        ok = not (dtype.is_complex or dtype in (torch.quint8, torch.qint8, torch.qint32))
        kind = str(dtype).replace("torch.", "")
    else:
        ok = np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.integer) or (
            np.issubdtype(dtype, np.floating))
        kind = str(dtype)
    if not ok:
        raise SimilarityInputError(f"{name} must hold real numbers, got dtype {kind}.")


def _to_tensor(block: Any, name: str) -> torch.Tensor:
    arr = np.asarray(block)
    _check_dtype(arr.dtype, name)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def select_rows(
    subset: Sequence[int] | np.ndarray | torch.Tensor | None, n: int, name: str = "subset"
) -> np.ndarray | None:
    """Row ids (int64) in the caller's order from an index list or a boolean mask, or ``None``
    for all rows. Repeated or out-of-range ids are errors."""
    if subset is None:
        return None
    sel = subset.detach().cpu().numpy() if isinstance(subset, torch.Tensor) else np.asarray(subset)
    if sel.ndim != 1:
        raise SimilarityInputError(f"{name} must be 1-D (indices or a boolean mask).")
    if sel.dtype == bool:
        if len(sel) != n:
            raise SimilarityInputError(
                f"boolean {name} has length {len(sel)} but there are {n} rows; pass one flag a row."
            )
        sel = np.flatnonzero(sel)
    elif len(sel) and not np.issubdtype(sel.dtype, np.integer):
        raise SimilarityInputError(f"{name} must hold integer row indices or booleans.")
    sel = sel.astype(np.int64)
    if len(sel) == 0:
        raise SimilarityInputError(f"{name} selects no rows; pass at least one row.")
    sel = np.where(sel < 0, sel + n, sel)
    if sel.min() < 0 or sel.max() >= n:
        raise SimilarityInputError(f"{name} has indices outside 0..{n - 1}.")
    if len(np.unique(sel)) != len(sel):
        raise SimilarityInputError(f"{name} repeats row indices; pass each row once.")
    return sel


# --------------------------------------------------------------------------- preparation
def prep_rows(
    raw: torch.Tensor, metric: str, value: torch.dtype, ids: np.ndarray | None = None
) -> tuple[torch.Tensor, ...]:
    """Prepare raw rows (n, d) for ``metric`` in ``value``. Returns ``(u, keep, sq)``: prepared
    rows (n, d), a mask of usable rows (n,), and for dot and euclidean the squared norms (n,)
    in float64 (else an empty tensor). ``ids`` name the rows in errors.

    Cosine and correlation divide each row by its largest absolute entry before taking its
    norm, so rows of any magnitude (1e-30 or 1e30) are normalised without underflow or
    overflow; only rows that are exactly zero (cosine) or constant (correlation) are not
    usable. Correlation centres in float64."""
    x = raw if raw.dtype in (torch.float32, torch.float64) else raw.to(value)
    # one cheap reduction; only if it is not finite look for the culprit
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
        raise SimilarityInputError(
            f"row {bad if ids is None else int(ids[bad])} contains NaN or infinite values; drop "
            "or fill such rows (or pass subset=) before computing similarities."
        )
    if metric in ("dot", "euclidean"):
        sq = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square()
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
        return x.to(value), keep, sq
    wide = metric == "correlation" or value == torch.float64 or x.dtype == torch.float64
    x = x.to(torch.float64 if wide else torch.float32)
    peak = torch.linalg.vector_norm(x, ord=math.inf, dim=1)  # largest |entry| of each row
    keep = peak > 0
    y = x / torch.where(keep, peak, 1.0)[:, None]  # entries in [-1, 1], one of them +-1
    if metric == "correlation":
        scale = torch.linalg.vector_norm(y, dim=1)
        y -= y.mean(1, keepdim=True)
        norm = torch.linalg.vector_norm(y, dim=1)
        keep = norm > 1e-12 * scale  # constant rows have no correlation
    else:
        norm = torch.linalg.vector_norm(y, dim=1)  # >= 1 for rows that are not zero
    y /= torch.where(keep, norm, 1.0)[:, None]
    return y.to(value), keep, x.new_empty(0, dtype=value)


@dataclass
class Prepared:
    """Usable rows of one input, prepared for a metric.

    ``rows``: original row ids (ascending) of usable rows; ``zero_rows``: ids dropped as zero
    (cosine) or constant (correlation) vectors; ``data``: prepared rows (n, d) on the device
    when cached (else re-read per block); ``sqnorm``: squared norms (dot, euclidean) and
    ``max_sq`` the largest of them, in float64."""

    source: RowSource
    metric: str
    precision: Precision
    device: torch.device
    rows: np.ndarray
    zero_rows: np.ndarray
    data: torch.Tensor | None
    data_mm: torch.Tensor | None
    sqnorm: torch.Tensor
    max_sq: float = 1.0

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def d(self) -> int:
        return self.source.shape[1]

    @property
    def max_norm(self) -> float:
        """Largest row norm (1 for cosine and correlation)."""
        return 1.0 if self.metric in BOUNDED else math.sqrt(self.max_sq)

    def _load(self, ids: np.ndarray) -> torch.Tensor:
        if len(ids) and ids[-1] - ids[0] == len(ids) - 1:
            raw = self.source.read(int(ids[0]), int(ids[-1]) + 1)
        else:
            raw = self.source.take(ids)
        u, _, _ = prep_rows(raw.to(self.device), self.metric, self.precision.value, ids)
        return u

    def block(self, p0: int, p1: int, matmul: bool = False) -> torch.Tensor:
        """Prepared rows at positions ``p0:p1`` (in the matmul dtype when ``matmul``)."""
        if matmul and self.data_mm is not None:
            return self.data_mm[p0:p1]
        u = self.data[p0:p1] if self.data is not None else self._load(self.rows[p0:p1])
        return u.to(self.precision.matmul) if matmul else u

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """Prepared rows (value dtype) at arbitrary ``positions`` (any shape) -> (*shape, d)."""
        flat = positions.reshape(-1)
        if self.data is not None and self.device.type == "cpu":  # numpy's take is faster
            rows = np.take(self.data.numpy(), flat.cpu().numpy(), axis=0)
            out = torch.from_numpy(rows)
        elif self.data is not None:
            out = self.data.index_select(0, flat.to(self.device))
        else:
            uniq, inverse = torch.unique(flat.cpu(), return_inverse=True)
            out = self._load(self.rows[uniq.numpy()]).index_select(0, inverse.to(self.device))
        return out.reshape(*positions.shape, self.d)


def prepare(
    source: RowSource,
    metric: str,
    precision: Precision,
    device: torch.device,
    budget: int,
    ids: np.ndarray | None = None,
    chunk: int = 4096,
    visit: Any = None,
) -> Prepared:
    """One pass over the (selected) rows: validate, find zero rows, and cache the prepared rows
    on the device when they fit half the budget. ``visit(u, ids)`` sees every chunk of
    prepared usable rows with their row ids (for statistics taken in the same pass)."""
    n_all, d = source.shape
    ids = np.arange(n_all, dtype=np.int64) if ids is None else np.sort(ids)
    item = precision.value.itemsize + (precision.matmul.itemsize if precision.fast else 0)
    cache = len(ids) * d * item <= budget // 2
    chunk = max(64, min(chunk, budget // max(1, 32 * d)))
    keeps, sqs = [], []
    max_sq = 0.0
    data = data_mm = None
    if cache:  # filled in place; rows of zero vectors are dropped at the end
        data = torch.empty(len(ids), d, dtype=precision.value, device=device)
        if precision.fast:
            data_mm = torch.empty(len(ids), d, dtype=precision.matmul, device=device)
    for s in range(0, len(ids), chunk):
        sel = ids[s : s + chunk]
        if sel[-1] - sel[0] == len(sel) - 1:
            raw = source.read(int(sel[0]), int(sel[-1]) + 1)
        else:
            raw = source.take(sel)
        u, keep, sq = prep_rows(raw.to(device), metric, precision.value, sel)
        keeps.append(keep.cpu().numpy())
        if visit is not None:
            visit(u if bool(keeps[-1].all()) else u[keep], sel[keeps[-1]])
        if metric in ("dot", "euclidean"):
            max_sq = max(max_sq, float(sq.max()))
            sqs.append(sq.to(precision.value))
        if cache:
            data[s : s + len(sel)] = u
            if data_mm is not None:
                data_mm[s : s + len(sel)] = u
    keep_all = np.concatenate(keeps)
    rows, zero_rows = ids[keep_all], ids[~keep_all]
    sqnorm = torch.cat(sqs) if sqs else torch.empty(0, dtype=precision.value, device=device)
    if cache and len(zero_rows):
        keep_t = torch.as_tensor(keep_all, device=device)
        data = data[keep_t]
        data_mm = None if data_mm is None else data_mm[keep_t]
    return Prepared(source, metric, precision, device, rows, zero_rows, data, data_mm, sqnorm,
                    1.0 if metric in BOUNDED else max_sq)


def check_value_range(px: Prepared, py: Prepared | None) -> None:
    """Dot products (and, for euclidean, squared distances) must fit the dtypes of the values
    and of the products: bounded by the largest row norms, they are checked before any block
    is computed, so no value overflows to inf (a NaN mean, infinite extremes) or underflows to
    zero without a word."""
    if px.metric in BOUNDED:
        return
    other = px if py is None else py
    a, b = math.sqrt(px.max_sq), math.sqrt(other.max_sq)
    dot = px.metric == "dot"
    peak = a * b if dot else (a + b) ** 2
    what = "dot products" if dot else "squared distances"
    largest = max(a, b)
    norms = f"norms up to {largest:.3g}" if math.isfinite(largest) else "norms beyond float64"
    rescale = "rescale the rows" + (f" (e.g. divide them by their largest norm, {largest:.3g})"
                                    if math.isfinite(largest) else "")
    for dtype in dict.fromkeys((px.precision.value, px.precision.matmul)):
        info, name = torch.finfo(dtype), str(dtype).replace("torch.", "")
        if dtype == torch.float16:
            remedy = f"{rescale}, or pass dtype='bfloat16' or None"
        elif dtype != torch.float64:
            remedy = f"{rescale}, use metric='cosine', or pass dtype='float64'"
        else:
            remedy = f"{rescale} or use metric='cosine'"
        if not peak <= info.max / 4:
            raise SimilarityInputError(
                f"{px.metric} values would overflow: rows have {norms}, so {what} reach "
                f"{peak:.3g}, beyond {name}'s range ({info.max:.3g}); {remedy}."
            )
        if 0 < peak < info.tiny:
            raise SimilarityInputError(
                f"{px.metric} values would underflow: rows have {norms}, so {what} stay "
                f"below {peak:.3g}, under {name}'s smallest "
                f"normal number ({info.tiny:.3g}), and would lose their precision or be 0; "
                f"{remedy}."
            )



# --------------------------------------------------------------------------- entry point
def prepare_inputs(
    x: Any, y: Any, metric: str, subset: Any, subset_y: Any, device: Any, dtype: Any,
    fast: bool, memory: int | None, block: int | None, visit: Any = None,
) -> tuple[Prepared, Prepared | None, int, int]:
    """Validate and prepare x (N, d) (and y (M, d)): returns ``(px, py, block_size, budget)``.
    ``visit`` sees x's prepared chunks (see :func:`prepare`). Dot and euclidean values are
    checked to fit the dtype (:func:`check_value_range`)."""
    check_metric(metric)
    dev = resolve_device(device)
    precision = resolve_precision(dtype, fast)
    budget = memory_budget(dev, memory)
    size = block_size(dev, budget, block)
    src_x = x if isinstance(x, RowSource) else RowSource(x, "x")
    src_y = None if y is None else y if isinstance(y, RowSource) else RowSource(y, "y")
    if src_y is not None and src_y.shape[1] != src_x.shape[1]:
        raise SimilarityInputError(
            f"x has vectors of width {src_x.shape[1]} but y of width {src_y.shape[1]}; "
            "both must have the same width d."
        )
    if src_y is None and subset_y is not None:
        raise SimilarityInputError("subset_y needs y; pass y= or use subset= for x.")
    sel_x = select_rows(subset, len(src_x))
    sel_y = None if src_y is None else select_rows(subset_y, len(src_y), "subset_y")
    px = prepare(src_x, metric, precision, dev, budget, sel_x, visit=visit)
    py = None if src_y is None else prepare(src_y, metric, precision, dev, budget, sel_y)
    what = "zero vectors" if metric == "cosine" else "constant rows"
    if py is None and px.n < 2:
        raise SimilarityInputError(
            f"need at least 2 rows to form a pair; x has {px.n} usable rows "
            f"({len(px.zero_rows)} {what} excluded)."
        )
    if py is not None and (px.n < 1 or py.n < 1):
        raise SimilarityInputError(f"x or y has no usable rows (all are {what}).")
    check_value_range(px, py)
    return px, py, size, budget
