"""The exact, streamed statistics behind :func:`lamina.analyses.contextuality`, for one site.

Rows arrive in blocks (every word occurrence of a sentence in the same block); nothing N x N
is ever formed. With ``u`` the unit vector of an occurrence, ``S_w = Σ u`` over the ``n_w``
occurrences of word type ``w`` and ``S = Σ u`` over all ``N`` occurrences:

* self-similarity of ``w`` (mean cosine over its ``n_w (n_w - 1)`` ordered pairs):
  ``(|S_w|^2 - n_w) / (n_w (n_w - 1))``;
* anisotropy baseline (mean cosine over every pair of occurrences of *different* types):
  ``(|S|^2 - Σ_w |S_w|^2) / (N^2 - Σ_w n_w^2)``;
* intra-sentence similarity of a sentence (Ethayarajh 2019, eq. 2: mean cosine of its word
  vectors with their mean ``s̄``): ``(Σ u) · s̄ / (n |s̄|)``;
* MEV of ``w``: ``σ_1^2 / Σ σ_i^2`` of its uncentred occurrence matrix ``[n_w, d]``: the top
  eigenvalue over the trace of the smaller of its Gram matrices (``n_w x n_w`` kept as rows,
  or ``d x d`` accumulated); the MEV baseline is the same for all occurrences together;
* rogue dimensions (Timkey & van Schijndel 2021): dimension ``k`` adds
  ``((Σ u_k)^2 - Σ u_k^2) / (N (N - 1))`` to the mean cosine over all pairs;
* the standardised variants use ``z = (x - μ) / σ`` per dimension (μ, σ over all occurrences;
  a dimension with σ = 0 is set to 0), which needs a second pass over the rows;
* massive activations (Sun et al. 2024) are read on the token rows: the exact median of
  ``|a|`` over every entry (an exact histogram of the float32 bit patterns in pass 1, then
  the values of the median's bins in pass 2) and the entries above ``ratio x median``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lamina.errors import LaminaError

#: Bins of the exact |activation| histogram: the upper 16 bits of a non-negative float32.
_BINS = 1 << 15
#: Candidate massive entries kept in pass 2 at most (beyond this they are only counted).
_MAX_CANDIDATES = 5_000_000


@dataclass
class Layout:
    """Who each of the ``N`` word occurrences is.

    Attributes:
        types: the word types.
        type_of: ``[N]`` int64, index into ``types`` of each occurrence.
        sentence_of: ``[N]`` int64, the sentence of each occurrence.
        selected: ``[n_types]`` bool, the types whose self-similarity and MEV are computed.
    """

    types: list[str]
    type_of: np.ndarray
    sentence_of: np.ndarray
    selected: np.ndarray
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.bincount(self.type_of, minlength=len(self.types)).astype(np.int64)


def memory_bytes(layout: Layout, d: int) -> int:
    """Bytes one site's accumulators hold (float64): type sums of every type seen twice, the
    rows of selected types with at most ``d`` occurrences, a ``d x d`` Gram per more frequent
    selected type, and the ``d x d`` Gram of all occurrences."""
    c = layout.counts
    sel = layout.selected
    small = int(c[sel & (c <= d)].sum())
    big = int((sel & (c > d)).sum())
    return 8 * (2 * int((c >= 2).sum()) * d + small * d + (big + 1) * d * d)


def _index(mask: np.ndarray) -> torch.Tensor:
    """Row of each type within those of ``mask`` (-1 elsewhere)."""
    out = np.full(len(mask), -1, dtype=np.int64)
    out[mask] = np.arange(int(mask.sum()))
    return torch.from_numpy(out)


def group_sum(keys: torch.Tensor, *values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The distinct ``keys`` (sorted), how often each occurs, and each of ``values`` ``[W, d]``
    summed over the rows of each key (a sort and ``np.add.reduceat``: far faster on the CPU
    than ``index_add_``)."""
    order = torch.argsort(keys, stable=True)
    uniq, counts = torch.unique_consecutive(keys[order], return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts.numpy())[:-1]])
    sums = [torch.from_numpy(np.add.reduceat(v[order].numpy(), starts, axis=0))
            for v in values]
    return uniq, counts, sums


