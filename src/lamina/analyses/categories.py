"""Category selectivity: do words of one category sit closer together than words of different
categories, and in which layer? (The fourth seed notebook, parts 1-3.)

Per layer, the cosine similarities of the unique word pairs are split into within- and
across-category pairs; lamina reports their means, the difference Δ, Student's t as the notebook
does (``scipy.stats.ttest_ind`` over the pairs), Welch's t, Cohen's d and a label-permutation
p-value. Pairs share words, so they are *not* independent samples: the t-tests' p-values are
optimistic, and the permutation p-value (which relabels words, not pairs) is the one to trust.
Because representations share a common direction (anisotropy), raw cosines run high
everywhere: the mean-centred cosine's Δ and t and a random-token baseline are reported beside.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.analyses.category_plots import plot_laminar, plot_layer, plot_variance
from lamina.analyses.layerwise import within_across
from lamina.checks import check_int
from lamina.corpus import read_text_file
from lamina.errors import LaminaError, TokenizationError
from lamina.models import Model, load
from lamina.results import Result
from lamina.similarity import scan

#: The notebook's words: (category, word).
BUILTIN_WORDS: list[tuple[str, str]] = [
    *[("space", w) for w in
      "galaxy asteroid comet cosmos space sun planet moon star orbit".split()],
    *[("furniture", w) for w in
      "ceiling sofa couch carpet door window lamp chair table rug bed floor wall".split()],
    *[("fruit", w) for w in
      "pear grape banana cherry peach apple seed jelly orange lime fruit".split()],
]


@dataclass
class CategoriesResult(Result):
    """``to_frame()``: one row per layer (``layer``, ``site``, ``within_mean``,
    ``across_mean``, ``delta``, ``t``, ``t_welch``, ``cohens_d``, ``p_permutation``, ``p_t``,
    ``centred_delta``, ``centred_t``, ``baseline_mean``). ``pairs``: the per-category-pair
    breakdown. ``vectors``: site -> ``[n_words, d]`` representations used."""

    table: pd.DataFrame
    pairs: pd.DataFrame
    words: pd.DataFrame
    vectors: dict[str, torch.Tensor] = field(repr=False)
    name = "categories"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"category_pairs": self.pairs, "words": self.words}

    def plot(self, **kwargs: Any) -> Any:
        """The laminar profile: within/across per layer, Δ, t, Δ vs t."""
        return plot_laminar(self.table, self.meta.get("model", ""))

    def plot_layer(self, layer: int | None = None) -> Any:
        """Category mask, similarity matrix and within/across histograms of one layer."""
        site = self._site(layer)
        return plot_layer(self.vectors[site], self.words["label"].to_numpy(), site,
                          self.table.set_index("site").loc[site])

    def plot_variance(self) -> Any:
        """Per-dimension variance across words, per layer (the notebook's part 1)."""
        return plot_variance(self.vectors)

    def figures(self) -> dict[str, Any]:
        return {"categories_laminar": self.plot(), "categories_layer": self.plot_layer(),
                "categories_variance": self.plot_variance()}

    def _site(self, layer: int | None) -> str:
        sites = list(self.table["site"])
        if layer is None:
            return sites[len(sites) // 2]
        match = self.table[self.table["layer"] == layer]
        if match.empty:
            raise LaminaError(f"No layer {layer}: layers are {list(self.table['layer'])}.")
        return str(match["site"].iloc[0])


def _read_csv(path: Path) -> pd.DataFrame:
    text = read_text_file(path, option="words")
    try:  # every cell a string: "NA", "null" and "nan" are words, not missing values
        return pd.read_csv(io.StringIO(text), dtype=str, skipinitialspace=True,
                           keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LaminaError(f"{path} is not a CSV with columns label,word: "
                          f"{' '.join(str(err).split())}") from None


def read_words(words: Any) -> pd.DataFrame:
    """``(label, word)`` pairs, a frame with ``label``/``word`` or a CSV path -> frame,
    checked: at least two categories, each of at least two words (so that it has a
    within-category pair), no empty label or word, no word twice."""
    if words is None:
        return pd.DataFrame(BUILTIN_WORDS, columns=["label", "word"])
    if isinstance(words, (str, Path)):
        frame = _read_csv(Path(words))
        row = f"line {{}} of {words}"
        first = 2  # the header is line 1
    elif isinstance(words, pd.DataFrame):
        frame, row, first = words.reset_index(drop=True), "row {}", 0
    else:
        try:
            frame = pd.DataFrame(list(words), columns=["label", "word"])
        except (TypeError, ValueError):
            raise LaminaError("words must be (label, word) pairs, a frame with columns label "
                              "and word, or the path of such a CSV file.") from None
        row, first = "pair {}", 0
    if not {"label", "word"} <= set(frame.columns):
        raise LaminaError(f"The word list needs columns label and word (a CSV's first line: "
                          f"label,word), not {list(frame.columns)}.")
    frame = frame[["label", "word"]]
    for i, (label, word) in enumerate(frame.itertuples(index=False)):
        for what, value in (("label", label), ("word", word)):
            if pd.isna(value) or not str(value).strip():
                raise LaminaError(f"{row.format(i + first)} has an empty {what}: every entry "
                                  "needs a label and a word.")
    frame = frame.astype(str).apply(lambda col: col.str.strip())
    repeated = frame["word"][frame["word"].duplicated()]
    if len(repeated):
        word = repeated.iloc[0]
        where = [row.format(i + first) for i in np.flatnonzero(frame["word"] == word)]
        raise LaminaError(f"The word {word!r} appears more than once ({', '.join(where)}): "
                          "give each word once (a repeat would pair a word with itself).")
    sizes = frame["label"].value_counts()
    if len(sizes) < 2:
        have = f"one category ({sizes.index[0]!r})" if len(sizes) else "no words"
        raise LaminaError(f"The word list has {have}: give at least two categories, each of "
                          "at least two words, to compare within and across categories.")
    if (sizes < 2).any():
        label = sizes.index[sizes < 2][0]
        word = frame.loc[frame["label"] == label, "word"].iloc[0]
        raise LaminaError(f"The category {label!r} has one word ({word!r}): give each "
                          "category at least two words, so that it has a within-category "
                          "pair.")
    return frame.reset_index(drop=True)


def word_positions(model: Model, texts: list[str], spans: list[tuple[int, int]],
                   pooling: str | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each text and the indices of the tokens covering each word's span."""
    enc = model.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    positions = []
    for i, (offsets, (lo, hi)) in enumerate(zip(enc["offset_mapping"], spans, strict=True)):
        idx = [t for t, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
        if not idx:
            raise TokenizationError(f"No token of {texts[i]!r} covers its word.")
        if len(idx) > 1 and pooling is None:
            pieces = model.token_strings([enc["input_ids"][i][t] for t in idx])
            what = f"{texts[i][lo:hi]!r} is {len(idx)} tokens {pieces}: choose single-token words "
            raise TokenizationError(what + "or pass pooling='last' or 'mean'.",
                                    cli=what + "or pass --pooling last or --pooling mean.")
        positions.append(idx)
    return [list(x) for x in enc["input_ids"]], positions


def check_options(template: str | None, pooling: str | None) -> None:
    """Refuse a template without ``{word}`` and an unknown pooling."""
    if pooling not in (None, "last", "mean"):
        raise LaminaError(f"pooling must be None, 'last' or 'mean', not {pooling!r}.",
                          cli=f"--pooling must be last or mean, not {pooling!r}.")
    if template is not None and (not isinstance(template, str) or "{word}" not in template):
        raise LaminaError(f"The template must contain '{{word}}', e.g. 'I saw the {{word}}', "
                          f"not {template!r}.",
                          cli=f"--template must contain '{{word}}', e.g. --template "
                          f"'I saw the {{word}}', not {template!r}.")


def represent(model: Model, words: Sequence[str], sites: Any, template: str | None,
              pooling: str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """site -> ``[n_words, d]``: each word's token (encoders: its own token; causal models: its
    last token), or the pooled tokens of a several-token word."""
    check_options(template, pooling)
    texts = [template.replace("{word}", w) if template else w for w in words]
    start = len(template.split("{word}")[0]) if template else 0
    spans = [(start, start + len(w)) for w in words]
    ids, positions = word_positions(model, texts, spans, pooling)
    acts = model.collect(ids, sites, positions="all")
    out = {}
    for site in acts.sites:
        t = acts[site].flatten(2).float()
        if pooling == "mean":
            out[site] = torch.stack([t[i, p].mean(0) for i, p in enumerate(positions)])
        else:  # one token, or the last token of the word
            out[site] = torch.stack([t[i, p[-1]] for i, p in enumerate(positions)])
    return out, acts.sites


def _baseline(model: Model, sites: list[str], template: str | None, n: int, seed: int
              ) -> dict[str, float]:
    """Mean pairwise cosine of ``n`` random non-special single tokens in the same template."""
    special = set(model.tokenizer.all_special_ids or [])
    rng = np.random.default_rng(seed)
    words: list[str] = []
    for t in rng.permutation(model.vocab_size):
        s = model.decode([int(t)]).strip()
        if int(t) not in special and s.isalpha() and len(model.to_tokens(s)[0]) <= 3:
            try:
                model.single_token(s)
                words.append(s)
            except TokenizationError:
                continue
        if len(words) == n:
            break
    if len(words) < 3:
        return {}
    vectors, _ = represent(model, words, sites, template, "last")
    return {site: scan(v, dtype="float64").mean for site, v in vectors.items()}


def _best_layer(table: pd.DataFrame, column: str) -> int | None:
    """The layer where ``column`` is largest (None when it is undefined everywhere)."""
    values = table[column]
    return None if values.isna().all() else int(table.loc[values.idxmax(), "layer"])


def _notes(table: pd.DataFrame, baseline: int, base: dict[str, float], notes: list[str]
           ) -> list[str]:
    """Say why a figure of the summary is missing, instead of leaving a silent NaN."""
    undefined = table.loc[table["t"].isna(), "layer"].tolist()
    if undefined:
        notes.append(f"t is undefined at layer(s) {undefined}: the within- or across-category "
                     "similarities do not vary there.")
    if baseline and not base:
        notes.append("No random-token baseline: the vocabulary has fewer than three "
                     "alphabetic single-token words.")
    return notes


def categories(model: Model | str, words: Any = None, *, template: str | None = None,
               sites: Any = ("hidden.*",), pooling: str | None = None, permutations: int = 1000,
               seed: int = 0, baseline: int = 60) -> CategoriesResult:
    """Within- vs across-category cosine similarity per layer.

    Args:
        model: any model lamina loads.
        words: ``(label, word)`` pairs, a frame with ``label``/``word``, a CSV path, or ``None``
            for the notebook's space/furniture/fruit list.
        template: e.g. ``"I saw the {word}"``; default: the word alone.
        sites: the layers to compare (default every ``hidden.{i}``).
        pooling: for words of several tokens: ``"last"`` or ``"mean"`` (default: error).
        permutations: label permutations for ``p_permutation``.
        baseline: random single tokens for the random-pair baseline (0: skip).

    Everything is checked before the computation: the word list (see :func:`read_words`),
    the template, the pooling and the counts. ``summary["notes"]`` says why a figure is
    missing (an undefined t, no baseline).
    """
    check_int(permutations, "permutations", 0, option="--permutations")
    if check_int(baseline, "baseline", 0) in (1, 2):
        raise LaminaError("baseline must be 0 (no baseline) or at least 3 random tokens.")
    check_options(template, pooling)
    frame = read_words(words)
    model = load(model)
    vectors, names = represent(model, list(frame["word"]), sites, template, pooling)
    labels = frame["label"].to_numpy()
    base = _baseline(model, names, template, baseline, seed) if baseline else {}
    wa = within_across(vectors, labels, baseline=base, permutations=permutations, seed=seed)
    table = wa.table
    return CategoriesResult(
        table, wa.pairs, frame, vectors,
        summary={"best_layer_by_t": _best_layer(table, "t"),
                 "best_layer_by_delta": _best_layer(table, "delta"),
                 "n_words": len(frame), "categories": sorted(set(labels)),
                 "notes": _notes(table, baseline, base, wa.notes)},
        meta=model.describe(template=template, pooling=pooling, permutations=permutations,
                            seed=seed, baseline_tokens=baseline, sites=names),
    )
