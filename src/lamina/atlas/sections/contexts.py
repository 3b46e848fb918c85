"""The same word in different contexts (:func:`lamina.analyses.contexts`): how similar are a
word's occurrences in the corpus to each other, compared with other words, layer by layer?
Default targets: the most frequent corpus words (of at least :data:`MIN_LETTERS` letters) that
are one token of the model's tokenizer."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from lamina.atlas.section import ReportInputs, Section, SectionSpec, layer_profiles
from lamina.errors import LaminaError, TokenizationError
from lamina.models import Model

#: Default number of target words, and their least length (skips "the", "and", ...).
N_TARGETS = 3
MIN_LETTERS = 4
#: Tokens of context before each occurrence, and occurrences per word (quick, full).
WINDOW = (20, 50)
MAX_PER_TARGET = (50, 300)
PERMUTATIONS = (200, 1000)


def default_targets(model: Model, corpus: str, n: int = N_TARGETS,
                    min_letters: int = MIN_LETTERS) -> list[str]:
    """The ``n`` most frequent words of ``corpus`` (runs of letters, at least ``min_letters``;
    ties: first seen) that are one token of the model's tokenizer occurring at least twice in
    the tokenized corpus, each a different token. A word is written as the tokenizer meets it
    in running text: ``" word"`` where the leading space makes another token (GPT-2 style)."""
    tok = model.tokenizer
    ids = Counter(tok(corpus, add_special_tokens=False, verbose=False)["input_ids"])
    words = Counter(w for w in re.findall(r"[^\W\d_]+", corpus) if len(w) >= min_letters)
    out: list[str] = []
    seen: set[int] = set()
    for word, _ in words.most_common():
        if len(out) == n:
            break
        bare = tok(word, add_special_tokens=False)["input_ids"]
        spaced = tok(" " + word, add_special_tokens=False)["input_ids"]
        for text, pieces in ((word, bare), (" " + word, spaced)) if bare == spaced else (
                (" " + word, spaced), (word, bare)):
            if len(pieces) == 1 and ids[pieces[0]] >= 2 and pieces[0] not in seen:
                out.append(text)
                seen.add(pieces[0])
                break
    return out


def _check_targets(targets: Any) -> list[str]:
    """The user's targets: two or more different strings (else a LaminaError)."""
    if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
        raise LaminaError("targets must be a list of words.", cli="Give each --target once.")
    if len(targets) < 2 or len(set(targets)) != len(targets):
        raise LaminaError("Give at least two different target words, to compare within and "
                          "across words.")
    return list(targets)


def _targets(model: Model, inputs: ReportInputs) -> tuple[list[str], str | None]:
    """The targets and why they cannot be used with this model (or None)."""
    from lamina.analyses.contexts import _corpus_ids, check_targets, occurrences

    window = WINDOW[0] if inputs.quick else WINDOW[1]
    if inputs.targets is None:
        targets = default_targets(model, inputs.corpus)
        if len(targets) < 2:
            return targets, (f"fewer than two words of {MIN_LETTERS}+ letters that are single "
                             "tokens of this tokenizer occur twice in the corpus.")
    else:
        targets = _check_targets(inputs.targets)
    if model.max_length and window + 1 > model.max_length:
        return targets, f"the model's context ({model.max_length}) is shorter than the window."
    try:
        ids = check_targets(model, targets)
    except TokenizationError as err:
        return targets, f"a target is not one token of this tokenizer: {err}"
    except LaminaError as err:  # two words that are the same token of this tokenizer
        return targets, str(err)
    try:
        occurrences(_corpus_ids(model, inputs.corpus), targets, ids, window, 2, inputs.seed)
    except LaminaError as err:
        return targets, f"too few occurrences in the corpus: {err}"
    return targets, None


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs two target words that are single tokens and occur twice after a full window."""
    return _targets(model, inputs)[1]


def best_row(layers: list[int], deltas: list[float]) -> int:
    """Index of the largest Δ among the contextual layers (layer > 0: at the embeddings every
    occurrence of a word is the same vector), or among all layers if there is no other."""
    rows = [i for i, (L, d) in enumerate(zip(layers, deltas, strict=True))
            if L > 0 and not math.isnan(d)] or [
        i for i, d in enumerate(deltas) if not math.isnan(d)]
    return max(rows, key=lambda i: deltas[i])


def context_sentence(layer: int, n_layers: int, within: float, across: float, delta: float,
                     t: float, p: float) -> str:
    """Where a word's occurrences stand out most from other words (see :func:`best_row`),
    with the permutation p-value when there is one (pairs share occurrences: trust it over
    t's)."""
    perm = "" if math.isnan(p) else f", permutation p = {p:.3g}"
    return (f"Occurrences of the same word are most alike, relative to other words, at layer "
            f"{layer} of {n_layers}: within-word cosine {within:.3f} against across-word "
            f"{across:.3f} (Δ = {delta:.3f}, t = {t:.1f}{perm}).")


def trend_sentence(deltas: list[float]) -> str:
    """How Δ changes from the first to the last layer."""
    first, last = deltas[0], deltas[-1]
    way = "rises" if last > first else "falls" if last < first else "stays"
    peak = max(deltas)
    between = f", peaking at {peak:.3f} in between" if peak > max(first, last) else ""
    return (f"From the embeddings to the last layer Δ {way} from {first:.3f} to {last:.3f}"
            f"{between}.")


def run(model: Model, inputs: ReportInputs) -> Section:
    """Contexts on ``inputs.targets`` (default: :func:`default_targets`)."""
    from lamina.analyses import contexts

    targets, reason = _targets(model, inputs)
    if reason:
        raise LaminaError(f"contexts does not apply: {reason}")
    q = 0 if inputs.quick else 1
    result = contexts(model, inputs.corpus, targets, window=WINDOW[q],
                      max_per_target=MAX_PER_TARGET[q], seed=inputs.seed,
                      permutations=PERMUTATIONS[q], baseline=50 if inputs.quick else 200)
    table = result.to_frame()
    summary: dict[str, Any] = {**result.summary, "targets": targets, "window": WINDOW[q],
                               "max_per_target": MAX_PER_TARGET[q],
                               "permutations": PERMUTATIONS[q], "n_layers": model.n_layers}
    findings = []
    deltas = table["delta"].to_numpy()
    if np.isfinite(deltas).any():
        row = table.loc[best_row(table["layer"].tolist(), deltas.tolist())]
        summary.update(best_layer=int(row["layer"]), best_delta=float(row["delta"]),
                       best_t=float(row["t"]), best_p_permutation=float(row["p_permutation"]))
        findings.append(context_sentence(int(row["layer"]), model.n_layers, row["within_mean"],
                                         row["across_mean"], row["delta"], row["t"],
                                         row["p_permutation"]))
        if not any(math.isnan(d) for d in deltas) and len(deltas) > 1:
            findings.append(trend_sentence([float(d) for d in deltas]))
    overlays = layer_profiles(table, model.n_layers,
                              {"Δ within - across word (cosine)": "delta",
                               "within-word cosine": "within_mean"})
    return Section("contexts", SPEC.title, findings=findings, summary=summary,
                   tables={"contexts": table, "counts": result.counts},
                   figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("contexts", "The same word in different contexts", applies, run)
