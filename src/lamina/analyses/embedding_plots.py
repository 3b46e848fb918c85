"""Figures of the all-to-all embedding notebook, drawn from an :class:`EmbeddingsResult`."""

from __future__ import annotations

from typing import Any

import numpy as np

from lamina.plotting import every_nth, integer_axis, token_label


def similarity_overview(result: Any) -> Any:
    """A) cosine similarity heat map of an evenly spaced subsample; B, C) the histogram of all
    unique pairs, linear and log density (exact counts over the whole vocabulary)."""
    import matplotlib.pyplot as plt

    s, h = result.summary, result.histogram
    fig, axs = plt.subplots(1, 3, figsize=(16, 4))
    sim = result.arrays["sample_sim"]
    off = sim[np.triu_indices(len(sim), 1)]
    im = axs[0].imshow(sim, vmin=np.percentile(off, 1), vmax=np.percentile(off, 99),
                       cmap="plasma")
    fig.colorbar(im, ax=axs[0], pad=0.01, label="cosine")
    step = max(1, s["n_tokens"] // len(sim))
    axs[0].set(title=f"A) Cosine similarity, {every_nth(step)}",
               xticks=[], yticks=[], xlabel="Tokens", ylabel="Tokens")
    centres = (h["bin_low"] + h["bin_high"]) / 2
    width = float(h["bin_high"].iloc[0] - h["bin_low"].iloc[0])
    used = h[(h["cosine"] > 0) | (h["correlation"] > 0)]
    lo, hi = used["bin_low"].min(), used["bin_high"].max()
    for ax, log in ((axs[1], False), (axs[2], True)):
        for col, colour in (("cosine", (0.6, 0.3, 0.6)), ("correlation", (0.3, 0.6, 0.6))):
            dens = h[col] / max(h[col].sum(), 1) / width
            ax.plot(centres, dens, color=colour, linewidth=1.5, label=col)
        ax.set(xlim=(lo, hi), xlabel="Similarity", ylabel="Density (log)" if log else "Density",
               yscale="log" if log else "linear")
        ax.legend(fontsize=8)
    axs[1].set_title(f"B) All {s['n_pairs']:,} unique pairs (mean {s['mean']:.3f})")
    axs[2].set_title("C) The same, log density")
    fig.tight_layout()
    return fig


def matrix_heatmap(W: np.ndarray, ids: np.ndarray) -> Any:
    """The embedding matrix (subsampled tokens) as an image: tokens x dimensions."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4))
    lim = float(np.percentile(np.abs(W), 98))
    im = ax.imshow(W.T, vmin=-lim, vmax=lim, aspect="auto", cmap="bwr",
                   extent=[ids[0], ids[-1], W.shape[1], 0])
    fig.colorbar(im, ax=ax, pad=0.01)
    ax.set(xlabel="Token index", ylabel="Embedding dimension",
           title=f"Embedding matrix ({len(ids)} evenly spaced tokens)")
    integer_axis(ax, which="both")
    fig.tight_layout()
    return fig


def cosine_vs_correlation(result: Any) -> Any:
    """A) cosine vs correlation of random pairs; B) arithmetic vs L1 means of the rows;
    C) distribution of row norms."""
    import matplotlib.pyplot as plt

    a = result.arrays
    agree = result.summary["cosine_correlation_agreement"]
    fig, axs = plt.subplots(1, 3, figsize=(15, 4))
    axs[0].plot(a["scatter_cor"], a["scatter_cos"], "o", markersize=2, alpha=0.3,
                color=(0.4, 0.4, 0.7))
    axs[0].axline((0, 0), slope=1, color="k", linestyle="--", linewidth=0.5)
    r = agree["pearson_r"]
    axs[0].set(xlabel="Correlation coefficient", ylabel="Cosine similarity",
               title=f"A) {agree['n_sampled_pairs']:,} random pairs "
               f"({'r undefined' if r is None else f'r = {r:.3f}'})")
    for values, label in ((a["row_means"], "Arithmetic means"), (a["l1_means"], "L1 means")):
        counts, edges = np.histogram(values, bins=80)
        axs[1].plot(edges[:-1], counts, linewidth=2, label=label)
    axs[1].set(xlabel="Mean of the row", ylabel="Tokens", ylim=(0, None),
               title="B) Arithmetic vs L1 means of embeddings")
    axs[1].legend()
    axs[2].hist(a["norms"], bins=80, color=(0.7, 0.7, 0.9), edgecolor="k", linewidth=0.3)
    axs[2].set(xlabel="Embedding norm", ylabel="Tokens", title="C) Norms")
    fig.tight_layout()
    return fig


def unused_tokens(mask: np.ndarray, summary: dict) -> Any:
    """Where the tokenizer's unused tokens sit in the vocabulary."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(np.arange(len(mask)), rng.normal(0, 0.025, len(mask)) + mask, "ko", markersize=2,
            markerfacecolor="w", alpha=0.3)
    n = int(mask.sum())
    ax.set(xlabel="Token index", yticks=[0, 1], yticklabels=["Used", "Unused"], ylim=(-0.5, 1.5),
           title=f"{n}/{len(mask)} ({100 * n / len(mask):.2f}%) unused tokens; their "
                 f"{n * (n - 1) // 2:,} pairs take {summary['unused_unique_values']} distinct "
                 "cosine values")
    integer_axis(ax)
    fig.tight_layout()
    return fig


def probe(result: Any) -> Any:
    """The embeddings of two words, by dimension and against each other."""
    import matplotlib.pyplot as plt

    a, b = result.arrays["probe_a"], result.arrays["probe_b"]
    w1, w2 = (token_label(w) for w in result.arrays["probe_words"])
    fig = plt.figure(figsize=(12, 3))
    ax1 = fig.add_subplot(1, 4, (1, 3))
    ax2 = fig.add_subplot(1, 4, 4)
    ax1.plot(a, "ks", markerfacecolor=(0.9, 0.7, 0.7, 0.5), markersize=4, label=w1)
    ax1.plot(b, "ko", markerfacecolor=(0.7, 0.9, 0.7, 0.5), markersize=4, label=w2)
    ax1.set(xlabel="Embedding dimension", ylabel="Value", title="Embeddings of two words")
    ax1.legend()
    integer_axis(ax1)
    ax2.plot(a, b, "ko", markerfacecolor=(0.7, 0.7, 0.9, 0.5))
    ax2.set(xlabel=w1, ylabel=w2, title=f"cosine = {result.summary['probe']['cosine']:.3f}")
    fig.tight_layout()
    return fig
