"""Vector norms per site and layer: do they vary enough that cosine beats Euclidean distance?

The first seed notebook's opening question: block outputs' norms grow through the layers and
spread out, so Euclidean distances would mostly compare lengths. This analysis measures mean,
std and coefficient of variation of the norms, and draws the conclusion from the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lamina.activations import Activations
from lamina.corpus import sample_lines
from lamina.models import Model, load
from lamina.results import Result
from lamina.sites import Site, layer_of
from lamina.store import Store

#: Across-layer ratio of mean norms, or within-layer CV, above which cosine is preferred.
RATIO_LIMIT, CV_LIMIT = 1.2, 0.1


@dataclass
class NormsResult(Result):
    """One row per site: ``site``, ``layer``, ``n``, ``mean_norm``, ``std_norm``, ``cv``,
    ``min_norm``, ``max_norm``. ``summary["conclusion"]`` states cosine vs Euclidean."""

    table: pd.DataFrame
    name = "norms"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, **kwargs: Any) -> Any:
        import matplotlib.pyplot as plt

        from lamina.plotting import integer_axis

        fig, axs = plt.subplots(1, 2, figsize=(11, 4))
        for kind, rows in self.table.groupby("kind", sort=False):
            x = rows["layer"].to_numpy()
            axs[0].errorbar(x, rows["mean_norm"], yerr=rows["std_norm"], marker="o",
                            capsize=3, label=kind)
            axs[1].plot(x, rows["cv"], marker="s", label=kind)
        axs[0].set(xlabel="Layer", ylabel="Vector norm (mean ± std)", title="A) Norms per layer")
        axs[1].set(xlabel="Layer", ylabel="Coefficient of variation",
                   title="B) Spread of norms across items")
        axs[1].axhline(CV_LIMIT, color="k", linestyle=":", linewidth=0.8)
        for ax in axs:
            ax.legend(fontsize=8)
        integer_axis(*axs)
        fig.suptitle(f"{self.meta.get('model', '')}: {self.summary.get('conclusion_short', '')}")
        fig.tight_layout()
        return fig


def _kind(site: str) -> str:
    parts = site.split(".")
    if site.startswith("hidden."):
        return "hidden"
    if site.startswith("blocks."):
        return parts[-1].removeprefix("hook_")
    return site


def _norm_values(source: Activations | Store, name: str) -> np.ndarray:
    """Norms of every captured vector of one site (a store is read block by block)."""
    if isinstance(source, Store):
        return np.concatenate([b.double().flatten(1).norm(dim=-1).numpy()
                               for b in source[name].iter_blocks()])
    t = source[name].double()
    if source.all_positions:
        t = t[source.mask]
    return t.flatten(1).norm(dim=-1).numpy()


def norms_of(acts: Activations | Store, sites: Sequence[Site] | None = None, *,
             allow_partial: bool = False) -> NormsResult:
    """Norm statistics of already captured activations (one position or all, masked), or of
    every row of an on-disk store (read lazily, block by block).

    An incomplete store (its collect stopped early) is refused unless ``allow_partial``; then
    ``summary`` and ``meta`` say ``partial: True`` with ``n_committed`` of ``n_rows``."""
    state = acts.require_complete(allow_partial) if isinstance(acts, Store) else {}
    layers = {s.name: s.layer for s in sites} if sites else {}
    rows = []
    for name in acts.sites:
        values = _norm_values(acts, name)
        mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append({
            "site": name, "kind": _kind(name), "layer": layers.get(name, layer_of(name)),
            "n": len(values), "mean_norm": mean, "std_norm": std,
            "cv": std / mean if mean > 0 else float("nan"),
            "min_norm": float(values.min()), "max_norm": float(values.max()),
        })
    table = pd.DataFrame(rows)
    meta = ({"model": acts.manifest["model"], "store": str(acts.path), **state}
            if isinstance(acts, Store) else dict(acts.meta))
    return NormsResult(table, summary={**_conclusion(table), **state}, meta=meta)


def _conclusion(table: pd.DataFrame) -> dict[str, Any]:
    ratios = {kind: float(rows["mean_norm"].max() / rows["mean_norm"].min())
              for kind, rows in table.groupby("kind") if rows["mean_norm"].min() > 0}
    ratio = max(ratios.values(), default=1.0)
    cv = float(table["cv"].max())
    prefer_cosine = ratio > RATIO_LIMIT or cv > CV_LIMIT
    text = (
        f"Mean norms vary {ratio:.2f}x across layers and the coefficient of variation across "
        f"items reaches {cv:.2f} within a layer: "
        + ("Euclidean distances would largely compare vector lengths, so cosine similarity is "
           "the better measure of representational similarity here."
           if prefer_cosine else
           "norms are nearly constant, so cosine and Euclidean distance rank pairs alike.")
    )
    return {
        "max_layer_ratio": ratio, "layer_ratio_by_kind": ratios, "max_cv": cv,
        "prefer_cosine": prefer_cosine, "conclusion": text,
        "conclusion_short": "cosine preferred" if prefer_cosine else "norms nearly constant",
        "thresholds": {"layer_ratio": RATIO_LIMIT, "cv": CV_LIMIT},
    }


def norms(
    model: Model | str,
    texts: Iterable[str] | None = None,
    *,
    sites: str | Sequence[str] = ("hidden.*",),
    positions: str | int = "last",
    batch_size: int = 32,
    truncate: bool = False,
) -> NormsResult:
    """Mean, std and coefficient of variation of vector norms per site.

    Args:
        model: a :class:`Model` or anything :func:`lamina.load` accepts.
        texts: input strings (default: 64 lines of TinyShakespeare).
        sites: sites to measure (default every ``hidden.{i}``).
        positions: which tokens (``"last"``, ``"all"``, ...), as in :meth:`Model.collect`.
        truncate: cut texts longer than the context (with a warning) instead of raising.

    Returns:
        :class:`NormsResult`; ``to_frame()`` has one row per site.
    """
    model = load(model)
    texts = list(texts) if texts is not None else sample_lines(64)
    resolved = model.resolve_sites(sites)
    acts = model.collect(texts, [s.name for s in resolved], positions=positions,
                         batch_size=batch_size, truncate=truncate)
    result = norms_of(acts, resolved)
    result.meta.update({"n_texts": len(texts), "positions": positions})
    return result


__all__ = ["NormsResult", "norms", "norms_of"]
