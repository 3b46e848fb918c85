"""The similarity engine: exact all-pairs statistics at matrix-multiply speed, without N x N
memory.

>>> import torch, lamina.similarity as sim
>>> x = torch.randn(1000, 64)
>>> res = sim.scan(x, bins=50, topk=5)          # histogram of all 499,500 cosines + top-5
>>> int(res.counts.sum()) == res.count == 499_500
True

- :func:`scan` - histogram, moments, top-k per row, thresholded pairs, in one pass
- :func:`group_stats` - within vs across labelled groups (exact from Gram matrices)
- :func:`duplicate_groups` - connected components of near-identical rows
- :func:`matrix` - the dense matrix, when asked and when it fits
- :func:`threshold_sums` - per-row sums of weights over the rows at or above thresholds
  (e.g. next-token counts of similar strings), without listing the pairs

How it works and what "exact" means:

- Rows are prepared once (cosine: unit vectors; correlation: centred unit vectors) and
  streamed in row blocks; self-similarity computes only the upper triangle of block pairs,
  diagonal blocks first. Each row is divided by its largest absolute entry before its norm is
  taken, so rows of any magnitude (1e-30 or 1e30) are normalised exactly; only rows that are
  exactly zero (cosine) or constant (correlation) are excluded, counted (``n_zero``) and
  listed, never NaN.
- Pair values are float32 by default (``dtype="float64"`` for float64; top-k and pair values
  are reported in that dtype); cosine and correlation are clamped to [-1, 1]. Dot and
  euclidean values are bounded by the largest row norms: when that bound does not fit the
  dtype (overflow, or every value below its smallest normal number) the scan stops before the
  pass with an error saying to rescale, use cosine or float64. :func:`matrix` uses the same
  kernel, so its entries are the values :func:`scan` counts.
- Bad input (NaN or infinite entries, named by row as the rows stream; NaN thresholds, empty
  or non-finite ranges, wrong shapes or dtypes) raises :class:`SimilarityInputError`, a
  :class:`lamina.errors.LaminaError`, before the work.
- Histogram counts are identical to ``numpy.histogram`` of those values (numpy's edges and
  rules, last bin closed): a vectorised affine binning, with every value within a rounding
  bound of an edge re-binned exactly in float64. Quantiles are read from the histogram
  (linear inside a bin: error below one bin width).
- Moments: count, mean and std (ddof=0) are float64 sums of the values (each value widened
  to float64 before it is added); min and max exact.
- Top-k per row is exact up to ties (see ``_topk``). Euclidean distances use
  sqrt(|a|^2 + |b|^2 - 2 a.b) for the histogram (like ``torch.cdist``); euclidean top-k and
  thresholded pairs are re-scored from the differences.
- Fast mode (``dtype="bfloat16"``, ``fast=True``): bfloat16 products; the histogram and
  moments are those of the bfloat16 values; top-k is taken over a widened list (default
  max(2k, k + 12)) re-scored in float32; thresholded pairs use a proven error margin and are
  re-scored, so they are exact.
- CPU: one worker thread per core, each computing its own block pairs with single-threaded
  products and, for float32, compiled kernels that read each block row once (numba;
  :mod:`lamina.similarity._cpu_kernels`); CUDA (``device=None`` picks it when available): one
  stream of larger blocks and torch operations. ``backend=`` on :func:`scan`,
  :func:`threshold_sums` and :func:`duplicate_groups` chooses: "auto" (numba for float32
  values on CPU, torch otherwise), "numba" (an error where it cannot run: CUDA, float64) or
  "torch"; both give the same results up to rounding (the order of float64 sums, ties in
  top-k), and ``result.meta["backend"]`` says which ran.
  Block size and caching follow a memory budget (``memory=``; default a quarter of free
  memory, at most 1 GiB on CPU).
- ``engine="ray"`` (:func:`scan`, :func:`threshold_sums`): the driver prepares the rows,
  cuts the block grid into tiles (bands of whole blocks; the upper triangle of bands for
  self pairs; about 4 tiles per CPU or GPU of the cluster) and puts each band into Ray's
  object store once; each task runs the same worker over its tile (GPU tasks when the
  cluster has GPUs, else one CPU each) and returns partial statistics, merged as tasks
  finish: the same counts, top-k and pairs, moments and float sums to rounding.
- :func:`group_stats` computes in float64 from per-group sums and Gram matrices,
  O(N d^2), in the same pass that prepares the rows; label permutations cost O(N d) each.
  Statistics that are undefined for the labels given (one label: no across-group pairs;
  singleton groups: no within-group pairs; a single pair: no variance) are NaN, and the
  result's ``notes`` say which and why (also issued as :class:`UndefinedStatisticWarning`).
"""

from __future__ import annotations

from lamina.similarity._args import BACKENDS, METRICS
from lamina.similarity._errors import (
    MemoryLimitError,
    SimilarityInputError,
    TooManyPairsError,
    UndefinedStatisticWarning,
)
from lamina.similarity._result import ScanResult
from lamina.similarity.dense import matrix
from lamina.similarity.duplicates import DuplicateGroups, duplicate_groups
from lamina.similarity.groups import GroupStats, group_stats
from lamina.similarity.scan import scan
from lamina.similarity.sums import threshold_sums

__all__ = [
    "BACKENDS",
    "METRICS",
    "DuplicateGroups",
    "GroupStats",
    "MemoryLimitError",
    "ScanResult",
    "SimilarityInputError",
    "TooManyPairsError",
    "UndefinedStatisticWarning",
    "duplicate_groups",
    "group_stats",
    "matrix",
    "scan",
    "threshold_sums",
]
