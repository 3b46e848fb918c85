"""RBF-kernel CKA (Kornblith et al. 2019), exact, for N that fits: ``cka_rbf``.

Unlike linear CKA, an RBF kernel has no streamed form: every pair's kernel value depends on
the pair's distance, and the bandwidth on the median distance of all pairs. So this measure is
computed only when asked for and only up to :data:`RBF_MAX_ROWS` rows (larger inputs are
refused with a clear error), from the rows kept in memory. Per site the N x N kernel is
``K_ij = exp(-||x_i - x_j||^2 / (2 threshold^2 m))`` with ``m`` the median of all N^2 squared
distances, the diagonal's zeros included, as Kornblith et al.'s code takes it (ckatorch's port
takes torch's lower median: the same for odd N); it is double-centred, and CKA is
``<K~, L~>_F / (||K~||_F ||L~||_F)`` in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lamina.errors import LaminaError

#: Most rows for which ``cka_rbf`` is computed: one float64 N x N matrix per site of B held at
#: once (128 MB each at 4,000 rows).
RBF_MAX_ROWS = 4000


def _centred_kernel(x: Any, threshold: float) -> torch.Tensor:
    """The double-centred RBF Gram matrix of rows ``x`` ``[N, d]``, float64 ``[N, N]``."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor)
                        else x.detach().double().cpu())
    sq_norms = (x * x).sum(1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_(min=0.0)
    sq.fill_diagonal_(0.0)
    median = float(np.median(sq.numpy()))  # as Kornblith et al.'s numpy code
    k = torch.exp(-sq / (2.0 * threshold**2 * median)) if median > 0 else torch.ones_like(sq)
    k -= k.mean(0, keepdim=True)
    k -= k.mean(1, keepdim=True)
    return k


def rbf_cka(rows_a: Mapping[str, Any], rows_b: Mapping[str, Any], *,
            threshold: float = 1.0) -> list[dict]:
    """``cka_rbf`` for every (site_a, site_b) pair of rows ``[N, d]`` (the same N rows on both
    sides), as :meth:`StreamedMeasures.values` records. ``threshold``: the bandwidth as a
    fraction of the median pairwise distance (Kornblith et al.'s default 1.0)."""
    n = {len(v) for v in (*rows_a.values(), *rows_b.values())}
    if len(n) != 1:
        raise LaminaError(f"cka_rbf needs the same rows on both sides; got row counts {n}.")
    n_rows = n.pop()
    if n_rows > RBF_MAX_ROWS:
        raise LaminaError(
            f"cka_rbf builds an N x N kernel per site and is computed up to {RBF_MAX_ROWS:,} "
            f"rows; these inputs give {n_rows:,}: pass max_rows={RBF_MAX_ROWS} or use 'cka' "
            "(linear, streamed, no limit).",
            cli=f"cka_rbf is computed up to {RBF_MAX_ROWS:,} rows; these inputs give "
                f"{n_rows:,}: pass --max-rows {RBF_MAX_ROWS} or --measure cka.")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise LaminaError(f"threshold must be a positive number, not {threshold!r}.")
    kb = {s: _centred_kernel(v, threshold) for s, v in rows_b.items()}
    norm_b = {s: float(k.norm()) for s, k in kb.items()}
    out = []
    for sa, va in rows_a.items():
        ka = _centred_kernel(va, threshold)
        norm_a = float(ka.norm())
        for sb, k in kb.items():
            denom = norm_a * norm_b[sb]
            value = float((ka * k).sum()) / denom if denom > 0 else math.nan
            note = None if denom > 0 else "a kernel is constant after centring (all rows equal)"
            out.append({"site_a": sa, "site_b": sb, "measure": "cka_rbf", "value": value,
                        "note": note})
    return out
