"""Words in context: how similar are the representations of the same word across its
occurrences in a corpus, compared with other words, layer by layer? (The fourth seed notebook,
parts 4-6.)

Every occurrence of each target token (up to a cap, sampled reproducibly) is fed with its
preceding ``window`` tokens, the target last, and represented at that last position. Per layer,
the engine's group statistics give within-word and across-word means, t, Welch's t, Cohen's d
and a permutation p-value exactly from Gram matrices, and streamed histograms give the full
distributions (the "tornado" figure) without ever forming the N x N matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamina.analyses._checks import single_token
from lamina.analyses.layerwise import COLUMNS, within_across
from lamina.checks import check_int
from lamina.corpus import text_of
from lamina.errors import ContextLengthError, LaminaError
from lamina.models import Model, load
from lamina.results import Result
from lamina.similarity import scan

#: The columns of :attr:`ContextsResult.table` (of :data:`~lamina.analyses.layerwise.COLUMNS`).
TABLE_COLUMNS = tuple(c for c in COLUMNS if c not in ("p_t", "p_welch", "centred_t"))


@dataclass
class ContextsResult(Result):
    """``to_frame()``: one row per layer (``layer``, ``site``, ``within_mean``,
    ``across_mean``, ``delta``, ``t``, ``t_welch``, ``cohens_d``, ``p_permutation``,
    ``centred_delta``, ``baseline_mean``). ``pairs``: per layer and word pair, count, mean,
    var. ``histograms``: site -> ``[n_word_pairs, n_bins]`` counts (rows as in ``pairs``),
    ``edges``: the bin edges. ``counts``: occurrences per word."""

    table: pd.DataFrame
    pairs: pd.DataFrame
    counts: pd.DataFrame
    histograms: dict[str, np.ndarray]
    edges: np.ndarray
    name = "contexts"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"context_pairs": self.pairs, "context_counts": self.counts}

    def groups(self) -> list[tuple[str, np.ndarray]]:
        """(name, ``[n_layers, n_bins]`` counts): all within-word pairs, then each word pair."""
        first = self.pairs[self.pairs["site"] == self.table["site"].iloc[0]]
        stack = np.stack([self.histograms[s] for s in self.table["site"]])  # [L, P, B]
        out = [("within word", stack[:, first["within"].to_numpy()].sum(1))]
        for k, row in enumerate(first.itertuples()):
            if not row.within:
                out.append((f"<{row.group_a}, {row.group_b}>", stack[:, k]))
        return out

    def plot(self, **kwargs: Any) -> Any:
        """The tornado figure: layer x similarity-bin heat maps (probability per layer, one
        colour scale for every panel), then the word x word matrix of mean cosines between
        occurrences at the middle layer."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize

        groups = self.groups()
        used = np.flatnonzero(sum(g.sum(0) for _, g in groups) > 0)
        lo, hi = (used.min(), used.max() + 1) if len(used) else (0, len(self.edges) - 1)
        probs = [c[:, lo:hi] / np.maximum(c.sum(1, keepdims=True), 1) for _, c in groups]
        positive = np.concatenate([p[p > 0] for p in probs])
        norm = Normalize(0, float(np.percentile(positive, 95)) if len(positive) else 1.0)
        fig, axs = plt.subplots(1, len(groups) + 1, figsize=(4 * len(groups) + 5, 4),
                                squeeze=False, layout="constrained")
        n_layers = len(self.table)
        for ax, (name, _), prob in zip(axs[0], groups, probs, strict=False):
            h = ax.imshow(prob, aspect="auto", origin="lower", cmap="magma", norm=norm,
                          extent=[self.edges[lo], self.edges[hi], -0.5, n_layers - 0.5])
            ax.set(xlabel="Cosine similarity", ylabel="Layer", title=name,
                   yticks=range(n_layers), yticklabels=list(self.table["layer"]))
        fig.colorbar(h, ax=list(axs[0, :-1]), pad=0.01, label="probability (shared scale)")
        self._plot_matrix(fig, axs[0, -1])
        fig.suptitle(f"Same word in context: similarity distributions by layer "
                     f"({self.meta.get('model', '')})")
        return fig

    def word_matrix(self, layer: int | None = None) -> pd.DataFrame:
        """Word x word mean cosine between occurrences at ``layer`` (default: the middle
        one); the diagonal is the within-word mean."""
        site = self._site(layer)
        rows = self.pairs[self.pairs["site"] == site]
        words = list(self.counts["word"])
        out = pd.DataFrame(np.nan, index=words, columns=words)
        for row in rows.itertuples():
            out.loc[row.group_a, row.group_b] = out.loc[row.group_b, row.group_a] = row.mean
        return out

    def _site(self, layer: int | None) -> str:
        sites = self.table["site"]
        if layer is None:
            return str(sites.iloc[len(sites) // 2])
        match = self.table[self.table["layer"] == layer]
        if match.empty:
            raise LaminaError(f"layer {layer} is not among the result's layers "
                              f"{list(self.table['layer'])}.")
        return str(match["site"].iloc[0])

    def _plot_matrix(self, fig: Any, ax: Any) -> None:
        from lamina.plotting import token_label

        matrix = self.word_matrix()
        values = matrix.to_numpy(dtype=float)
        h = ax.imshow(values, cmap="viridis")
        labels = [token_label(w) for w in matrix.index]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        if len(labels) <= 12:
            mid = np.nanmean(values)
            for i, j in np.ndindex(values.shape):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="black" if values[i, j] > mid else "white")
        fig.colorbar(h, ax=ax, pad=0.01, label="mean cosine")
        ax.set(title=f"Mean cosine between occurrences\n{self._site(None)}")

    def plot_layer(self, layer: int | None = None) -> Any:
        """Within- and across-word similarity densities of one layer."""
        import matplotlib.pyplot as plt

        idx = len(self.table) // 2 if layer is None else int(
            np.flatnonzero(self.table["layer"].to_numpy() == layer)[0])
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        width = np.diff(self.edges)
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, counts in self.groups():
            c = counts[idx]
            if c.sum():
                ax.plot(centres, c / c.sum() / width, linewidth=2, label=name)
        row = self.table.iloc[idx]
        ax.set(xlabel="Cosine similarity", ylabel="Density", ylim=(0, None),
               title=f"{row['site']}: Δ = {row['delta']:.3f}, t = {row['t']:.1f}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def figures(self) -> dict[str, Any]:
        return {"contexts_tornado": self.plot(), "contexts_layer": self.plot_layer()}


def fitted_range(acts: Any, margin: float = 0.02) -> tuple[float, float]:
    """(low, high) holding every pair cosine of every site of ``acts``, widened by ``margin``
    of the span (at least 1e-6) on each side."""
    scans = [scan(acts[site].flatten(1), dtype="float64") for site in acts.sites]
    lo, hi = min(r.min for r in scans), max(r.max for r in scans)
    pad = max((hi - lo) * margin, 1e-6)
    return float(lo - pad), float(hi + pad)


def _corpus_ids(model: Model, corpus: str | Path) -> np.ndarray:
    ids = model.tokenizer(text_of(corpus), add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def check_targets(model: Model, targets: Sequence[str]) -> list[int]:
    """Token id of each target word; refuses fewer than two words, a word given twice and two
    words that are the same token (e.g. "King" and "king" for an uncased tokenizer)."""
    if isinstance(targets, str) or len(targets) < 2:
        raise LaminaError("Give at least two target words (a list), to compare within and "
                          "across words.",
                          cli="Give at least two target words (--target a --target b), to "
                          "compare within and across words.")
    ids = [single_token(model, word, "target", "--target") for word in targets]
    seen: dict[int, str] = {}
    for word, tid in zip(targets, ids, strict=True):
        if tid in seen:
            same = "is given twice" if seen[tid] == word else (
                f"and {seen[tid]!r} are the same token ({tid})")
            raise LaminaError(f"The target {word!r} {same}: give each word once.",
                              cli=f"--target {word!r} {same}: give each word once.")
        seen[tid] = word
    return ids


def occurrences(ids: np.ndarray, targets: Sequence[str], target_ids: Sequence[int],
                window: int, max_per_target: int | None, seed: int
                ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Sampled positions of each target token (each with ``window`` tokens before it); a
    target needs two usable occurrences, so that it has a within-word pair."""
    rng = np.random.default_rng(seed)
    picks, rows = [], []
    for word, tid in zip(targets, target_ids, strict=True):
        where = np.flatnonzero(ids == tid)
        usable = where[where >= window]
        if len(usable) < 2:
            where_ = "never occurs" if len(where) == 0 else (
                f"occurs {len(where)} time(s), {len(usable)} after the first {window} tokens")
            what = (f"The target {word!r} (token {tid}) {where_} in the corpus, and needs two "
                    "occurrences with a full window before them: choose another word, check its "
                    "spelling and leading space (GPT-2 style tokenizers need ' word'), ")
            raise LaminaError(what + "use a smaller window or a longer corpus.",
                              cli=what + "use a smaller --window or a longer --text-file.")
        chosen = np.sort(rng.choice(usable, size=min(len(usable), max_per_target or len(usable)),
                                    replace=False))
        picks.append(chosen)
        rows.append({"word": word, "token_id": tid, "occurrences": len(where),
                     "usable": len(usable), "sampled": len(chosen)})
    return picks, pd.DataFrame(rows)


def contexts(model: Model | str, corpus: str | Path, targets: Sequence[str], *,
             window: int = 50, max_per_target: int | None = 1000, seed: int = 0,
             sites: Any = ("hidden.*",), bins: int = 80, range: tuple[float, float] | None = None,
             permutations: int = 0, baseline: int = 200, batch_size: int = 64
             ) -> ContextsResult:
    """Same-word-in-context similarity per layer.

    Args:
        corpus: the text itself (a ``str``), or a UTF-8 text file (a :class:`pathlib.Path`;
            a ``str`` is never read as a file name, so pass ``Path("corpus.txt")``).
        targets: two or more different words, each a single token of the model's tokenizer,
            each occurring at least twice after the first ``window`` tokens.
        window: tokens of context before each occurrence (the target is the last token), at
            least 1 (with none, every occurrence of a word would be the same input).
        max_per_target: cap on occurrences per word (at least 2), sampled with ``seed``
            (None: all).
        bins, range: the streamed histograms of pair similarities; ``range=None`` fits it
            to the data: the smallest and largest pair cosine over every layer, plus 2% of
            that span on each side (one range for all layers, so their rows compare).
        permutations: label permutations for ``p_permutation`` (0: skip).
        baseline: random corpus positions for the random-pair baseline (0: skip).

    Everything is checked before the model runs. ``summary["notes"]`` says why a statistic
    is undefined (NaN), if one is.
    """
    check_int(window, "window", 1, option="--window", why=" (tokens of context before each "
                "occurrence; with none, every occurrence of a word is the same input)")
    if max_per_target is not None:
        check_int(max_per_target, "max_per_target", 2, option="--max-per-target",
                    why=" (each word needs two occurrences for a within-word pair)")
    check_int(permutations, "permutations", 0, option="--permutations")
    if check_int(baseline, "baseline", 0) == 1:
        raise LaminaError("baseline must be 0 (no baseline) or at least 2 random positions, "
                          "to form a pair.")
    check_int(bins, "bins", 1)
    model = load(model)
    if model.max_length and window + 1 > model.max_length:
        raise ContextLengthError(f"window + 1 = {window + 1} tokens exceeds the model's "
                                 f"context of {model.max_length}: use a smaller window.",
                                 cli=f"--window {window} plus the target is {window + 1} tokens, "
                                 f"more than the model's context of {model.max_length}: use a "
                                 "smaller --window.")
    target_ids = check_targets(model, targets)
    ids = _corpus_ids(model, corpus)
    picks, counts = occurrences(ids, targets, target_ids, window, max_per_target, seed)
    labels = np.concatenate([np.full(len(p), w, dtype=object) for p, w in zip(
        picks, targets, strict=True)])
    positions = np.concatenate(picks)
    windows = [ids[p - window : p + 1].tolist() for p in positions]
    acts = model.collect(windows, sites, positions="last", batch_size=batch_size)
    base_acts = None
    if baseline:
        rng = np.random.default_rng(seed + 1)
        random_pos = rng.integers(window, len(ids), size=baseline)
        base_acts = model.collect([ids[p - window : p + 1].tolist() for p in random_pos],
                                  acts.sites, positions="last", batch_size=batch_size)
    if range is None:
        range = fitted_range(acts)
    base = {} if base_acts is None else {
        site: scan(base_acts[site].flatten(1), dtype="float64").mean for site in acts.sites}
    wa = within_across({site: acts[site].flatten(1) for site in acts.sites}, labels,
                       baseline=base, permutations=permutations, seed=seed, bins=bins,
                       range=range)
    return ContextsResult(
        wa.table[list(TABLE_COLUMNS)], wa.pairs, counts, wa.histograms, wa.edges,
        summary={"n_occurrences": int(len(positions)), "counts": counts.to_dict("records"),
                 "notes": wa.notes},
        meta=model.describe(targets=list(targets), window=window,
                            max_per_target=max_per_target, seed=seed, bins=bins,
                            range=[float(r) for r in range], permutations=permutations,
                            baseline=baseline,
                            corpus=str(corpus) if isinstance(corpus, Path)
                            else f"<text of {len(corpus)} characters>"),
    )
