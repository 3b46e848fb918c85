"""Group statistics from per-group sums and Gram matrices, without visiting pairs.

For prepared rows u (cosine: unit vectors; correlation: centred unit vectors; dot: raw):
  within group a:  sum_{i<j} u_i.u_j       = (|S_a|^2 - sum_i |u_i|^2) / 2
                   sum_{i<j} (u_i.u_j)^2   = (||G_a||_F^2 - sum_i |u_i|^4) / 2
  across a, b:     sum_{i,j} u_i.u_j       = S_a . S_b
                   sum_{i,j} (u_i.u_j)^2   = <G_a, G_b>_F
with S_a the sum of the group's rows and G_a = U_a^T U_a (d x d). Cost O(N d^2 + G^2 d^2).
A label permutation only changes S_a and sum |u_i|^2 per group: O(N d) per permutation."""

from __future__ import annotations

import numpy as np
import torch

from lamina.similarity._prepare import Prepared


class GramAccumulator:
    """Per-group sums taken while the rows are prepared: row sums S_a (G, d), Gram matrices
    G_a (G, d, d), sums of |u|^2 and |u|^4, all in float64. ``code_of_id``: group of each row
    id of the input."""

    def __init__(self, code_of_id: np.ndarray, n_groups: int, d: int,
                 device: torch.device) -> None:
        f64 = torch.float64
        self.code_of_id, self.g = code_of_id, n_groups
        self.gram = torch.zeros(n_groups, d, d, dtype=f64, device=device)
        self.s = torch.zeros(n_groups, d, dtype=f64, device=device)
        self.q = torch.zeros(n_groups, dtype=f64, device=device)
        self.r = torch.zeros(n_groups, dtype=f64, device=device)

    def add(self, u: torch.Tensor, ids: np.ndarray) -> None:
        codes = self.code_of_id[ids]
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(self.g + 1))
        if not np.all(order[1:] > order[:-1]):  # rows of one group next to each other
            u = u[torch.as_tensor(order, device=u.device)]
        for a in np.flatnonzero(np.diff(bounds)):
            ua = u[bounds[a] : bounds[a + 1]]
            self.gram[a] += (ua.T @ ua).to(torch.float64)
            ua64 = ua.to(torch.float64)
            norms = ua64.square().sum(1)
            self.s[a] += ua64.sum(0)
            self.q[a] += norms.sum()
            self.r[a] += norms.square().sum()

    def moments(self, present: np.ndarray, sizes: np.ndarray):
        """(count, sum, sum of squares) per group pair (G', G') over the groups ``present``
        (ids of groups with usable rows) with ``sizes``: symmetric, the diagonal holds the
        within-group figures over i < j."""
        keep = torch.as_tensor(present, device=self.s.device)
        gram, s = self.gram[keep], self.s[keep]
        q_np, r_np = self.q[keep].cpu().numpy(), self.r[keep].cpu().numpy()
        flat = gram.reshape(len(present), -1)
        cross_sq = (flat @ flat.T).cpu().numpy()  # <G_a, G_b>_F
        cross = (s @ s.T).cpu().numpy()  # S_a . S_b
        sizes = sizes.astype(np.float64)
        count = np.outer(sizes, sizes)
        total, total_sq = cross.copy(), cross_sq.copy()
        np.fill_diagonal(count, sizes * (sizes - 1) / 2)
        np.fill_diagonal(total, (np.diag(cross) - q_np) / 2)
        np.fill_diagonal(total_sq, (np.diag(cross_sq) - r_np) / 2)
        return count, total, total_sq


def permuted_within_sums(
    px: Prepared,
    perm_codes: np.ndarray,
    n_groups: int,
    chunk: int,
    budget: int,
) -> np.ndarray:
    """Within-group pair sums for each row of ``perm_codes`` (P, n) of group codes:
    sum_a (|S_a|^2 - sum_{i in a} |u_i|^2) / 2, from one pass over the rows per batch."""
    n_perm, n = perm_codes.shape
    dev, d = px.device, px.d
    value = px.precision.value
    per_perm = n_groups * (d + 1) * 8 + n_groups * chunk * value.itemsize
    batch = max(1, min(n_perm, budget // 4 // max(1, per_perm)))
    out = np.empty(n_perm)
    codes_all = torch.as_tensor(perm_codes, device=dev)
    for b0 in range(0, n_perm, batch):
        codes_b = codes_all[b0 : b0 + batch]  # (B, n)
        nb = len(codes_b)
        acc = torch.zeros(nb * n_groups, d + 1, dtype=torch.float64, device=dev)
        offset = (torch.arange(nb, device=dev) * n_groups)[:, None]
        for p0 in range(0, n, chunk):
            u = px.block(p0, min(p0 + chunk, n)).to(torch.float64)
            m = len(u)
            ext = torch.cat([u, u.square().sum(1, keepdim=True)], 1)  # (m, d+1)
            onehot = torch.zeros(nb * n_groups, m, dtype=torch.float64, device=dev)
            rows = (codes_b[:, p0 : p0 + m] + offset).reshape(-1)
            cols = torch.arange(m, device=dev).repeat(nb)
            onehot[rows, cols] = 1.0
            acc += onehot @ ext
        acc = acc.view(nb, n_groups, d + 1)
        within = (acc[:, :, :d].square().sum(2) - acc[:, :, d]).sum(1) / 2
        out[b0 : b0 + nb] = within.cpu().numpy()
    return out
