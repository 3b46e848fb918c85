"""Rows handed to the measures that keep them (kNN, Spearman, RBF): checked once, one way."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lamina.errors import LaminaError


def real_rows(x: Any, where: str, *, float64: bool = False) -> np.ndarray:
    """``x`` (tensor or array) as a non-empty 2-D numpy array ``[N, d]`` of finite reals:
    float32 or float64 as given (any other dtype, or ``float64=True``: float64). Complex
    values, other shapes and NaN/inf rows (named) are refused."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise LaminaError(f"{where} must hold real numbers, got {t.dtype}.")
        keep = t.dtype == torch.float64 or (t.dtype == torch.float32 and not float64)
        x = (t if keep else t.double()).cpu().numpy()
    else:
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                or x.dtype == bool):
            raise LaminaError(f"{where} must hold real numbers, got dtype {x.dtype}.")
        if x.dtype != np.float64 and (float64 or x.dtype != np.float32):
            x = x.astype(np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise LaminaError(f"{where} must be a non-empty 2-D array [N, d], got shape "
                          f"{tuple(x.shape)}.")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise LaminaError(f"{where} has NaN or infinite values ({row_ids(bad)}): drop or "
                          "fill those rows (on both sides) first.")
    return x


def row_ids(rows: np.ndarray) -> str:
    """``row 3`` or ``12 rows: 0, 4, 9, 10, 11, ...`` for an error message."""
    if len(rows) == 1:
        return f"row {int(rows[0])}"
    head = ", ".join(str(int(r)) for r in rows[:5])
    return f"{len(rows)} rows: {head}{', ...' if len(rows) > 5 else ''}"
