"""Spearman RSA: the Spearman correlation between two similarity structures, exact.

For each site, the cosine similarity (``kind="cosine"``) or Pearson-correlation similarity
(``kind="correlation"``: rows centred, then cosine) of every unique pair of rows i < j,
computed in float64 in row blocks (no N x N matrix: block rows against all rows, keeping the
upper triangle); the pair values are ranked (ties get their average rank, as
``scipy.stats.rankdata``); the value is the Pearson correlation of the two sites' ranks over all
N (N - 1) / 2 pairs, i.e. ``scipy.stats.spearmanr`` of the two upper triangles.

Exact ranks need every pair value at once, so the size is bounded: N <= SPEARMAN_MAX_ROWS. Each
site's ranks are kept as int32 (twice the average rank), 2 N^2 bytes: 32 MB per site at
4,000 rows; ranking one site takes up to about 25 N^2 bytes more for a moment (the pair values,
their sort order and tie groups: about 400 MB at 4,000 rows), which keeps the peak under 1 GB
for a few dozen sites. Above the limit :func:`spearman_rsa` refuses with an error saying what to
do: Pearson ``rsa``, which is exact at any N from streamed sums, or the same rows subsampled on
both sides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lamina.analyses.compare._rows import real_rows, row_ids
from lamina.errors import LaminaError

#: Most rows for which ``rsa_spearman`` is computed (exactly); refused above.
SPEARMAN_MAX_ROWS = 4000
KINDS = {"cosine": "rsa_spearman", "correlation": "rsa_spearman_correlation"}
_BLOCK_ENTRIES = 1 << 22  # block rows x N entries per product (32 MB of float64)


def _unit_rows(x: Any, kind: str, where: str) -> np.ndarray:
    """Rows as float64 unit vectors (centred first for ``correlation``); bad rows refused."""
    x = real_rows(x, where, float64=True)
    scale = np.linalg.norm(x, axis=1)
    if kind == "correlation":
        x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1)
    what = "constant" if kind == "correlation" else "exactly zero"
    # a constant row centres to rounding noise: no direction left (as the similarity engine)
    bad = np.flatnonzero((norm == 0) | (norm <= 1e-12 * scale))
    if len(bad):
        raise LaminaError(f"{where} has rows that are {what} ({row_ids(bad)}): their {kind} "
                          "similarity with any row is undefined. Drop those rows on both sides "
                          "first.")
    return x / norm[:, None]


def pair_values(u: np.ndarray) -> np.ndarray:
    """The upper triangle (i < j, row-major) of ``u @ u.T``, computed in row blocks:
    N (N - 1) / 2 float64 values."""
    n = len(u)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    step = max(1, _BLOCK_ENTRIES // n)
    cols = np.arange(n)
    pos = 0
    for s in range(0, n, step):
        block = u[s: s + step] @ u.T
        keep = cols[None, :] > np.arange(s, s + len(block))[:, None]
        vals = block[keep]
        out[pos: pos + len(vals)] = vals
        pos += len(vals)
    return out


def doubled_ranks(values: np.ndarray) -> np.ndarray:
    """Twice the average rank (1-based, ties averaged) of each value, as int32."""
    sv_t, order_t = torch.sort(torch.from_numpy(values))
    sv, order = sv_t.numpy(), order_t.numpy()
    new = np.empty(len(sv), dtype=bool)
    new[:1] = True
    np.not_equal(sv[1:], sv[:-1], out=new[1:])
    del sv, sv_t
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values), dtype=np.int32)
    ranks[order] = np.repeat((starts + 1 + ends).astype(np.int32), ends - starts)
    return ranks


def _centred_dot(ra: np.ndarray, rb: np.ndarray) -> float:
    """sum((ra - P - 1) * (rb - P - 1)) in float64, in chunks (the doubled mean rank is
    P + 1)."""
    mean, total, step = len(ra) + 1, 0.0, 1 << 20
    for s in range(0, len(ra), step):
        ca = ra[s: s + step].astype(np.float64) - mean
        cb = ca if rb is ra else rb[s: s + step].astype(np.float64) - mean
        total += float(np.dot(ca, cb))
    return total


def _prepare(x: Any, kind: str, where: str) -> tuple[np.ndarray, float]:
    """A site's doubled ranks and their sum of squared deviations."""
    r = doubled_ranks(pair_values(_unit_rows(x, kind, where)))
    return r, _centred_dot(r, r)


