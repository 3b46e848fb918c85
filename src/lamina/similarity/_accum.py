"""Streaming accumulators: moments (count, mean, std, min, max) and thresholded pairs."""

from __future__ import annotations

import math

import numpy as np
import torch

from lamina.similarity._errors import TooManyPairsError

PAIR_BYTES = 20  # two int64 ids and one float32 value


class Moments:
    """Count, sum, centred sum of squares, min and max of streamed values.

    Sums of each row of a block are taken in the value dtype and added in float64. Squares are
    summed about a shift ``K`` (the first block's mean when it is large against its spread), so
    the variance does not suffer cancellation when all values sit far from zero."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.sq = 0.0
        self.shift: float | None = None
        self.vmin = math.inf
        self.vmax = -math.inf
        self._buf: torch.Tensor | None = None

    def add(self, v: torch.Tensor) -> None:
        n = v.numel()
        if n == 0:
            return
        if self.shift is None:
            v64 = v.to(torch.float64)
            mean, sd = float(v64.mean()), float(v64.std(correction=0))
            self.shift = mean if abs(mean) > 2 * sd else 0.0
        self.count += n
        self.total += float(v.sum(-1).to(torch.float64).sum())
        if self.shift:
            if self._buf is None or self._buf.numel() < n:
                self._buf = torch.empty(n, dtype=v.dtype, device=v.device)
            w = torch.sub(v, self.shift, out=self._buf[:n].view(v.shape))
        else:
            w = v
        if w.dim() == 2:  # per-row norms are accurate; a 1-D norm accumulates in float32
            sq = torch.linalg.vector_norm(w, dim=1).to(torch.float64).square().sum()
        else:
            sq = w.square().sum(dtype=torch.float64)
        self.sq += float(sq)
        lo, hi = torch.aminmax(v)
        self.vmin = min(self.vmin, float(lo))
        self.vmax = max(self.vmax, float(hi))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0, as ``numpy.std``)."""
        if not self.count:
            return math.nan
        k = self.shift or 0.0
        m = self.total / self.count - k
        return math.sqrt(max(self.sq / self.count - m * m, 0.0))


class PairCollector:
    """Pairs whose value is >= ``threshold`` (or <= when ``below``), with a memory guard.

    ``candidate`` may be looser than ``threshold`` (fast mode: approximate values are
    re-scored later and filtered against ``threshold``)."""

    def __init__(
        self,
        threshold: float,
        below: bool,
        max_pairs: int,
        budget_note: str,
        candidate: float | None = None,
    ) -> None:
        self.threshold = float(threshold)
        self.candidate = self.threshold if candidate is None else float(candidate)
        self.below = below
        self.max_pairs = int(max_pairs)
        self.note = budget_note
        self.i: list[torch.Tensor] = []
        self.j: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.total = 0

    def add(self, s: torch.Tensor, r0: int, c0: int, upper: bool) -> None:
        """Collect from block values ``s`` (R, C); ``upper``: keep only j > i (diagonal)."""
        mask = s <= self.candidate if self.below else s >= self.candidate
        if upper:
            mask = torch.triu(mask, 1)
        ij = mask.nonzero()
        if ij.numel() == 0:
            return
        self.total += len(ij)
        if self.total > self.max_pairs:
            side = "<=" if self.below else ">="
            raise TooManyPairsError(
                f"more than {self.max_pairs:,} pairs have values {side} {self.threshold:g} "
                f"({self.note}); raise the threshold (a histogram, scan(bins=...), shows how "
                "many pairs each value range holds), scan a subset, or pass a larger max_pairs= "
                "or memory=."
            )
        self.i.append(ij[:, 0] + r0)
        self.j.append(ij[:, 1] + c0)
        self.v.append(s[ij[:, 0], ij[:, 1]])

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions i, j (int64) and values, concatenated, on the device."""
        if not self.i:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty, torch.empty(0, dtype=torch.float32)
        return torch.cat(self.i), torch.cat(self.j), torch.cat(self.v)


def default_max_pairs(budget: int) -> int:
    return max(1, budget // 2 // PAIR_BYTES)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
