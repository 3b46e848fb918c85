"""The result of :func:`lamina.similarity.scan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lamina.similarity._errors import SimilarityInputError

STANDARD_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass
class ScanResult:
    """Statistics of the pair values of one scan.

    Pairs are the unique pairs i < j of x (self-similarity) or all pairs (i in x, j in y).
    ``count``, ``mean``, ``std`` (population, ddof=0), ``min`` and ``max`` cover every pair
    scanned. Rows that are zero vectors (cosine) or constant (correlation) take part in no pair;
    ``n_zero`` counts them and ``zero_rows`` lists them.

    Histogram (when ``bins`` was given): ``counts`` (n_bins,) and ``edges`` (n_bins + 1,), as
    ``numpy.histogram``; ``below``/``above`` count pairs outside the edges.
    Top-k (when ``topk`` was given): ``topk_values`` and ``topk_indices`` (n_rows, k), best
    first; row r belongs to x row ``rows[r]`` and indices are rows of x (or y). Rows of zero
    vectors get values NaN and indices -1.
    Threshold (when ``threshold`` was given): ``pairs_i``, ``pairs_j``, ``pairs_values``,
    sorted by (i, j), ids of x and x (or y). Top-k and pair values are float32, float64 for
    ``dtype="float64"`` scans. Asking for what the scan did not compute raises
    :class:`SimilarityInputError`."""

    metric: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    n_zero: int = 0
    zero_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    n_zero_y: int = 0
    counts: np.ndarray | None = None
    edges: np.ndarray | None = None
    below: int = 0
    above: int = 0
    rows: np.ndarray | None = None
    largest: bool = True
    topk_values: np.ndarray | None = None
    topk_indices: np.ndarray | None = None
    threshold: float | None = None
    pairs_i: np.ndarray | None = None
    pairs_j: np.ndarray | None = None
    pairs_values: np.ndarray | None = None
    duplicate_groups: list[np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ quantiles
    def quantile(self, q: float | np.ndarray) -> float | np.ndarray:
        """Quantile(s) of the pair values, read from the histogram: linear interpolation
        inside a bin, so the error is below one bin width (pairs below/above the edges are
        spread over [min, first edge] and [last edge, max])."""
        if self.counts is None or self.edges is None:
            raise SimilarityInputError(
                "quantiles come from the histogram: scan with bins=... first.")
        try:
            q_arr = np.asarray(q, dtype=np.float64)
        except (TypeError, ValueError):
            q_arr = np.array(np.nan)
        if not np.all((q_arr >= 0) & (q_arr <= 1)):
            raise SimilarityInputError(f"quantiles must lie in [0, 1], got {q!r}.")
        if self.count == 0:
            return np.full(np.shape(q), np.nan) if np.ndim(q) else float("nan")
        knots = np.concatenate([[self.min], self.edges, [self.max]]).astype(np.float64)
        knots = np.clip(knots, self.min, self.max)
        mass = np.concatenate([[0, self.below], self.below + np.cumsum(self.counts)])
        mass = np.concatenate([mass, [mass[-1] + self.above]]).astype(np.float64)
        out = np.interp(q_arr * self.count, mass, knots)
        return float(out) if np.ndim(out) == 0 else out

    @property
    def quantiles(self) -> dict[float, float] | None:
        """Standard quantiles (1%, 5%, 25%, 50%, 75%, 95%, 99%) from the histogram, or None."""
        if self.counts is None:
            return None
        values = self.quantile(np.array(STANDARD_QUANTILES))
        return dict(zip(STANDARD_QUANTILES, values, strict=True))

    # ------------------------------------------------------------------ tables
    @property
    def summary(self) -> dict[str, Any]:
        """Headline numbers as a flat dict."""
        out: dict[str, Any] = dict(
            metric=self.metric, count=self.count, mean=self.mean, std=self.std,
            min=self.min, max=self.max, n_zero=self.n_zero,
        )
        if self.counts is not None:
            out.update(below=self.below, above=self.above)
            out.update({f"q{int(round(q * 100)):02d}": v for q, v in self.quantiles.items()})
        if self.pairs_i is not None:
            out.update(threshold=self.threshold, n_pairs=len(self.pairs_i))
        if self.duplicate_groups is not None:
            out["n_duplicate_groups"] = len(self.duplicate_groups)
        return out

    def pairs(self) -> pd.DataFrame:
        """Thresholded pairs: columns ``i``, ``j``, ``value``."""
        if self.pairs_i is None:
            raise SimilarityInputError("no pairs: scan with threshold=... first.")
        return pd.DataFrame({"i": self.pairs_i, "j": self.pairs_j, "value": self.pairs_values})

    def to_frame(self, what: str | None = None) -> pd.DataFrame:
        """A table: ``"histogram"`` (left, right, count), ``"topk"`` (row, rank, neighbor,
        value), ``"pairs"`` (i, j, value) or ``"summary"`` (one row). Default: the first of
        these that the scan computed."""
        if what is None:
            what = next(
                w for w, have in [
                    ("histogram", self.counts is not None),
                    ("topk", self.topk_values is not None),
                    ("pairs", self.pairs_i is not None),
                    ("summary", True),
                ] if have
            )
        if what == "histogram" and self.counts is not None:
            return pd.DataFrame(
                {"left": self.edges[:-1], "right": self.edges[1:], "count": self.counts}
            )
        if what == "topk" and self.topk_values is not None:
            n, k = self.topk_values.shape
            return pd.DataFrame({
                "row": np.repeat(self.rows, k),
                "rank": np.tile(np.arange(1, k + 1), n),
                "neighbor": self.topk_indices.reshape(-1),
                "value": self.topk_values.reshape(-1),
            })
        if what == "pairs" and self.pairs_i is not None:
            return self.pairs()
        if what == "summary":
            return pd.DataFrame([self.summary])
        raise SimilarityInputError(
            f"cannot make a {what!r} table from this scan; choose from 'histogram', 'topk', "
            "'pairs', 'summary' among those the scan computed."
        )
