"""Input handling: row sources (tensor, array or lazily read array-like), row subsets, metric
preparation (normalise / centre, drop zero vectors), devices, precisions and memory budgets."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamina.similarity._errors import SimilarityInputError

METRICS = ("cosine", "correlation", "dot", "euclidean")
#: metrics whose values lie in [-1, 1]; their values are clamped to that interval
BOUNDED = ("cosine", "correlation")
_FAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_GiB = 1 << 30


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SimilarityInputError(
            f"unknown metric {metric!r}; valid choices are {', '.join(map(repr, METRICS))}."
        )
    return metric


# --------------------------------------------------------------------------- devices, budgets
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Precision:
    """``value``: dtype of pair values and statistics; ``matmul``: dtype of the matrix
    products (lower in fast mode, where candidates are re-scored in ``value``)."""

    value: torch.dtype = torch.float32
    matmul: torch.dtype = torch.float32

    @property
    def fast(self) -> bool:
        return self.matmul != self.value


def resolve_precision(dtype: Any = None, fast: bool = False) -> Precision:
    """``None``/"float32": exact float32; "float64"; "bfloat16"/"float16" (or ``fast=True``):
    fast mode, low-precision products with float32 re-scoring."""
    if dtype is None:
        return Precision(torch.float32, torch.bfloat16 if fast else torch.float32)
    name = str(dtype).replace("torch.", "")
    if name in _FAST:
        return Precision(torch.float32, _FAST[name])
    if name in ("float32", "float64"):
        value = getattr(torch, name)
        return Precision(value, torch.bfloat16 if fast else value)
    raise SimilarityInputError(
        f"unknown dtype {dtype!r}; valid choices are None, 'float32', 'float64', 'bfloat16' and "
        "'float16' (the last two select fast mode)."
    )


def available_memory(device: torch.device) -> int:
    """Bytes currently free on ``device`` (CUDA: ``mem_get_info``; CPU: /proc/meminfo)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * _GiB


def memory_budget(device: torch.device, memory: int | None) -> int:
    """Working-memory budget in bytes: ``memory`` or a quarter of what is free (at most 1 GiB on
    CPU, 8 GiB on CUDA)."""
    if memory is not None:
        if memory <= 0:
            raise SimilarityInputError(f"memory must be a positive number of bytes, got {memory}.")
        return int(memory)
    cap = 8 * _GiB if device.type == "cuda" else _GiB
    return max(64 << 20, min(available_memory(device) // 4, cap))


def block_size(device: torch.device, budget: int, block: int | None) -> int:
    """Rows per block: about 16 bytes per element of a block of pair values fit the budget;
    at most 2048 on CPU (fastest there), 8192 on CUDA; a multiple of 64."""
    if block is not None:
        if block < 1:
            raise SimilarityInputError(f"block_size must be positive, got {block}.")
        return int(block)
    cap = 8192 if device.type == "cuda" else 2048
    b = min(cap, int(math.sqrt(budget / 16)))
    return max(64, b - b % 64)


# --------------------------------------------------------------------------- row sources
class RowSource:
    """Rows of ``x``: a torch tensor, a numpy array or an array-like with ``.shape`` and row
    slicing (read block by block, never whole)."""

    def __init__(self, x: Any, name: str = "x") -> None:
        self.name = name
        if isinstance(x, (torch.Tensor, np.ndarray)):
            self.kind = "tensor" if isinstance(x, torch.Tensor) else "numpy"
        elif hasattr(x, "shape") and hasattr(x, "__getitem__"):
            self.kind = "lazy"
        else:
            try:
                x = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise SimilarityInputError(
                    f"{name} must be a 2-D array of numbers (N, d); could not convert it: {exc}"
                ) from None
            self.kind = "numpy"
        self.x = x
        shape = tuple(int(s) for s in x.shape)
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
        return block if isinstance(block, torch.Tensor) else _to_tensor(block, self.name)

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


def _to_tensor(block: Any, name: str) -> torch.Tensor:
    arr = np.asarray(block)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise SimilarityInputError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise SimilarityInputError(f"{name} must hold real numbers, got complex values.")
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
    """Prepare raw rows (n, d) for ``metric`` in ``value`` (norms and centring in float64).
    Returns ``(u, keep, sqnorm)``: prepared rows (n, d), a mask of usable rows (n,), and for
    dot and euclidean the squared norms (n,) (else an empty tensor). ``ids`` name the rows in
    errors."""
    x = raw if raw.dtype in (torch.float32, torch.float64) else raw.to(value)
    # one cheap reduction; only if it is not finite look for the culprit
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
        raise SimilarityInputError(
            f"row {bad if ids is None else int(ids[bad])} contains NaN or infinite values; drop "
            "or fill such rows (or pass subset=) before computing similarities."
        )
    empty = x.new_empty(0, dtype=value)
    if metric in ("dot", "euclidean"):
        sq = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square()
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
        return x.to(value), keep, sq.to(value)
    if metric == "correlation":
        x = x.to(torch.float64)
        scale = torch.linalg.vector_norm(x, dim=1)
        x = x - x.mean(1, keepdim=True)
        norm = torch.linalg.vector_norm(x, dim=1)
        keep = norm > 1e-12 * scale  # constant rows have no correlation
    else:
        wide = value == torch.float64 or x.dtype == torch.float64
        norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64 if wide else None)
        if not wide and not bool(torch.isfinite(norm).all()):
            norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)  # huge values
        keep = norm > 0
    safe = torch.where(keep, norm, 1.0)
    if value == torch.float64 or x.dtype == torch.float64 or not bool(
            torch.isfinite(safe.to(value)).all()):
        return (x.to(torch.float64) / safe.to(torch.float64)[:, None]).to(value), keep, empty
    return x.to(value) / safe.to(value)[:, None], keep, empty


@dataclass
class Prepared:
    """Usable rows of one input, prepared for a metric.

    ``rows``: original row ids (ascending) of usable rows; ``zero_rows``: ids dropped as zero
    (cosine) or constant (correlation) vectors; ``data``: prepared rows (n, d) on the device
    when cached (else re-read per block); ``sqnorm``: squared norms (dot, euclidean)."""

    source: RowSource
    metric: str
    precision: Precision
    device: torch.device
    rows: np.ndarray
    zero_rows: np.ndarray
    data: torch.Tensor | None
    data_mm: torch.Tensor | None
    sqnorm: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def d(self) -> int:
        return self.source.shape[1]

    @property
    def max_norm(self) -> float:
        """Largest row norm (1 for cosine and correlation)."""
        if self.metric in ("cosine", "correlation") or self.sqnorm.numel() == 0:
            return 1.0
        return float(self.sqnorm.max().to(torch.float64).sqrt())

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
            sqs.append(sq[keep])
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
    return Prepared(source, metric, precision, device, rows, zero_rows, data, data_mm, sqnorm)


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SimilarityInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
