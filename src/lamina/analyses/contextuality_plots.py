"""Figures of :class:`lamina.analyses.contextuality.ContextualityResult`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def plot_profile(table: pd.DataFrame, title: str) -> Any:
    """Three panels across layers: raw self- and intra-sentence similarity with the
    anisotropy baseline; the baseline-adjusted values (raw and standardised); MEV with its
    baseline."""
    import matplotlib.pyplot as plt

    from lamina.plotting import integer_axis

    x = table["layer"].to_numpy()
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axs[0]
    ax.plot(x, table["self_similarity"], marker="o", label="self-similarity")
    ax.plot(x, table["intra_sentence_similarity"], marker="s", label="intra-sentence")
    ax.plot(x, table["anisotropy_baseline"], color="k", linestyle="--", marker=".",
            label="anisotropy baseline\n(different words)")
    ax.set(xlabel="Layer", ylabel="Mean cosine", title="A) Raw, with the baseline")
    ax = axs[1]
    ax.plot(x, table["self_similarity_adjusted"], marker="o", label="self-similarity")
    ax.plot(x, table["intra_sentence_similarity_adjusted"], marker="s", label="intra-sentence")
    ax.plot(x, table["mev_adjusted"], marker="^", label="MEV")
    ax.plot(x, table["self_similarity_std_adjusted"], marker="o", linestyle=":",
            color="C0", alpha=0.7, label="self-sim., standardised dims")
    ax.plot(x, table["intra_sentence_similarity_std_adjusted"], marker="s", linestyle=":",
            color="C1", alpha=0.7, label="intra, standardised dims")
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set(xlabel="Layer", ylabel="Value - its baseline", title="B) Adjusted for anisotropy")
    ax = axs[2]
    ax.plot(x, table["mev"], marker="^", color="C2", label="MEV (mean over words)")
    ax.plot(x, table["mev_baseline"], color="k", linestyle="--", marker=".",
            label="MEV of all occurrences")
    ax.set(xlabel="Layer", ylabel="Variance share of the first PC",
           title="C) Maximum explainable variance")
    for ax in axs:
        ax.legend(fontsize=7)
    integer_axis(*axs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_outliers(table: pd.DataFrame, title: str) -> Any:
    """Rogue dimensions (the largest single dimension's share of the mean cosine) and
    massive activations (largest ``|a|`` over the median ``|a|``, log scale) per layer."""
    import matplotlib.pyplot as plt

    from lamina.plotting import integer_axis

    x = table["layer"].to_numpy()
    fig, axs = plt.subplots(1, 2, figsize=(11, 4))
    axs[0].bar(x, table["top_dim_share"], color="C3")
    for xi, share, dim in zip(x, table["top_dim_share"], table["top_dim"], strict=True):
        if np.isfinite(share):
            axs[0].annotate(f"d{int(dim)}", (xi, share), ha="center", va="bottom", fontsize=7)
    axs[0].set(xlabel="Layer", ylabel="Share of the mean cosine",
               title="A) Rogue dimensions: the top dimension's share")
    ratio = table["max_ratio"].to_numpy(dtype=float)
    axs[1].plot(x, ratio, marker="o", color="C4")
    axs[1].axhline(100, color="k", linestyle=":", linewidth=0.8, label="100 x median")
    if np.isfinite(ratio).any() and np.nanmin(ratio) > 0:
        axs[1].set_yscale("log")
    axs[1].set(xlabel="Layer", ylabel="max |a| / median |a|",
               title="B) Massive activations")
    axs[1].legend(fontsize=8)
    integer_axis(*axs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
