"""Duplicate groups: connected components of the pairs whose similarity reaches a threshold
(e.g. the identical untrained token embeddings of a vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from lamina.similarity._errors import SimilarityInputError


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
    pairs at or beyond ``threshold``; ``pairs``: the linking pairs (i, j, value)."""

    groups: list[np.ndarray]
    threshold: float
    metric: str
    pairs: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

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
    x: Any, threshold: float | None = None, *, metric: str = "cosine", **scan_kwargs: Any
) -> DuplicateGroups:
    """Groups of near-identical rows of ``x`` (N, d): connected components of the pairs with
    similarity >= ``threshold`` (default 0.9999 for cosine and correlation); for euclidean,
    pairs with distance <= ``threshold`` (which must then be given), for dot >= it.
    Further keyword arguments go to :func:`lamina.similarity.scan` (``subset``, ``device``,
    ``max_pairs``, ...)."""
    from lamina.similarity.scan import scan

    if threshold is None:
        if metric in ("dot", "euclidean"):
            raise SimilarityInputError(
                f"duplicate_groups with metric={metric!r} needs a threshold (a {metric} value)."
            )
        threshold = 0.9999
    res = scan(
        x, metric=metric, threshold=threshold, threshold_below=metric == "euclidean",
        groups=True, **scan_kwargs,
    )
    return DuplicateGroups(
        groups=res.duplicate_groups, threshold=float(threshold), metric=metric,
        pairs=res.pairs(), meta=res.meta,
    )
