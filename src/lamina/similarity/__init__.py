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
"""

from __future__ import annotations

from lamina.similarity._blocks import METRICS
from lamina.similarity._errors import (
    MemoryLimitError,
    SimilarityInputError,
    TooManyPairsError,
)
from lamina.similarity._result import ScanResult
from lamina.similarity.dense import matrix
from lamina.similarity.duplicates import DuplicateGroups, duplicate_groups
from lamina.similarity.groups import GroupStats, group_stats
from lamina.similarity.scan import scan

__all__ = [
    "METRICS",
    "DuplicateGroups",
    "GroupStats",
    "MemoryLimitError",
    "ScanResult",
    "SimilarityInputError",
    "TooManyPairsError",
    "duplicate_groups",
    "group_stats",
    "matrix",
    "scan",
]
