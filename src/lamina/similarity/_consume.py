"""Per-worker state of a scan: what each block pair contributes, and the merge of workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamina.similarity._accum import (
    Moments,
    PairCollector,
    PairGuard,
    merge_moments,
    merge_pairs,
)
from lamina.similarity._cpu_kernels import CpuEpilogue
from lamina.similarity._hist import ExactHistogram, PatternCounts
from lamina.similarity._kernel import Block, upper_pieces
from lamina.similarity._topk import TopK, merge_topk


@dataclass
class ScanPlan:
    """What to compute: histogram edges and bounds, top-k size, pair guard and candidate
    threshold, the direction of top-k, whether pairs are self pairs."""

    device: torch.device
    value: torch.dtype
    n_rows: int
    self_pairs: bool
    largest: bool = True
    edges: np.ndarray | None = None
    bounds: tuple[float, float] | None = None
    k: int | None = None
    bound: torch.Tensor | None = None
    guard: PairGuard | None = None
    candidate: float | None = None
    shift: float | None = None
    patterns: torch.dtype | None = None  # fast mode: moments and histogram from bit patterns
    bounded: bool = False
    cpu_kernels: bool = False  # CPU float32: the compiled one-pass epilogue of _cpu_kernels


class ScanConsumer:
    """Accumulates moments, histogram, thresholded pairs and top-k from the blocks one worker
    computes."""

    def __init__(self, plan: ScanPlan) -> None:
        self.plan = plan
        self.moments = Moments(plan.shift)
        self.hist = None
        self.patterns = None
        if plan.patterns is not None:
            self.patterns = PatternCounts(plan.patterns, plan.device)
        elif plan.edges is not None:
            self.hist = ExactHistogram(plan.edges, plan.value, plan.device, plan.bounds)
        self.pairs = None if plan.guard is None else PairCollector(plan.guard, plan.candidate)
        self.topk = None
        if plan.k is not None:
            self.topk = TopK(plan.n_rows, plan.k, plan.device, bound=plan.bound,
                             dtype=plan.value)
        self.masks: dict = {}
        self.cpu = CpuEpilogue(self) if plan.cpu_kernels else None

    def consume(self, blk: Block) -> None:
        if self.cpu is not None:
            return self.cpu.consume(blk)
        s = blk.values
        if self.patterns is not None and blk.low is not None:
            for v in upper_pieces(blk.low, self.masks) if blk.diagonal else [blk.low]:
                self.patterns.add(v)
        else:
            for v in upper_pieces(s, self.masks) if blk.diagonal else [s]:
                self.moments.add(v)
                if self.hist is not None:
                    self.hist.add(v)
        if self.pairs is not None:
            self.pairs.add(s, blk.r0, blk.c0, blk.diagonal)
        if self.topk is not None:
            if not self.plan.largest:
                s.neg_()
            if blk.diagonal:
                s.fill_diagonal_(-torch.inf)
                self.topk.update_rows(s, blk.r0, blk.c0)  # the square holds both directions
            else:
                self.topk.update_rows(s, blk.r0, blk.c0)
                if self.plan.self_pairs:
                    self.topk.update_cols(s, blk.r0, blk.c0)


def merge(consumers: list[ScanConsumer]) -> dict[str, Any]:
    """Moments, histogram counts, pairs and top-k of all workers."""
    plan = consumers[0].plan
    for c in consumers:
        if c.cpu is not None:
            c.cpu.flush()
    if consumers[0].patterns is not None:
        counts = sum(c.patterns.counts for c in consumers).cpu().numpy()
        out: dict[str, Any] = PatternCounts.summarise(counts, plan.patterns, plan.bounded,
                                                      plan.edges)
    else:
        out = merge_moments([c.moments for c in consumers])
    if consumers[0].hist is not None:
        counts = sum(c.hist.counts for c in consumers)
        out["counts"] = counts[1:-1].cpu().numpy()
        out["below"], out["above"] = int(counts[0]), int(counts[-1])
        out["n_fixed"] = sum(c.hist.n_fixed for c in consumers)
    if consumers[0].pairs is not None:
        out["pairs"] = merge_pairs([c.pairs for c in consumers])
    if consumers[0].topk is not None:
        out["topk"] = merge_topk([c.topk for c in consumers])
    return out
