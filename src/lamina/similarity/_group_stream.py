"""Group statistics by streaming pair values (any metric; needed for euclidean and for
per-group-pair histograms). With one-hot group matrices A (rows, G), a block of values V adds
A_I^T V A_J to the group-pair sums and A_I^T (V*V) A_J to the sums of squares."""

from __future__ import annotations

import numpy as np
import torch

from lamina.similarity._blocks import Block, upper_values, walk_blocks
from lamina.similarity._hist import ExactHistogram
from lamina.similarity._prepare import Prepared


def _onehot(codes: torch.Tensor, n_groups: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(len(codes), n_groups, dtype=dtype, device=codes.device)
    out[torch.arange(len(codes), device=codes.device), codes] = 1.0
    return out


class _GroupConsumer:
    """Group-pair sums, permuted within sums and per-group-pair histogram counts of the blocks
    one worker computes."""

    def __init__(self, px: Prepared, codes_t: torch.Tensor, onehot: torch.Tensor, sums: bool,
                 perm_oh: torch.Tensor | None, n_perm: int, hist_edges: np.ndarray | None,
                 lut: torch.Tensor | None) -> None:
        dev, g = px.device, onehot.shape[1]
        self.codes_t, self.onehot, self.sums, self.perm_oh = codes_t, onehot, sums, perm_oh
        self.total = torch.zeros(g, g, dtype=torch.float64, device=dev)
        self.total_sq = torch.zeros(g, g, dtype=torch.float64, device=dev)
        self.perm_within = torch.zeros(max(n_perm, 1), dtype=torch.float64, device=dev)
        self.n_perm, self.g = n_perm, g
        self.hist = None
        if hist_edges is not None:
            self.hist = ExactHistogram(hist_edges, px.precision.value, dev)
            self.lut, self.m = lut, self.hist.nb + 2
            self.counts = torch.zeros(int(lut.max()) * self.m + self.m, dtype=torch.int64,
                                      device=dev)
        self.masks: dict = {}

    def consume(self, blk: Block) -> None:
        s = blk.values
        r0, c0 = blk.r0, blk.c0
        r1, c1 = r0 + s.shape[0], c0 + s.shape[1]
        if self.hist is not None:
            v = upper_values(s, self.masks) if blk.diagonal else s
            key = self.lut[self.codes_t[r0:r1, None], self.codes_t[None, c0:c1]]
            if blk.diagonal:
                key = upper_values(key, self.masks)
            q = self.hist.bin_index(v).to(torch.int64)
            self.counts += torch.bincount(key.reshape(-1) * self.m + q,
                                          minlength=len(self.counts))
        if blk.diagonal:
            s = torch.triu(s, 1)
        if self.sums:
            a, b = self.onehot[r0:r1], self.onehot[c0:c1]
            self.total += (a.T @ (s @ b)).to(torch.float64)
            self.total_sq += (a.T @ ((s * s) @ b)).to(torch.float64)
        if self.perm_oh is not None:
            pa, pb = self.perm_oh[r0:r1], self.perm_oh[c0:c1]
            per = ((s @ pb) * pa).sum(0).view(self.n_perm, self.g).sum(1)
            self.perm_within += per.to(torch.float64)


def stream_moments(
    px: Prepared,
    codes: np.ndarray,
    n_groups: int,
    size: int,
    *,
    sums: bool = True,
    perm_codes: np.ndarray | None = None,
    hist_edges: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """One pass over the upper triangle. Returns (as asked) ``total`` and ``total_sq``
    (G, G) symmetric sums over pairs (diagonal: within, i < j), ``perm_within`` (P,) within-group
    sums under each permutation, ``hist`` (G*(G+1)/2, n_bins + 2) counts per unordered group
    pair (rows in the order of ``numpy.triu_indices(G)``), columns below, bins..., above."""
    dev, value, g = px.device, px.precision.value, n_groups
    codes_t = torch.as_tensor(codes, device=dev)
    onehot = _onehot(codes_t, g, value)
    perm_oh, n_perm = None, 0
    if perm_codes is not None:
        pc = torch.as_tensor(perm_codes, device=dev)  # (P, n)
        n_perm = len(pc)
        perm_oh = torch.zeros(px.n, n_perm * g, dtype=value, device=dev)
        perm_oh.scatter_(1, (pc + (torch.arange(n_perm, device=dev) * g)[:, None]).T, 1.0)
    lut_t = None
    if hist_edges is not None:
        a_idx, b_idx = np.triu_indices(g)
        lut = np.zeros((g, g), dtype=np.int64)
        lut[a_idx, b_idx] = lut[b_idx, a_idx] = np.arange(len(a_idx))
        lut_t = torch.as_tensor(lut, device=dev)
    parts = walk_blocks(
        px, None, size,
        lambda: _GroupConsumer(px, codes_t, onehot, sums, perm_oh, n_perm, hist_edges, lut_t),
        progress=progress,
    )
    out: dict[str, np.ndarray] = {}
    if sums:
        t = sum(p.total for p in parts).cpu().numpy()
        t2 = sum(p.total_sq for p in parts).cpu().numpy()
        out["total"] = t + t.T - np.diag(np.diag(t))
        out["total_sq"] = t2 + t2.T - np.diag(np.diag(t2))
    if perm_oh is not None:
        out["perm_within"] = sum(p.perm_within for p in parts).cpu().numpy()
    if hist_edges is not None:
        out["hist"] = sum(p.counts for p in parts).view(-1, parts[0].m).cpu().numpy()
    return out
