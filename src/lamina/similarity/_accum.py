"""Streaming accumulators: moments (count, mean, std, min, max) and thresholded pairs."""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from lamina.similarity._errors import TooManyPairsError

PAIR_BYTES = 20  # two int64 ids and one float32 value


class Moments:
    """Count, sum, centred sum of squares, min and max of streamed values.

    Sums of each row of a block are taken in the value dtype and added in float64. Squares are
    summed about a shift ``K`` (an estimate of the mean when it is large against the spread;
    by default the first block's), so the variance does not suffer cancellation when all
    values sit far from zero."""

    def __init__(self, shift: float | None = None) -> None:
        self.count = 0
        self.total = 0.0
        self.sq = 0.0
        self.shift = shift
        self.vmin = math.inf
        self.vmax = -math.inf
        self._buf: torch.Tensor | None = None

    def add(self, v: torch.Tensor) -> None:
        """Add the values ``v`` (1-D, or 2-D possibly strided)."""
        n = v.numel()
        if n == 0:
            return
        if self.shift is None:
            v64 = v.to(torch.float64)
            mean, sd = float(v64.mean()), float(v64.std(correction=0))
            self.shift = mean if abs(mean) > 4 * sd else 0.0
        self.count += n
        rows = v if v.dim() == 2 else v.view(1, -1)
        if self.shift:
            if self._buf is None or self._buf.numel() < n:
                self._buf = torch.empty(n, dtype=v.dtype, device=v.device)
            w = torch.sub(rows, self.shift, out=self._buf[:n].view(rows.shape))
        else:
            w = rows
        if rows.shape[0] > 1:  # per-row sums in the value dtype are accurate; add in float64
            self.total += float(rows.sum(1).sum(dtype=torch.float64))
            sq = torch.linalg.vector_norm(w, dim=1).square().sum(dtype=torch.float64)
        else:  # one long row: let the reductions accumulate in float64
            self.total += float(rows.sum(dtype=torch.float64))
            sq = w.square().sum(dtype=torch.float64)
        self.sq += float(sq)
        self.vmin = min(self.vmin, float(rows.amin(1).min()))
        self.vmax = max(self.vmax, float(rows.amax(1).max()))

    def parts(self) -> tuple[int, float, float]:
        """(count, sum, sum of squared deviations from this part's mean)."""
        if not self.count:
            return 0, 0.0, 0.0
        m = self.total / self.count - (self.shift or 0.0)
        return self.count, self.total, max(self.sq - self.count * m * m, 0.0)


def merge_moments(parts: list[Moments]) -> dict[str, float]:
    """count, mean, std (population, ddof=0), min, max of all parts (Chan et al.'s merge)."""
    count = sum(p.count for p in parts)
    if not count:
        return dict(count=0, mean=math.nan, std=math.nan, min=math.nan, max=math.nan)
    mean = sum(p.total for p in parts) / count
    m2 = 0.0
    for p in parts:
        n, total, dev = p.parts()
        if n:
            m2 += dev + n * (total / n - mean) ** 2
    return dict(
        count=count, mean=mean, std=math.sqrt(m2 / count),
        min=min(p.vmin for p in parts), max=max(p.vmax for p in parts),
    )


class PairGuard:
    """Counts collected pairs across workers and stops beyond ``max_pairs``."""

    def __init__(self, threshold: float, below: bool, max_pairs: int, note: str) -> None:
        self.threshold, self.below, self.max_pairs, self.note = threshold, below, max_pairs, note
        self.total = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.total += n
            if self.total <= self.max_pairs:
                return
        side = "<=" if self.below else ">="
        raise TooManyPairsError(
            f"more than {self.max_pairs:,} pairs have values {side} {self.threshold:g} "
            f"({self.note}); raise the threshold (a histogram, scan(bins=...), shows how "
            "many pairs each value range holds), scan a subset, or pass a larger max_pairs= "
            "or memory=."
        )


class PairCollector:
    """Pairs whose value is >= ``threshold`` (or <= when ``below``) in the blocks one worker
    sees. ``candidate`` may be looser than the threshold (values re-scored later)."""

    def __init__(self, guard: PairGuard, candidate: float | None = None) -> None:
        self.guard = guard
        self.threshold, self.below = guard.threshold, guard.below
        self.candidate = self.threshold if candidate is None else float(candidate)
        self.i: list[torch.Tensor] = []
        self.j: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def add(self, s: torch.Tensor, r0: int, c0: int, upper: bool) -> None:
        """Collect from block values ``s`` (R, C); ``upper``: keep only j > i (diagonal)."""
        mask = s <= self.candidate if self.below else s >= self.candidate
        if upper:
            mask = torch.triu(mask, 1)
        ij = mask.nonzero()
        if ij.numel() == 0:
            return
        self.guard.add(len(ij))
        self.i.append(ij[:, 0] + r0)
        self.j.append(ij[:, 1] + c0)
        self.v.append(s[ij[:, 0], ij[:, 1]])


def merge_pairs(parts: list[PairCollector]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions i, j (int64) and values of all parts, concatenated."""
    i = [t for p in parts for t in p.i]
    if not i:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty, torch.empty(0, dtype=torch.float32)
    j = [t for p in parts for t in p.j]
    v = [t for p in parts for t in p.v]
    return torch.cat(i), torch.cat(j), torch.cat(v)


def default_max_pairs(budget: int) -> int:
    return max(1, budget // 2 // PAIR_BYTES)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
