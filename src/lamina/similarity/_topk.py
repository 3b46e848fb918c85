"""Streaming top-k per row (largest scores; callers negate for smallest).

Each block of scores updates the running lists of its rows and, for the upper-triangle scan
of self-similarity, of its columns. A block is cut into chunks of ``chunk`` entries; a chunk's
maximum (a cheap vectorised reduction) tells whether it can hold anything better than the
row's current bound (a k-th best score), and only the best ``k`` such chunks per row are
gathered and merged. This is exact up to ties: every entry of the new top-k lies in one of the
k chunks with the largest maxima, and only enters the list when its chunk's maximum beats the
bound. Worker threads keep their own lists but may share ``bound``: any worker's k-th best is
a lower bound of the final k-th best, so entries at or below it cannot be needed."""

from __future__ import annotations

import torch


class TopK:
    """Running top-``k`` of ``n`` rows: ``values`` (n, k) in ``dtype``, ``indices`` (n, k)
    column positions (-1 while unfilled). ``bound`` (n,): shared lower bounds of the k-th
    best."""

    def __init__(
        self, n: int, k: int, device: torch.device, bound: torch.Tensor | None = None,
        chunk: int = 32, col_chunk: int = 16, dtype: torch.dtype = torch.float32,
    ) -> None:
        self.k = k
        self.chunk = chunk
        self.col_chunk = col_chunk
        self.values = torch.full((n, k), -torch.inf, dtype=dtype, device=device)
        self.indices = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.bound = (torch.full((n,), -torch.inf, dtype=dtype, device=device) if bound is None
                      else bound)

    # ------------------------------------------------------------------ merging
    def merge(self, rows: slice | torch.Tensor, cand_v: torch.Tensor, cand_i: torch.Tensor):
        """Merge candidates (len(rows), c) with ids into the lists of ``rows``."""
        vals = torch.cat([self.values[rows], cand_v.to(self.values.dtype)], 1)
        idx = torch.cat([self.indices[rows], cand_i], 1)
        top_v, top_p = torch.topk(vals, self.k, dim=1, sorted=False)
        self.values[rows] = top_v
        self.indices[rows] = torch.gather(idx, 1, top_p)
        kth = top_v.amin(1)
        self.bound[rows] = torch.maximum(self.bound[rows], kth)

    def _plain(self, s: torch.Tensor, r0: int, c0: int) -> None:
        v, i = torch.topk(s, min(self.k, s.shape[1]), dim=1, sorted=False)
        self.merge(slice(r0, r0 + s.shape[0]), v, i + c0)

    def _candidates(self, cmax: torch.Tensor, start: int, gather, offset: int, c: int) -> None:
        """Update lists ``start:start+L`` from a block whose chunk maxima (chunks of ``c``) are
        ``cmax`` (L, chunks); ``gather(lists, chunks)`` returns those chunks' values (m, c)."""
        n_lists, n_chunks = cmax.shape
        # an entry is needed only if > the shared bound and >= the k-th largest chunk maximum
        # (k entries of this block reach that)
        bound = self.bound[start : start + n_lists]
        floor = torch.nextafter(bound, torch.full_like(bound, torch.inf))
        if n_chunks > self.k and int((cmax >= floor[:, None]).sum()) > self.k * n_lists // 2:
            # many candidates: also require >= the k-th largest chunk maximum of the list
            kth = torch.topk(cmax, self.k, dim=1, sorted=False).values.amin(1)
            floor = torch.maximum(floor, kth)
        idx = (cmax >= floor[:, None]).nonzero()  # (m, 2): list, chunk; sorted by list
        if len(idx) == 0:
            return
        vals = gather(idx[:, 0], idx[:, 1])  # (m, c)
        ent = (vals >= floor[idx[:, 0], None]).nonzero()  # (e, 2): candidate chunk, position
        who = idx[ent[:, 0], 0]
        cand_v = vals[ent[:, 0], ent[:, 1]]
        cand_i = idx[ent[:, 0], 1] * c + ent[:, 1] + offset
        # lay the entries of each list side by side, padded with -inf, and merge
        uniq, counts = torch.unique_consecutive(who, return_counts=True)
        width = int(counts.max())
        if width > 4 * self.k:  # keep each list's best k entries only: sort by list, value desc
            order = torch.argsort(cand_v, descending=True, stable=True)
            order = order[torch.argsort(who[order], stable=True)]
            who, cand_v, cand_i = who[order], cand_v[order], cand_i[order]
        starts = torch.cumsum(counts, 0) - counts
        seg = torch.repeat_interleave(torch.arange(len(uniq), device=who.device), counts)
        slot = torch.arange(len(who), device=who.device) - starts[seg]
        if width > 4 * self.k:
            keep = slot < self.k
            seg, slot, cand_v, cand_i = seg[keep], slot[keep], cand_v[keep], cand_i[keep]
            width = self.k
        pad_v = torch.full((len(uniq), width), -torch.inf, dtype=cand_v.dtype,
                           device=cand_v.device)
        pad_i = torch.zeros((len(uniq), width), dtype=torch.int64, device=cand_v.device)
        pad_v[seg, slot] = cand_v
        pad_i[seg, slot] = cand_i
        self.merge(uniq + start, pad_v, pad_i)

    # ------------------------------------------------------------------ updates
    def update_rows(self, s: torch.Tensor, r0: int, c0: int) -> None:
        """Scores ``s`` (R, C) of rows ``r0:r0+R`` against columns ``c0:c0+C``."""
        n_rows, n_cols = s.shape
        c = self.chunk
        full = n_cols - n_cols % c
        if full // c <= self.k:
            return self._plain(s, r0, c0)
        # chunks of the first `full` columns (a strided view, no copy); the rest directly
        view = s.as_strided((n_rows, full // c, c), (s.stride(0), c, 1))
        self._candidates(view.amax(2), r0, lambda i, j: view[i, j], c0, c)
        if full < n_cols:
            self._plain(s[:, full:], r0, c0 + full)

    def update_cols(self, s: torch.Tensor, r0: int, c0: int) -> None:
        """The transposed direction: scores ``s`` (R, C) as candidates for rows ``c0:c0+C``
        (the columns), with column positions ``r0:r0+R``."""
        n_rows, n_cols = s.shape
        c = self.col_chunk  # short chunks: their entries are far apart in memory
        full = n_rows - n_rows % c
        if full // c <= self.k:
            return self._plain(s.T.contiguous(), c0, r0)
        view = s[:full].view(full // c, c, n_cols)
        self._candidates(view.amax(1).T.contiguous(), c0, lambda i, j: view[j, :, i], r0, c)
        if full < n_rows:
            self._plain(s[full:].T.contiguous(), c0, r0 + full)


def merge_topk(parts: list[TopK]) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (n, k), best first, and indices of the best k over partial top-k states."""
    vals = torch.cat([p.values for p in parts], 1)
    idx = torch.cat([p.indices for p in parts], 1)
    top_v, top_p = torch.topk(vals, parts[0].k, dim=1)
    return top_v, torch.gather(idx, 1, top_p)
