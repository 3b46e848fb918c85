"""What a scan computes and what comes back from it, as plain records.

Data flows one way: :func:`lamina.similarity.scan` fills a :class:`ScanPlan`; each worker's
consumer builds its epilogue (torch passes or the compiled CPU kernels) from the plan alone;
each epilogue hands back an :class:`EpilogueTotals` that nothing else writes into; ``merge``
combines them into one :class:`ScanTotals`, from which the scan builds its result."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lamina.similarity._accum import Moments, PairGuard
from lamina.similarity._topk import TopK


@dataclass
class ScanPlan:
    """What to compute: histogram edges and bounds, top-k size, pair guard and candidate
    threshold, the direction of top-k, whether pairs are self pairs, and ``backend``: "numba"
    (the compiled one-pass epilogue of ``_cpu_kernels``, CPU float32) or "torch"."""

    device: torch.device
    value: torch.dtype
    n_rows: int
    self_pairs: bool
    largest: bool = True
    edges: np.ndarray | None = None
    bounds: tuple[float, float] | None = None
    k: int | None = None
    bound: torch.Tensor | None = None  # (n_rows,) shared by the workers' top-k lists
    guard: PairGuard | None = None
    candidate: float | None = None
    shift: float | None = None
    patterns: torch.dtype | None = None  # fast mode: moments and histogram from bit patterns
    bounded: bool = False
    backend: str = "torch"


@dataclass
class EpilogueTotals:
    """One worker's statistics. Exactly one of ``moments`` (streamed values) and ``patterns``
    (fast mode: counts (65536,) of the 16-bit patterns of the values) is set. ``hist``:
    counts (n_bins + 2,) with the values below the edges first and above them last;
    ``n_fixed``: values re-binned exactly; ``topk``: the worker's lists (values negated for
    smallest-k)."""

    moments: Moments | None = None
    patterns: torch.Tensor | None = None
    hist: torch.Tensor | None = None
    n_fixed: int = 0
    topk: TopK | None = None


@dataclass
class ScanTotals:
    """All workers' statistics merged: moments of the pair values; with a histogram,
    ``counts`` (n_bins,), ``below``, ``above`` and ``n_fixed`` (values re-binned exactly);
    ``pairs``: positions i, j (int64) and values of the thresholded pairs (candidates in fast
    mode and for euclidean, re-scored by the scan); ``topk``: values (n_rows, k), best first,
    and column positions (values negated for smallest-k, candidates when re-scored)."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    counts: np.ndarray | None = None
    below: int = 0
    above: int = 0
    n_fixed: int = 0
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    topk: tuple[torch.Tensor, torch.Tensor] | None = None
