"""Category selectivity, layer by layer (:func:`lamina.analyses.categories`): do words of one
category sit closer together than words of different categories? Words that are not a single
token of the model's tokenizer are left out (and counted)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec, layer_profiles
from lamina.models import Model

#: Label permutations for the permutation p-value (quick, full).
PERMUTATIONS = (200, 1000)
#: Mean cosine of random token pairs above which raw cosines are called high (anisotropy).
HIGH_BASELINE = 0.3


def usable_words(model: Model, words: Any) -> tuple[pd.DataFrame, list[str]]:
    """The word list (a mapping label -> words, or anything
    :func:`~lamina.analyses.categories.read_words` reads, and checked by it) split into
    the rows whose word is one token of ``model``'s tokenizer, and the other words."""
    from lamina.analyses.categories import read_words

    if isinstance(words, Mapping):  # label -> words (a list, or one whitespace-separated str)
        words = [(label, w) for label, ws in words.items()
                 for w in (ws.split() if isinstance(ws, str) else ws)]
    frame = read_words(words)
    single = [len(model.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1
              for w in frame["word"]]
    dropped = [w for w, ok in zip(frame["word"], single, strict=True) if not ok]
    return frame[single].reset_index(drop=True), dropped


def _problem(frame: pd.DataFrame) -> str | None:
    """Why ``frame`` cannot be compared (fewer than two categories of two words), or None."""
    sizes = frame["label"].value_counts()
    if (sizes >= 2).sum() < 2:
        return (f"only {len(frame)} of the words are single tokens of this tokenizer, too few "
                "for two categories of at least two words each.")
    return None


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs at least two categories of two single-token words each."""
    frame, _ = usable_words(model, inputs.words)
    return _problem(frame)


def selectivity_sentence(layer: int, n_layers: int, delta: float, t: float, p: float,
                         permutations: int) -> str:
    """Where categories separate most (by t) and how strongly."""
    if math.isnan(t):
        return "Within- and across-category similarities do not vary: t is undefined."
    verdict = ("significant" if p <= 0.05 else "not significant") if not math.isnan(p) else (
        "untested")
    how = "exceeds" if delta > 0 else "does not exceed"
    return (f"Categories separate most at layer {layer} of {n_layers}: within-category cosine "
            f"{how} across-category (Δ = {delta:.3f}, t = {t:.1f}, permutation p = "
            f"{p:.3g} over {permutations} relabellings, {verdict}).")


def centred_sentence(layer: int, raw_delta: float, centred_delta: float, baseline: float
                     ) -> str:
    """What the anisotropy does to Δ at that layer: the mean-centred Δ and random-pair mean."""
    high = ", so raw cosines run high" if baseline >= HIGH_BASELINE else ""
    base = "" if math.isnan(baseline) else (
        f"; random token pairs average {baseline:.3f} there{high}")
    return (f"After mean-centring, Δ at layer {layer} is {centred_delta:.3f} "
            f"(raw {raw_delta:.3f}){base}.")


def run(model: Model, inputs: ReportInputs) -> Section:
    """Categories on the single-token words of ``inputs.words`` (default: the built-in list)."""
    from lamina.analyses import categories

    frame, dropped = usable_words(model, inputs.words)
    permutations = PERMUTATIONS[0] if inputs.quick else PERMUTATIONS[1]
    result = categories(model, frame, permutations=permutations, seed=inputs.seed)
    table = result.to_frame()
    best = result.summary["best_layer_by_t"]
    summary: dict[str, Any] = {**result.summary, "n_dropped": len(dropped),
                               "dropped_words": dropped, "permutations": permutations,
                               "n_layers": model.n_layers}
    findings = []
    if best is not None:
        row = table.set_index("layer").loc[best]
        summary.update(best_delta=float(row["delta"]), best_t=float(row["t"]),
                       best_p_permutation=float(row["p_permutation"]),
                       best_centred_delta=float(row["centred_delta"]),
                       best_baseline_mean=float(row["baseline_mean"]))
        findings = [
            selectivity_sentence(best, model.n_layers, row["delta"], row["t"],
                                 row["p_permutation"], permutations),
            centred_sentence(best, row["delta"], row["centred_delta"], row["baseline_mean"]),
        ]
    overlays = layer_profiles(table, model.n_layers, {"Δ within - across (cosine)": "delta",
                                                      "t (within vs across)": "t"})
    return Section("categories", SPEC.title, findings=findings, summary=summary,
                   tables={"categories": table, "words": result.words},
                   figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("categories", "Category selectivity: within vs across categories per layer",
                   applies, run)
