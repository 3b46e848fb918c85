"""Streaming top-k per row (largest scores; callers negate for smallest).

Each block of scores updates the running lists of its rows and, for the upper-triangle scan
of self-similarity, of its columns. A block is cut into chunks of ``chunk`` entries; a chunk's
maximum (a cheap vectorised reduction) tells whether it can hold anything better than the
row's current k-th score, and only the best ``k`` such chunks per row are gathered and merged.
This is exact: every entry of the new top-k lies in one of the k chunks with the largest
maxima, and only beats the current list when its chunk's maximum does."""

from __future__ import annotations

import torch


class TopK:
    """Running top-``k`` of ``n`` rows: ``values`` (n, k) descending, ``indices`` (n, k)
    positions of the columns (-1 while unfilled)."""

    def __init__(self, n: int, k: int, device: torch.device, chunk: int = 64) -> None:
        self.k = k
        self.chunk = chunk
        self.values = torch.full((n, k), -torch.inf, dtype=torch.float32, device=device)
        self.indices = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.kth = torch.full((n,), -torch.inf, dtype=torch.float32, device=device)
        self._ar = torch.arange(chunk, device=device)

    # ------------------------------------------------------------------ merging
    def _merge(self, rows: slice | torch.Tensor, cand_v: torch.Tensor, cand_i: torch.Tensor):
        vals = torch.cat([self.values[rows], cand_v.to(self.values.dtype)], 1)
        idx = torch.cat([self.indices[rows], cand_i], 1)
        top_v, top_p = torch.topk(vals, self.k, dim=1)
        self.values[rows] = top_v
        self.indices[rows] = torch.gather(idx, 1, top_p)
        self.kth[rows] = top_v[:, -1]

    # ------------------------------------------------------------------ updates
    def update_rows(self, s: torch.Tensor, r0: int, c0: int) -> None:
        """Scores ``s`` (R, C) of rows ``r0:r0+R`` against columns ``c0:c0+C``."""
        n_rows, n_cols = s.shape
        c = self.chunk
        if n_cols % c or n_cols // c <= self.k:
            v, i = torch.topk(s, min(self.k, n_cols), dim=1)
            self._merge(slice(r0, r0 + n_rows), v, i + c0)
            return
        cmax = s.view(n_rows, n_cols // c, c).amax(2)  # (R, chunks)
        cand = cmax > self.kth[r0 : r0 + n_rows, None]
        per_row = cand.sum(1)
        rows = per_row.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        kk = min(self.k, int(per_row.max()))
        best = cmax.index_select(0, rows).topk(kk, dim=1).indices  # (r, kk) chunk ids
        cols = (best[:, :, None] * c + self._ar).view(len(rows), kk * c)
        cand_v = torch.take(s, rows[:, None] * n_cols + cols)
        self._merge(rows + r0, cand_v, cols + c0)

    def update_cols(self, s: torch.Tensor, r0: int, c0: int) -> None:
        """The transposed direction: scores ``s`` (R, C) as candidates for rows ``c0:c0+C``
        (the columns), with column positions ``r0:r0+R``."""
        n_rows, n_cols = s.shape
        c = self.chunk
        if n_rows % c or n_rows // c <= self.k:
            self.update_rows(s.T.contiguous(), c0, r0)
            return
        cmax = s.view(n_rows // c, c, n_cols).amax(1)  # (chunks, C)
        cand = cmax > self.kth[None, c0 : c0 + n_cols]
        per_col = cand.sum(0)
        cols = per_col.nonzero().squeeze(1)
        if cols.numel() == 0:
            return
        kk = min(self.k, int(per_col.max()))
        best = cmax.index_select(1, cols).topk(kk, dim=0).indices.T  # (r, kk) chunk ids
        rows = (best[:, :, None] * c + self._ar).reshape(len(cols), kk * c)
        cand_v = torch.take(s, rows * n_cols + cols[:, None])
        self._merge(cols + c0, cand_v, rows + r0)


def merge_topk(parts: list[TopK]) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and indices (n, k) of the best k over several partial top-k states."""
    if len(parts) == 1:
        return parts[0].values, parts[0].indices
    vals = torch.cat([p.values for p in parts], 1)
    idx = torch.cat([p.indices for p in parts], 1)
    top_v, top_p = torch.topk(vals, parts[0].k, dim=1)
    return top_v, torch.gather(idx, 1, top_p)
