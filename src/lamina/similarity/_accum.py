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

    Every value is widened to float64 and summed in float64 (in chunks of ``CHUNK`` values,
    so the widened copy stays small). Squares are summed about a shift ``K`` (an estimate of
    the mean when it is large against the spread; by default the first block's), so the
    variance does not suffer cancellation when all values sit far from zero."""

    CHUNK = 1 << 22  # values per float64 copy (32 MiB)

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
        size = min(n, self.CHUNK)
        if self._buf is None or self._buf.numel() < size:
            self._buf = torch.empty(size, dtype=torch.float64, device=v.device)
        sums = torch.zeros(2, dtype=torch.float64, device=v.device)  # one sync per call
        for piece in _pieces(rows, self.CHUNK):
            w = self._buf[: piece.numel()]
            w.view(piece.shape).copy_(piece)  # widened to float64
            sums[0] += w.sum()
            if self.shift:
                w.sub_(self.shift)
            sums[1] += torch.dot(w, w)
        total, sq = sums.tolist()
        self.total += total
        self.sq += sq
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


def _pieces(rows: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """``rows`` (R, C) cut into 2-D pieces of at most ``chunk`` values (rows cut too when one
    row is longer)."""
    n_rows, width = rows.shape
    if width > chunk:
        return [rows[r : r + 1, c : c + chunk] for r in range(n_rows)
                for c in range(0, width, chunk)]
    step = max(1, chunk // width)
    return [rows[r : r + step] for r in range(0, n_rows, step)]


def default_max_pairs(budget: int) -> int:
    return max(1, budget // 2 // PAIR_BYTES)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
