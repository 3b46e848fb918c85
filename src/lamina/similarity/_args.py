"""Arguments of the similarity engine: checks of scalar options (each bad value raises
:class:`SimilarityInputError` naming the parameter), metrics, devices, precisions, CPU backends
and memory budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamina import checks
from lamina.similarity._errors import SimilarityInputError

METRICS = ("cosine", "correlation", "dot", "euclidean")
#: ``backend=``: "auto" picks "numba" (compiled one-pass CPU kernels) for float32 values on
#: CPU and "torch" (tensor passes, what CUDA and float64 use) otherwise
BACKENDS = ("auto", "torch", "numba")
#: metrics whose values lie in [-1, 1]; their values are clamped to that interval
BOUNDED = ("cosine", "correlation")
_FAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_GiB = 1 << 30


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or an error unless it is an integer >= ``minimum``."""
    return checks.check_int(value, name, minimum, error=SimilarityInputError)


def check_real(value: Any, name: str) -> float:
    """``value`` as a float, or an error unless it is a finite real number (NaN would select
    nothing and say nothing)."""
    return checks.check_number(value, name, error=SimilarityInputError)


def check_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise SimilarityInputError(
            f"unknown metric {metric!r}; valid choices are {', '.join(map(repr, METRICS))}."
        )
    return metric


# --------------------------------------------------------------------------- devices, precisions
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU; an unknown or unavailable device is an
    error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SimilarityInputError(
            f"unknown device {device!r}; pass 'cpu', 'cuda' (or 'cuda:N') or None (CUDA when "
            "available)."
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SimilarityInputError(
                f"device {device!r} was asked but CUDA is not available here; pass "
                "device='cpu' (or None)."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SimilarityInputError(
                f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices "
                f"(0..{torch.cuda.device_count() - 1})."
            )
    elif dev.type != "cpu":
        raise SimilarityInputError(
            f"the similarity engine runs on 'cpu' or 'cuda', got device {device!r}."
        )
    return dev


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
    fast mode, low-precision products with float32 re-scoring. Torch and numpy dtypes are
    accepted by name."""
    if dtype is None:
        return Precision(torch.float32, torch.bfloat16 if fast else torch.float32)
    name = str(dtype).replace("torch.", "")
    if not isinstance(dtype, (str, torch.dtype)):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name in _FAST:
        return Precision(torch.float32, _FAST[name])
    if name in ("float32", "float64"):
        value = getattr(torch, name)
        return Precision(value, torch.bfloat16 if fast else value)
    raise SimilarityInputError(
        f"unknown dtype {dtype!r}; valid choices are None, 'float32', 'float64', 'bfloat16' and "
        "'float16' (the last two select fast mode)."
    )


def check_backend(backend: Any) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else an error naming the three."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise SimilarityInputError(
            f"unknown backend {backend!r}; valid choices are 'auto' (numba for float32 values "
            "on CPU, torch otherwise), 'torch' and 'numba'."
        )
    return backend


def resolve_backend(backend: Any, device: torch.device, value: torch.dtype) -> str:
    """The backend that runs: "numba" or "torch". "auto" is "numba" for float32 values on CPU
    (the compiled kernels of ``_cpu_kernels``), else "torch"; "numba" where it cannot run
    (CUDA, values other than float32) is an error saying what to pass instead."""
    check_backend(backend)
    numba_ok = device.type == "cpu" and value == torch.float32
    if backend == "auto":
        return "numba" if numba_ok else "torch"
    if backend == "numba" and not numba_ok:
        if device.type != "cpu":
            why = f"it runs on CPU only and this computation runs on {device}"
        else:
            name = str(value).replace("torch.", "")
            why = f"it handles float32 values only and this computation uses {name}"
        raise SimilarityInputError(
            f"backend='numba' cannot run here: {why}; pass backend='torch' or 'auto' (or "
            "device='cpu' with float32 values, dtype=None, to use numba)."
        )
    return backend


# --------------------------------------------------------------------------- memory
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
        return check_int(memory, "memory (bytes)")
    cap = 8 * _GiB if device.type == "cuda" else _GiB
    return max(64 << 20, min(available_memory(device) // 4, cap))


def block_size(device: torch.device, budget: int, block: int | None) -> int:
    """Rows per block: about 16 bytes per element of a block of pair values fit the budget;
    at most 2048 on CPU (fastest there), 8192 on CUDA; a multiple of 64."""
    if block is not None:
        return check_int(block, "block_size")
    cap = 8192 if device.type == "cuda" else 2048
    b = min(cap, int(math.sqrt(budget / 16)))
    return max(64, b - b % 64)
