"""Per-worker state of a scan: what each block pair contributes, and the merge of workers.

A :class:`ScanConsumer` collects the thresholded pairs itself and hands every block to its
epilogue, built from the plan alone: :class:`TorchEpilogue` (tensor passes; CUDA, float64,
``backend="torch"``) or :class:`lamina.similarity._cpu_kernels.CpuEpilogue` (compiled kernels,
``backend="numba"``). Each epilogue owns its moments, histogram and top-k lists and hands back
an :class:`EpilogueTotals`; :func:`merge` combines the workers' totals into a
:class:`ScanTotals`. Nothing flows back into a consumer."""

from __future__ import annotations

import torch

from lamina.similarity._accum import Moments, PairCollector, merge_moments, merge_pairs
from lamina.similarity._blocks import Block, upper_pieces
from lamina.similarity._cpu_kernels import CpuEpilogue
from lamina.similarity._hist import ExactHistogram, PatternCounts
from lamina.similarity._plan import EpilogueTotals, ScanPlan, ScanTotals
from lamina.similarity._topk import TopK, merge_topk


def make_topk(plan: ScanPlan) -> TopK | None:
    """A worker's top-k lists for ``plan`` (sharing ``plan.bound``), or None."""
    if plan.k is None:
        return None
    return TopK(plan.n_rows, plan.k, plan.device, bound=plan.bound, dtype=plan.value)


def make_histogram(plan: ScanPlan) -> ExactHistogram | None:
    """A worker's histogram for ``plan``'s edges, or None."""
    if plan.edges is None:
        return None
    return ExactHistogram(plan.edges, plan.value, plan.device, plan.bounds)


class TorchEpilogue:
    """Moments, histogram (or fast mode's bit-pattern counts) and top-k of one worker's
    blocks, by tensor operations (a few passes over each block)."""

    def __init__(self, plan: ScanPlan) -> None:
        self.plan = plan
        self.moments = Moments(plan.shift)
        self.patterns = None if plan.patterns is None else PatternCounts(plan.patterns,
                                                                         plan.device)
        self.hist = None if self.patterns is not None else make_histogram(plan)
        self.topk = make_topk(plan)
        self.masks: dict = {}

    def consume(self, blk: Block) -> None:
        """Add block ``blk``; its values may be changed in place (negated, diagonal -inf)."""
        s = blk.values
        if self.patterns is not None and blk.low is not None:
            for v in upper_pieces(blk.low, self.masks) if blk.diagonal else [blk.low]:
                self.patterns.add(v)
        else:
            for v in upper_pieces(s, self.masks) if blk.diagonal else [s]:
                self.moments.add(v)
                if self.hist is not None:
                    self.hist.add(v)
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

    def totals(self) -> EpilogueTotals:
        """Moments (or bit-pattern counts), histogram counts and top-k lists so far."""
        if self.patterns is not None:
            return EpilogueTotals(patterns=self.patterns.counts, topk=self.topk)
        hist = self.hist
        return EpilogueTotals(
            moments=self.moments, hist=None if hist is None else hist.counts,
            n_fixed=0 if hist is None else hist.n_fixed, topk=self.topk,
        )


class ScanConsumer:
    """One worker: collects the thresholded pairs of its blocks and passes every block to the
    epilogue of ``plan.backend``."""

    def __init__(self, plan: ScanPlan) -> None:
        self.pairs = None if plan.guard is None else PairCollector(plan.guard, plan.candidate)
        self.epilogue = CpuEpilogue(plan) if plan.backend == "numba" else TorchEpilogue(plan)

    def consume(self, blk: Block) -> None:
        """Take the pairs of block ``blk`` at or beyond the threshold, then its statistics."""
        if self.pairs is not None:  # first: the torch epilogue changes the values in place
            self.pairs.add(blk.values, blk.r0, blk.c0, blk.diagonal)
        self.epilogue.consume(blk)


def merge(consumers: list[ScanConsumer], plan: ScanPlan) -> ScanTotals:
    """Moments, histogram counts, pairs and top-k of all workers."""
    parts = [c.epilogue.totals() for c in consumers]
    if parts[0].patterns is not None:
        counts = sum(p.patterns for p in parts).cpu().numpy()
        summary = PatternCounts.summarise(counts, plan.patterns, plan.bounded, plan.edges)
        out = ScanTotals(count=summary["count"], mean=summary["mean"], std=summary["std"],
                         min=summary["min"], max=summary["max"], counts=summary.get("counts"),
                         below=summary.get("below", 0), above=summary.get("above", 0))
    else:
        out = ScanTotals(**merge_moments([p.moments for p in parts]))
    if parts[0].hist is not None:
        counts = sum(p.hist for p in parts)
        out.counts = counts[1:-1].cpu().numpy()
        out.below, out.above = int(counts[0]), int(counts[-1])
        out.n_fixed = sum(p.n_fixed for p in parts)
    if consumers[0].pairs is not None:
        out.pairs = merge_pairs([c.pairs for c in consumers])
    if parts[0].topk is not None:
        out.topk = merge_topk([p.topk for p in parts])
    return out