def spearman_rsa(rows_a: Mapping[str, torch.Tensor | np.ndarray],
                 rows_b: Mapping[str, torch.Tensor | np.ndarray], *,
                 kind: str = "cosine") -> list[dict]:
    """Spearman RSA for every (site_a, site_b) pair, exact (see the module doc).

    rows_a[site], rows_b[site]: [N, d_site] (numpy or torch), row i the same input everywhere;
    N <= SPEARMAN_MAX_ROWS. kind: ``"cosine"`` (measure ``rsa_spearman``) or ``"correlation"``
    (``rsa_spearman_correlation``).

    Returns one dict per pair, keys ``site_a``, ``site_b``, ``measure``, ``value``, ``note``
    (None, or why a value is NaN). Memory: 2 N^2 bytes per site of ``rows_b`` plus one site of
    ``rows_a`` at a time, plus about 20 N^2 bytes while ranking.
    """
    if kind not in KINDS:
        raise LaminaError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    for side, rows in (("rows_a", rows_a), ("rows_b", rows_b)):
        if not isinstance(rows, Mapping) or not rows:
            raise LaminaError(f"{side} must be a non-empty mapping site -> array [N, d].")
    sizes = {f"{side}:{s}": len(x) for side, rows in (("a", rows_a), ("b", rows_b))
             for s, x in rows.items()}
    if len(set(sizes.values())) > 1:
        got = ", ".join(f"{key}={n}" for key, n in sizes.items())
        raise LaminaError(f"Every site must have the same N rows (the same inputs); got {got}.")
    n = next(iter(sizes.values()))
    if n > SPEARMAN_MAX_ROWS:
        raise LaminaError(
            f"rsa_spearman ranks all N(N-1)/2 pair similarities at once: N = {n:,} rows gives "
            f"{n * (n - 1) // 2:,} pairs, above the limit of SPEARMAN_MAX_ROWS = "
            f"{SPEARMAN_MAX_ROWS:,} rows (memory about 2 N^2 bytes per site). Use 'rsa' "
            "(Pearson over the same pairs, exact at any N, memory independent of N), or "
            f"subsample at most {SPEARMAN_MAX_ROWS:,} rows, the same rows on both sides.")
    measure = KINDS[kind]
    if n < 3:
        note = f"Spearman needs at least 2 pairs (3 rows); got {n} rows."
        return [{"site_a": sa, "site_b": sb, "measure": measure, "value": math.nan,
                 "note": note} for sa in rows_a for sb in rows_b]
    ready_b = {s: _prepare(x, kind, f"rows_b[{s!r}]") for s, x in rows_b.items()}
    out = []
    for sa, xa in rows_a.items():
        same = next((sb for sb, xb in rows_b.items() if xb is xa), None)
        ra, sa2 = ready_b[same] if same is not None else _prepare(xa, kind, f"rows_a[{sa!r}]")
        for sb, (rb, sb2) in ready_b.items():
            if sa2 == 0 or sb2 == 0:
                val, note = math.nan, ("undefined: every pair has the same similarity on one "
                                       "side (all ranks tied).")
            else:
                val, note = _centred_dot(ra, rb) / math.sqrt(sa2 * sb2), None
            out.append({"site_a": sa, "site_b": sb, "measure": measure, "value": val,
                        "note": note})
    return out


__all__ = ["KINDS", "SPEARMAN_MAX_ROWS", "doubled_ranks", "pair_values", "spearman_rsa"]
