""":class:`CompareResult`: the L_A x L_B maps of :func:`lamina.compare`, long-form and as
matrices, the best-matching site of B for each site of A, heat maps, and ``save(dir)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lamina.errors import LaminaError
from lamina.results import Result
from lamina.sites import layer_of

#: Columns of :meth:`CompareResult.to_frame` (``ci_low``/``ci_high`` only when bootstrapped).
COLUMNS = ("site_a", "site_b", "measure", "value")


@dataclass
class CompareResult(Result):
    """Every (site of A, site of B, measure) of :func:`lamina.compare`.

    ``table``: long form, columns ``site_a``, ``site_b``, ``measure``, ``value``, then
    ``ci_low``, ``ci_high`` (the bootstrap's percentile 95% interval, when asked) and
    ``note`` (why a value is undefined, else empty). ``sites_a``/``sites_b``: the sites in
    layer order (the rows and columns of :meth:`matrix`). Every measure is a similarity:
    larger means more alike, 1 for a representation with itself.
    """

    table: pd.DataFrame
    sites_a: list[str]
    sites_b: list[str]
    name = "compare"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    @property
    def measures(self) -> list[str]:
        """The measures computed, in the order asked."""
        return list(dict.fromkeys(self.table["measure"]))

    def _check(self, measure: str) -> str:
        if measure not in self.measures:
            raise LaminaError(f"No measure {measure!r} in this result: it has "
                              f"{', '.join(self.measures)}.")
        return measure

    def matrix(self, measure: str = "cka", column: str = "value") -> pd.DataFrame:
        """``measure`` as an L_A x L_B frame: index the sites of A, columns the sites of B
        (``column``: ``value``, or ``ci_low``/``ci_high`` when bootstrapped)."""
        rows = self.table[self.table["measure"] == self._check(measure)]
        if column not in rows.columns:
            raise LaminaError(f"No column {column!r}: this result has {list(rows.columns)} "
                              "(ci_low/ci_high need bootstrap > 0).")
        m = rows.pivot(index="site_a", columns="site_b", values=column)
        out = m.reindex(index=self.sites_a, columns=self.sites_b).astype(float)
        out.index.name, out.columns.name = "site_a", "site_b"
        return out

    def best_match(self, measure: str = "cka") -> pd.DataFrame:
        """For each site of A, the site of B where ``measure`` is largest: columns
        ``site_a``, ``layer_a``, ``site_b``, ``layer_b``, ``value`` (``site_b`` empty where
        every value is undefined)."""
        m = self.matrix(measure)
        rows = []
        for site, values in m.iterrows():
            finite = values.dropna()
            best = str(finite.idxmax()) if len(finite) else ""
            rows.append({"site_a": site, "layer_a": layer_of(str(site)), "site_b": best,
                         "layer_b": layer_of(best) if best else -1,
                         "value": float(finite.max()) if len(finite) else math.nan})
        return pd.DataFrame(rows, columns=["site_a", "layer_a", "site_b", "layer_b", "value"])

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        out = {f"best_match_{m}": self.best_match(m) for m in self.measures}
        for m in self.measures:
            out[f"matrix_{m}"] = self.matrix(m).reset_index()
        return out

    def plot(self, measures: list[str] | None = None, **kwargs: Any) -> Any:
        """Heat maps, one panel per measure: rows the layers of A, columns the layers of B,
        one colour scale from 0 to 1 (every measure is a similarity; a negative value is
        drawn as 0, marked by the colour bar's pointed end), each cell's value written in
        when the map is small."""
        import matplotlib.pyplot as plt

        measures = [self._check(m) for m in (measures or self.measures)]
        a, b = self.meta.get("models", ["A", "B"])
        fig, axs = plt.subplots(1, len(measures), figsize=(3.6 * len(measures) + 1, 3.8),
                                squeeze=False)
        for ax, measure in zip(axs[0], measures, strict=True):
            m = self.matrix(measure).to_numpy()
            image = ax.imshow(m, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis",
                              aspect="auto", interpolation="nearest")
            _ticks(ax, self.sites_a, self.sites_b)
            if m.size <= 196:
                for (i, j), v in np.ndenumerate(m):
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 else "black")
            ax.set(xlabel=f"layer of {_label(b)}", ylabel=f"layer of {_label(a)}",
                   title=measure)
            below = bool(np.nanmin(m) < 0) if np.isfinite(m).any() else False
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                         extend="min" if below else "neither")
        n = self.summary.get("n_rows")
        rows = self.meta.get("rows", "")
        fig.suptitle(f"{_label(a)} vs {_label(b)}: {n:,} rows ({rows})" if n else
                     f"{_label(a)} vs {_label(b)}", fontsize=10)
        fig.tight_layout()
        return fig


def _label(text: Any, most: int = 40) -> str:
    """A model label safe for matplotlib (no mathtext), of bounded length."""
    s = str(text).replace("$", r"\$")
    return s if len(s) <= most else s[: most - 1] + "…"


def _axis_labels(sites: list[str]) -> list[str]:
    """Layer numbers where every site has one and they are distinct, else the site names."""
    layers = [layer_of(s) for s in sites]
    if all(v >= 0 for v in layers) and len(set(layers)) == len(layers):
        return [str(v) for v in layers]
    return [_label(s, 18) for s in sites]


def _ticks(ax: Any, sites_a: list[str], sites_b: list[str]) -> None:
    ax.set_yticks(range(len(sites_a)), _axis_labels(sites_a))
    ax.set_xticks(range(len(sites_b)), _axis_labels(sites_b))
    if any(len(t) > 3 for t in _axis_labels(sites_b)):
        ax.tick_params(axis="x", labelrotation=90)


def best_matches(result: CompareResult) -> dict[str, dict[str, Any]]:
    """``measure -> {site_a: {"site_b", "value"}}`` for the summary."""
    out: dict[str, dict[str, Any]] = {}
    for m in result.measures:
        out[m] = {r.site_a: {"site_b": r.site_b, "value": r.value}
                  for r in result.best_match(m).itertuples(index=False)}
    return out
