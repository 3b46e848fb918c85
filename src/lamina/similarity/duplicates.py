"""Duplicate groups: connected components of the pairs whose similarity reaches a threshold
(e.g. the identical untrained token embeddings of a vocabulary). Found from the thresholded
pairs of one :func:`lamina.similarity.scan`, which knows nothing of groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from lamina.similarity._errors import SimilarityInputError
from lamina.similarity._result import ScanResult
from lamina.similarity.scan import scan


def components(i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (of size >= 2) of the graph with edges (i, j): each a sorted array
    of row ids; groups ordered by their smallest id."""
    if len(i) == 0:
        return []
    nodes, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
    n = len(nodes)
    graph = sp.coo_matrix(
        (np.ones(len(i), dtype=np.int8), (inverse[: len(i)], inverse[len(i):])), shape=(n, n)
    )
    n_comp, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    splits = np.flatnonzero(np.diff(label[order])) + 1
    groups = [nodes[g] for g in np.split(order, splits)]
    return sorted((g for g in groups if len(g) > 1), key=lambda g: int(g[0]))


@dataclass
class DuplicateGroups:
    """``groups``: sorted arrays of original row ids, one per group of >= 2 rows linked by
    pairs at or beyond ``threshold``; ``pairs``: the linking pairs (i, j, value); ``scan``:
    the :class:`ScanResult` of the pass that found them (with any histogram and top-k asked
    for in the same pass, and ``duplicate_groups`` set to ``groups``); ``meta``: its meta."""

    groups: list[np.ndarray]
    threshold: float
    metric: str
    pairs: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    scan: ScanResult | None = None

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def n_rows(self) -> int:
        """Rows that belong to some group."""
        return int(sum(len(g) for g in self.groups))

    def labels(self, n: int) -> np.ndarray:
        """Group number of each of ``n`` rows, -1 for rows in no group."""
        out = np.full(n, -1, dtype=np.int64)
        for g, rows in enumerate(self.groups):
            out[rows] = g
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per grouped row: ``group``, ``row``, ``size``."""
        if not self.groups:
            return pd.DataFrame({"group": [], "row": [], "size": []}, dtype=np.int64)
        return pd.DataFrame({
            "group": np.concatenate([np.full(len(g), k) for k, g in enumerate(self.groups)]),
            "row": np.concatenate(self.groups),
            "size": np.concatenate([np.full(len(g), len(g)) for g in self.groups]),
        })


def duplicate_groups(
    x: Any, threshold: float | None = None, *, metric: str = "cosine", backend: str = "auto",
    **scan_kwargs: Any,
) -> DuplicateGroups:
    """Groups of near-identical rows of ``x`` (N, d): connected components of the pairs with
    similarity >= ``threshold`` (default 0.9999 for cosine and correlation); for euclidean,
    pairs with distance <= ``threshold`` (which must then be given), for dot >= it.
    ``backend``: as for :func:`lamina.similarity.scan`. Further keyword arguments go to
    :func:`lamina.similarity.scan` (``subset``, ``device``, ``max_pairs``, and ``bins``,
    ``topk``... for statistics taken in the same pass, found in ``result.scan``); groups are
    of the rows of one x, so ``y`` is not accepted."""
    if threshold is None:
        if metric in ("dot", "euclidean"):
            raise SimilarityInputError(
                f"duplicate_groups with metric={metric!r} needs a threshold (a {metric} value)."
            )
        threshold = 0.9999
    if scan_kwargs.get("y") is not None:
        raise SimilarityInputError(
            "duplicate_groups groups the rows of one x (self-similarity); y is not accepted. "
            "Pass the rows of x and y stacked as x, or use scan(x, y, threshold=...) for the "
            "pairs across them."
        )
    scan_kwargs.pop("y", None)
    res = scan(
        x, metric=metric, threshold=threshold, threshold_below=metric == "euclidean",
        backend=backend, **scan_kwargs,
    )
    res.duplicate_groups = components(res.pairs_i, res.pairs_j)
    return DuplicateGroups(
        groups=res.duplicate_groups, threshold=float(threshold), metric=metric,
        pairs=res.pairs(), meta=res.meta, scan=res,
    )
