"""The per-block work of :func:`~lamina.similarity.threshold_sums`: a compiled CPU kernel and
the consumer that adds each block's thresholded weight sums (used by the worker threads and by
the Ray tasks alike)."""

from __future__ import annotations

import numpy as np
import torch

from lamina.similarity._blocks import Block
from lamina.similarity._cpu_kernels import jit


@jit()
def _block_sums(s, thresholds, w, total, out, hits, acc):
    """``out[i, g] += sum of w[j] over the j with s[i, j] >= thresholds[g]`` for block values
    ``s`` (R, C) and weight rows ``w`` (C, m) (``total``: their column sums, float64). The
    positions of a row's members are listed branch-free, then their weights added (float32
    per row, like the product it replaces, then float64); past half the row, the non-members
    are summed instead and taken from ``total``, so the cost is that of the smaller side."""
    n_rows, n_cols = s.shape
    m = w.shape[1]
    for i in range(n_rows):
        r = s[i]
        for g in range(thresholds.shape[0]):
            t = thresholds[g]
            n = 0
            for j in range(n_cols):
                hits[n] = j
                n += r[j] >= t
            members = 2 * n <= n_cols
            if not members:
                n = 0
                for j in range(n_cols):
                    hits[n] = j
                    n += r[j] < t
            acc[:] = 0
            for h in range(n):
                wj = w[hits[h]]
                for c in range(m):
                    acc[c] += wj[c]
            o = out[i, g]
            for c in range(m):
                o[c] += acc[c] if members else total[c] - acc[c]


class SumConsumer:
    """One worker's per-row sums (n_x, G, m) float64 of the weights of the y rows at or above
    each threshold, block by block."""


    def __init__(self, n_x: int, thresholds: torch.Tensor, w: torch.Tensor,
                 y_rows: torch.Tensor, compiled: bool = False) -> None:
        self.t = thresholds
        self.w, self.y_rows = w, y_rows
        self.out = torch.zeros(n_x, len(thresholds), w.shape[1], dtype=torch.float64,
                               device=w.device)
        self.mask: torch.Tensor | None = None
        self.compiled = compiled  # CPU: the kernel above instead of mask products

    def consume(self, blk: Block) -> None:
        s = blk.values
        n_r, n_c = s.shape
        w = self.w.index_select(0, self.y_rows[blk.c0 : blk.c0 + n_c])  # this block's rows
        if self.compiled:
            wn = w.numpy()
            return _block_sums(s.numpy(), self.t.numpy(), wn, wn.sum(0, dtype=np.float64),
                               self.out.numpy()[blk.r0 : blk.r0 + n_r],
                               np.empty(n_c, dtype=np.int64),
                               np.empty(wn.shape[1], dtype=np.float32))
        if self.mask is None or self.mask.numel() < s.numel():
            self.mask = torch.empty(s.numel(), dtype=self.w.dtype, device=s.device)
        mask = self.mask[: s.numel()].view(n_r, n_c)
        for g, t in enumerate(self.t.tolist()):
            torch.ge(s, t, out=mask)  # 1.0 where at or above, else 0.0
            self.out[blk.r0 : blk.r0 + n_r, g] += torch.mm(mask, w)
