"""Figures of the category-selectivity notebook: laminar profile, one layer's similarity
matrix with its within/across histograms and category mask, per-dimension variance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.plotting import integer_axis


def plot_laminar(table: pd.DataFrame, model: str = "") -> Any:
    """Within and across means per layer (with Δ), Δ, t, and Δ vs t."""
    import matplotlib.pyplot as plt

    x = np.arange(len(table))
    labels = [str(v) for v in table["layer"]]
    colours = plt.cm.plasma(np.linspace(0, 1, len(table)))
    fig, axs = plt.subplots(2, 2, figsize=(10, 7))
    ax = axs[0, 0]
    ax.plot(x, table["within_mean"], "kh", markerfacecolor=(0.7, 0.9, 0.7), markersize=11,
            label="Within")
    ax.plot(x, table["across_mean"], "ko", markerfacecolor=(0.9, 0.7, 0.7), markersize=10,
            label="Across")
    if table["baseline_mean"].notna().any():
        ax.plot(x, table["baseline_mean"], "k--", linewidth=0.8, label="Random tokens")
    for i in x:
        ax.plot([i, i], [table["within_mean"].iloc[i], table["across_mean"].iloc[i]], "k:",
                linewidth=0.5)
    ax.set(xticks=x, xticklabels=labels, xlabel="Layer", ylabel="Cosine similarity",
           title="A) Within vs across categories")
    ax.legend(fontsize=8)
    axs[0, 1].scatter(x, table["delta"], s=120, c=colours, edgecolor="k", alpha=0.8,
                      label="raw")
    axs[0, 1].plot(x, table["centred_delta"], "k+", markersize=10, label="mean-centred")
    axs[0, 1].set(xticks=x, xticklabels=labels, xlabel="Layer", ylabel="Δ (within − across)",
                  title="B) Similarity mean differences")
    axs[0, 1].legend(fontsize=8)
    axs[1, 0].scatter(x, table["t"], s=120, c=colours, edgecolor="k", alpha=0.8)
    axs[1, 0].set(xticks=x, xticklabels=labels, xlabel="Layer", ylabel="t (Student)",
                  title="C) t-values (pairs are not independent: see p_permutation)")
    axs[1, 1].scatter(table["delta"], table["t"], s=120, c=colours, edgecolor="k", alpha=0.8)
    axs[1, 1].set(xlabel="Δ", ylabel="t", title="D) Δ vs t (colour = layer)")
    fig.suptitle(f"Category selectivity by layer ({model})")
    fig.tight_layout()
    return fig


def plot_layer(vectors: torch.Tensor, labels: np.ndarray, site: str, row: pd.Series,
               bins: int = 20) -> Any:
    """Category mask, cosine similarity matrix and within/across densities of one layer."""
    import matplotlib.pyplot as plt

    u = torch.nn.functional.normalize(vectors.double(), dim=-1)
    sim = (u @ u.T).numpy()
    names, codes = np.unique(labels, return_inverse=True)
    n = len(labels)
    iu = np.triu_indices(n, 1)
    same = codes[iu[0]] == codes[iu[1]]
    mask = np.zeros((n, n))
    mask[iu] = np.where(same, codes[iu[0]] + 1, 0)
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    h = axs[0].imshow(mask, cmap=plt.get_cmap("rainbow", len(names) + 1), vmin=-0.5,
                      vmax=len(names) + 0.5)
    cbar = fig.colorbar(h, ax=axs[0], pad=0.02, ticks=range(len(names) + 1))
    cbar.ax.set_yticklabels(["across", *names])
    axs[0].set(xlabel="Word index", ylabel="Word index", title="A) Category mask (upper)")
    off = sim[iu]
    h = axs[1].imshow(sim, vmin=np.percentile(off, 2), vmax=np.percentile(off, 98))
    fig.colorbar(h, ax=axs[1], pad=0.02, label="cosine")
    axs[1].set(xlabel="Word index", ylabel="Word index", title=f"B) Cosine similarity, {site}")
    edges = np.linspace(off.min(), off.max(), bins + 1)
    for values, label in [(off[same], "Within-category"), (off[~same], "Across-category")]:
        dens, _ = np.histogram(values, bins=edges, density=True)
        axs[2].plot((edges[:-1] + edges[1:]) / 2, dens, linewidth=2, label=label)
    axs[2].set(ylim=(0, None), xlabel="Cosine similarity", ylabel="Density",
               title=f"C) Δ = {row['delta']:.3f}, t = {row['t']:.2f}")
    axs[2].legend()
    integer_axis(axs[0], axs[1], which="both")
    fig.tight_layout()
    return fig


def plot_variance(vectors: dict[str, torch.Tensor], span: float = 1e8) -> Any:
    """Variance across words of each dimension, per layer (jittered), on a log axis that spans
    ``span`` below the largest variance: dimensions with (nearly) no variance would otherwise
    stretch the axis to 1e-66; they are drawn at the floor as down-pointing triangles and
    counted in the title."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    rng = np.random.default_rng(0)
    variances = [v.double().var(dim=0).numpy() for v in vectors.values()]
    top = max((float(var.max()) for var in variances if var.size), default=1.0)
    floor = top / span if top > 0 else 1e-12
    n_below = 0
    for i, var in enumerate(variances):
        x = rng.normal(i, 0.03, len(var))
        low = var < floor
        n_below += int(low.sum())
        ax.plot(x[~low], var[~low], "o", markeredgecolor="k", markersize=5, alpha=0.3)
        if low.any():
            ax.plot(x[low], np.full(int(low.sum()), floor), "v", color="0.4", markersize=5)
    title = "Per-dimension variance by layer"
    if n_below:
        title += f" ({n_below} below {floor:.0e}, drawn at the floor)"
    ax.set(xticks=range(len(vectors)), xticklabels=list(vectors), yscale="log",
           ylabel="Variance across words", title=title)
    ax.set_ylim(bottom=floor / 2)
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return fig