def _intra(x: torch.Tensor, u: torch.Tensor, sent: torch.Tensor) -> tuple[float, int]:
    """Sum and count of the intra-sentence similarities of the block's sentences of at least
    two words (every occurrence of a sentence is in the block)."""
    _, n, (s, us) = group_sum(sent, x, u)
    keep = n >= 2
    val = (us[keep] * s[keep]).sum(1) / (n[keep] * s[keep].norm(dim=1))
    return float(val.sum()), int(keep.sum())


def _unit(x: torch.Tensor, what: str) -> torch.Tensor:
    norm = x.norm(dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise LaminaError(f"A word vector is all zeros {what}: its cosine with anything is "
                          "undefined. Drop that site or that word.")
    return x / norm


def _top_eig(g: torch.Tensor) -> float:
    """Largest eigenvalue over the trace of a symmetric PSD matrix (NaN for a zero trace)."""
    tr = float(torch.diagonal(g).sum())
    return float(torch.linalg.eigvalsh(g)[-1]) / tr if tr > 0 else float("nan")


class SiteStats:
    """Accumulators of one site: :meth:`update` over every block (pass 1), :meth:`start_second`,
    :meth:`update_second` over every block again (pass 2), then :meth:`finish`."""

    def __init__(self, layout: Layout, d: int, *, ratio: float = 100.0, top: int = 20) -> None:
        self.layout, self.d, self.ratio, self.top = layout, d, ratio, top
        c = layout.counts
        f64 = torch.float64
        self.type_of = torch.from_numpy(layout.type_of)
        self.sent_of = torch.from_numpy(layout.sentence_of)
        self.multi = _index(c >= 2)
        self.n_single = int((c == 1).sum())
        self.type_sum = torch.zeros(int((c >= 2).sum()), d, dtype=f64)
        big = layout.selected & (c > d)
        small = layout.selected & ~big
        self.big = _index(big)
        self.big_gram = torch.zeros(int(big.sum()), d, d, dtype=f64)
        # each occurrence of a small selected type has a row of its own, grouped by type
        slot = np.full(len(layout.type_of), -1, dtype=np.int64)
        mine = small[layout.type_of]
        order = np.argsort(layout.type_of[mine], kind="stable")
        slot[np.flatnonzero(mine)[order]] = np.arange(int(mine.sum()))
        self.slot = torch.from_numpy(slot)
        self.rows = torch.zeros(int(mine.sum()), d, dtype=f64)
        self.n = 0
        self.sum_u = torch.zeros(d, dtype=f64)
        self.sum_u2 = torch.zeros(d, dtype=f64)
        self.mean = torch.zeros(d, dtype=f64)
        self.m2 = torch.zeros(d, dtype=f64)
        self.gram = torch.zeros(d, d, dtype=f64)
        self.intra = [0.0, 0]
        self.hist = torch.zeros(_BINS, dtype=torch.int64)
        self.top_abs = torch.empty(0)
        self.top_val = torch.empty(0)
        self.top_tok = torch.empty(0, dtype=torch.int64)
        self.top_dim = torch.empty(0, dtype=torch.int64)

    # -- pass 1 ------------------------------------------------------------------------
    def update(self, x: torch.Tensor, occ: torch.Tensor, tokens: torch.Tensor | None = None,
               token_idx: torch.Tensor | None = None) -> None:
        """Add a block: ``x`` ``[W, d]`` word vectors (float64) of occurrences ``occ`` ``[W]``
        (every occurrence of their sentences), ``tokens`` ``[T, d]`` the token rows (float32)
        with their global indices ``token_idx`` ``[T]``."""
        u = _unit(x, "")
        self.sum_u += u.sum(0)
        self.sum_u2 += (u * u).sum(0)
        nb, mb = x.shape[0], x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        delta, total = mb - self.mean, self.n + nb  # Chan et al.'s merge of mean and M2
        self.mean += delta * (nb / total)
        self.m2 += m2b + delta ** 2 * (self.n * nb / total)
        self.n = total
        self.gram += x.T @ x
        self._add_types(self.type_sum, occ, u)
        s, k = _intra(x, u, self.sent_of[occ])
        self.intra[0] += s
        self.intra[1] += k
        slots = self.slot[occ]
        m = slots >= 0
        self.rows[slots[m]] = x[m]
        big = self.big[self.type_of[occ]]
        m = big >= 0
        if bool(m.any()):
            order = torch.argsort(big[m], stable=True)
            ids, counts = torch.unique_consecutive(big[m][order], return_counts=True)
            for b, xb in zip(ids.tolist(), torch.split(x[m][order], counts.tolist()),
                             strict=True):
                self.big_gram[b] += xb.T @ xb
        if tokens is not None:
            self._tokens_first(tokens, token_idx)

    def _add_types(self, sums: torch.Tensor, occ: torch.Tensor, u: torch.Tensor) -> None:
        """Add the unit vectors ``u`` of occurrences ``occ`` to their types' rows of ``sums``
        (types seen at least twice)."""
        rows = self.multi[self.type_of[occ]]
        m = rows >= 0
        if bool(m.any()):
            ids, _, (total,) = group_sum(rows[m], u[m])
            sums[ids] += total

    def _tokens_first(self, tokens: torch.Tensor, token_idx: Any) -> None:
        a = tokens.float().abs().contiguous()
        self.hist += torch.bincount((a.view(torch.int32) >> 16).flatten(), minlength=_BINS)
        k = min(self.top, a.numel())
        vals, flat = a.flatten().topk(k)
        d = a.shape[1]
        rows = flat // d
        self.top_abs = torch.cat([self.top_abs, vals])
        self.top_val = torch.cat([self.top_val, tokens.float().flatten()[flat]])
        self.top_tok = torch.cat([self.top_tok, torch.as_tensor(token_idx)[rows]])
        self.top_dim = torch.cat([self.top_dim, flat % d])
        keep = self.top_abs.topk(min(self.top, len(self.top_abs))).indices
        self.top_abs, self.top_val = self.top_abs[keep], self.top_val[keep]
        self.top_tok, self.top_dim = self.top_tok[keep], self.top_dim[keep]

    # -- pass 2 ------------------------------------------------------------------------
    def start_second(self) -> None:
        """Fix μ, σ and the median's bins from pass 1; empty the pass-2 accumulators."""
        var = self.m2 / max(self.n, 1)
        self.sd = var.sqrt()
        self.live = self.sd > 0
        self.sum_z = torch.zeros(self.d, dtype=torch.float64)
        self.type_sum_z = torch.zeros_like(self.type_sum)
        self.intra_z = [0.0, 0]
        total = int(self.hist.sum())
        self.n_entries = total
        if not total:
            return
        cum = self.hist.cumsum(0)
        ranks = [(total - 1) // 2, total // 2]
        self.median_bins = [int(torch.searchsorted(cum, torch.tensor([r]), right=True)[0])
                            for r in ranks]
        self.median_ranks = [r - (int(cum[b - 1]) if b else 0)
                             for r, b in zip(ranks, self.median_bins, strict=True)]
        self.median_values: list[torch.Tensor] = []
        low = float(torch.tensor([self.median_bins[0] << 16], dtype=torch.int32)
                    .view(torch.float32))
        self.cand_floor = self.ratio * low
        first = int(torch.tensor([self.cand_floor], dtype=torch.float32).view(torch.int32)
                    ) >> 16 if low > 0 else 0
        n_cand = int(self.hist[first:].sum()) if low > 0 else total
        self.keep_candidates = low > 0 and n_cand <= _MAX_CANDIDATES
        self.candidates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update_second(self, x: torch.Tensor, occ: torch.Tensor,
                      tokens: torch.Tensor | None = None) -> None:
        """Add a block again (the same blocks as pass 1): the standardised statistics, the
        median's values and the candidate massive entries."""
        z = torch.where(self.live, (x - self.mean) / torch.where(self.live, self.sd, 1.0), 0.0)
        uz = _unit(z, "after standardisation (it equals the mean in every varying dimension)")
        self.sum_z += uz.sum(0)
        self._add_types(self.type_sum_z, occ, uz)
        s, k = _intra(z, uz, self.sent_of[occ])
        self.intra_z[0] += s
        self.intra_z[1] += k
        if tokens is not None and self.n_entries:
            a = tokens.float().abs().contiguous()
            bins = a.view(torch.int32) >> 16
            for b in sorted(set(self.median_bins)):
                self.median_values.append(a[bins == b])
            if self.keep_candidates:
                hit = a.double() >= self.cand_floor
                self.candidates.append((a[hit], hit.nonzero()[:, 1]))

    # -- results -----------------------------------------------------------------------
    def _median(self) -> float:
        values = torch.sort(torch.cat(self.median_values)).values.double()
        lo = int(self.hist[: min(self.median_bins)].sum())
        picks = [float(values[int(self.hist[:b].sum()) - lo + r])
                 for b, r in zip(self.median_bins, self.median_ranks, strict=True)]
        return sum(picks) / 2

    def finish(self) -> dict[str, Any]:
        """Every statistic of the site: scalars, ``per_type`` (selected types: n,
        self_similarity, self_similarity_std, mev), ``dim_contribution`` ``[d]`` and the
        token statistics."""
        lay, n = self.layout, self.n
        c = torch.from_numpy(lay.counts)
        pairs_diff = float(n) ** 2 - float((c.double() ** 2).sum())

        def baseline(total: torch.Tensor, sums: torch.Tensor) -> float:
            same = float((sums ** 2).sum()) + self.n_single
            return (float(total @ total) - same) / pairs_diff if pairs_diff > 0 else np.nan

        sel = np.flatnonzero(lay.selected)
        ns = c[torch.from_numpy(sel)].double()
        rows = self.multi[torch.from_numpy(sel)]
        self_sim = ((self.type_sum[rows] ** 2).sum(1) - ns) / (ns * (ns - 1))
        self_std = ((self.type_sum_z[rows] ** 2).sum(1) - ns) / (ns * (ns - 1))
        mev = np.empty(len(sel))
        starts = np.zeros(len(lay.types) + 1, dtype=np.int64)
        small = lay.selected & (lay.counts <= self.d)
        starts[1:] = np.cumsum(np.where(small, lay.counts, 0))
        for i, t in enumerate(sel):
            b = int(self.big[t])
            if b >= 0:
                mev[i] = _top_eig(self.big_gram[b])
            else:
                m = self.rows[starts[t] : starts[t + 1]]
                mev[i] = _top_eig(m @ m.T)
        pairs_all = float(n) * (n - 1)
        contrib = (self.sum_u ** 2 - self.sum_u2) / pairs_all if n > 1 else \
            torch.full((self.d,), float("nan"), dtype=torch.float64)
        out: dict[str, Any] = {
            "n_occurrences": n,
            "self_similarity": float(self_sim.mean()),
            "intra_sentence_similarity": self.intra[0] / self.intra[1] if self.intra[1]
            else np.nan,
            "mev": float(np.mean(mev)),
            "anisotropy_baseline": baseline(self.sum_u, self.type_sum),
            "mev_baseline": _top_eig(self.gram),
            "mean_cosine": float(contrib.sum()),
            "self_similarity_std": float(self_std.mean()),
            "intra_sentence_similarity_std": self.intra_z[0] / self.intra_z[1]
            if self.intra_z[1] else np.nan,
            "anisotropy_baseline_std": baseline(self.sum_z, self.type_sum_z),
            "per_type": {"type_index": sel, "n": lay.counts[sel],
                         "self_similarity": self_sim.numpy(),
                         "self_similarity_std": self_std.numpy(), "mev": mev},
            "dim_contribution": contrib.numpy(),
            "n_constant_dims": int((~self.live).sum()),
        }
        out.update(self._token_stats())
        return out

    def _token_stats(self) -> dict[str, Any]:
        if not getattr(self, "n_entries", 0):
            return {"median_abs": np.nan, "max_abs": np.nan, "n_massive": np.nan,
                    "massive_dims": {}, "top": []}
        med = self._median()
        thr = self.ratio * med
        if self.keep_candidates and med > 0:
            vals = torch.cat([v for v, _ in self.candidates]).double()
            dims = torch.cat([k for _, k in self.candidates])
            hit = vals > thr
            n_massive: float = int(hit.sum())
            per_dim = torch.bincount(dims[hit], minlength=self.d)
            massive_dims = {int(k): int(per_dim[k]) for k in torch.nonzero(per_dim).flatten()}
        else:
            n_massive, massive_dims = np.nan, {}
        top = [{"token_index": int(t), "dim": int(k), "value": float(v), "abs": float(a),
                "ratio": float(a) / med if med > 0 else np.inf}
               for a, v, t, k in zip(self.top_abs, self.top_val, self.top_tok, self.top_dim,
                                     strict=True)]
        return {"median_abs": med, "max_abs": float(self.top_abs[0]), "n_massive": n_massive,
                "massive_dims": massive_dims, "top": top, "n_entries": self.n_entries}
