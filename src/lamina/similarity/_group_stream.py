"""Group statistics by streaming pair values (any metric; needed for euclidean and for
per-group-pair histograms). With one-hot group matrices A (rows, G), a block of values V adds
A_I^T V A_J to the group-pair sums and A_I^T (V*V) A_J to the sums of squares."""

from __future__ import annotations

import numpy as np
import torch

from lamina.similarity._blocks import Prepared
from lamina.similarity._hist import ExactHistogram
from lamina.similarity._kernel import iter_blocks, upper_values


def _onehot(codes: torch.Tensor, n_groups: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(len(codes), n_groups, dtype=dtype, device=codes.device)
    out[torch.arange(len(codes), device=codes.device), codes] = 1.0
    return out


def stream_moments(
    px: Prepared,
    codes: np.ndarray,
    n_groups: int,
    size: int,
    *,
    sums: bool = True,
    perm_codes: np.ndarray | None = None,
    hist: ExactHistogram | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """One pass over the upper triangle. Returns (as available) ``total`` and ``total_sq``
    (G, G) symmetric sums over pairs (diagonal: within, i < j), ``perm_within`` (P,) within-group
    sums under each permutation, ``hist`` (G*(G+1)/2, n_bins + 2) counts per unordered group
    pair (row order a <= b, row-major), columns below, bins..., above."""
    dev, value = px.device, px.precision.value
    codes_t = torch.as_tensor(codes, device=dev)
    onehot = _onehot(codes_t, n_groups, value)
    g = n_groups
    total = torch.zeros(g, g, dtype=torch.float64, device=dev)
    total_sq = torch.zeros(g, g, dtype=torch.float64, device=dev)
    perm_oh = None
    if perm_codes is not None:
        pc = torch.as_tensor(perm_codes, device=dev)  # (P, n)
        n_perm = len(pc)
        perm_oh = torch.zeros(px.n, n_perm * g, dtype=value, device=dev)
        cols = (pc + (torch.arange(n_perm, device=dev) * g)[:, None]).T  # (n, P)
        perm_oh.scatter_(1, cols, 1.0)
        perm_within = torch.zeros(n_perm, dtype=torch.float64, device=dev)
    if hist is not None:
        m = hist.nb + 2
        a_idx, b_idx = np.triu_indices(g)
        lut = np.zeros((g, g), dtype=np.int64)
        lut[a_idx, b_idx] = np.arange(len(a_idx))
        lut[b_idx, a_idx] = np.arange(len(a_idx))
        lut_t = torch.as_tensor(lut, device=dev)
        counts = torch.zeros(len(a_idx) * m, dtype=torch.int64, device=dev)
    masks: dict = {}
    for blk in iter_blocks(px, None, size, progress):
        s = blk.values
        r1, c1 = blk.r0 + s.shape[0], blk.c0 + s.shape[1]
        if hist is not None:
            v = upper_values(s, masks) if blk.diagonal else s
            key = lut_t[codes_t[blk.r0 : r1, None], codes_t[None, blk.c0 : c1]]
            if blk.diagonal:
                key = upper_values(key, masks)
            q = hist.bin_index(v).to(torch.int64)
            counts += torch.bincount(key.reshape(-1) * m + q, minlength=len(counts))
        if blk.diagonal:
            s = torch.triu(s, 1)
        a, b = onehot[blk.r0 : r1], onehot[blk.c0 : c1]
        if sums:
            total += (a.T @ (s @ b)).to(torch.float64)
            total_sq += (a.T @ ((s * s) @ b)).to(torch.float64)
        if perm_oh is not None:
            pa, pb = perm_oh[blk.r0 : r1], perm_oh[blk.c0 : c1]
            per = ((s @ pb) * pa).sum(0).view(n_perm, g).sum(1)
            perm_within += per.to(torch.float64)
    out: dict[str, np.ndarray] = {}
    if sums:
        t, t2 = total.cpu().numpy(), total_sq.cpu().numpy()
        out["total"] = t + t.T - np.diag(np.diag(t))
        out["total_sq"] = t2 + t2.T - np.diag(np.diag(t2))
    if perm_oh is not None:
        out["perm_within"] = perm_within.cpu().numpy()
    if hist is not None:
        out["hist"] = counts.view(-1, m).cpu().numpy()
    return out
