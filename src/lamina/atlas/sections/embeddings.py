"""The embedding matrix all-to-all (:func:`lamina.analyses.embeddings`): exact histogram of
every unique pair of the whole vocabulary, top neighbours, duplicate groups, unused tokens and
cosine vs correlation."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec
from lamina.errors import LaminaError
from lamina.models import Model

#: Histogram bins and neighbours per token (quick, full); quick also uses the fast scan.
BINS = (100, 200)
TOPK = (5, 10)
#: Rows of the most-similar-pairs and duplicate-group tables shown.
TOP_ROWS = 30


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs an input embedding matrix of at least two tokens."""
    from lamina.weights import embedding_matrix

    try:
        W = embedding_matrix(model)
    except LaminaError as err:
        return str(err)
    return None if len(W) >= 2 else "the vocabulary has fewer than two tokens."


def anisotropy_sentence(n_tokens: int, n_pairs: int, mean: float, std: float) -> str:
    """The mean pairwise cosine, and whether it points to a shared direction."""
    shape = ("the embeddings share a common direction" if mean >= 0.2 else
             "the embeddings are close to isotropic" if abs(mean) < 0.05 else
             "the embeddings lean mildly " + ("together" if mean > 0 else "apart"))
    return (f"Over all {n_pairs:,} pairs of the {n_tokens:,} token embeddings the mean cosine "
            f"is {mean:.3f} (sd {std:.3f}): {shape}.")


def duplicates_sentence(n_groups: int, largest: int, threshold: float, n_unused: int,
                        unused_values: int) -> str:
    """Groups of near-identical embeddings, and the unused tokens' distinct similarities."""
    unused = "" if not n_unused else (
        f"; the {n_unused:,} unused tokens' pairwise cosines take {unused_values:,} distinct "
        "values")
    if not n_groups:
        return f"No two embeddings are near-identical (cosine ≥ {threshold}){unused}."
    return (f"{n_groups:,} group(s) of near-identical embeddings (cosine ≥ {threshold}), the "
            f"largest of {largest:,} tokens{unused}.")


def agreement_sentence(r: float | None, mean_abs: float | None, n: int) -> str:
    """How closely cosine and correlation agree on sampled pairs."""
    if r is None or mean_abs is None:
        return "Cosine and correlation cannot be compared on these embeddings."
    return (f"Cosine and correlation agree with r = {r:.4f} over {n:,} sampled pairs (mean "
            f"|difference| {mean_abs:.4f}).")


def top_pairs(neighbours: pd.DataFrame, n: int = TOP_ROWS) -> pd.DataFrame:
    """The ``n`` most similar distinct token pairs among the nearest neighbours."""
    t = neighbours[neighbours["neighbour_id"] >= 0]
    a, b = t["token_id"].clip(upper=t["neighbour_id"]), t["token_id"].clip(
        lower=t["neighbour_id"])
    t = t.assign(_a=a, _b=b).drop_duplicates(["_a", "_b"])
    cols = ["token_id", "token", "neighbour_id", "neighbour", "cosine"]
    return t.sort_values(["cosine", "_a", "_b"], ascending=[False, True, True],
                         kind="stable")[cols].head(n).reset_index(drop=True)


def run(model: Model, inputs: ReportInputs) -> Section:
    """The whole input embedding matrix (quick: fewer bins and neighbours, fast scan)."""
    from lamina.analyses import embeddings

    q = 0 if inputs.quick else 1
    result = embeddings(model, bins=BINS[q], topk=TOPK[q], seed=inputs.seed, fast=inputs.quick)
    s = result.summary
    agree = s["cosine_correlation_agreement"]
    keys = ("n_tokens", "n_zero_rows", "n_pairs", "mean", "std", "min", "max", "quantiles",
            "correlation", "n_unused", "unused_unique_values", "n_duplicate_groups",
            "largest_duplicate_group", "duplicate_threshold", "norm")
    summary: dict[str, Any] = {k: s[k] for k in keys}
    summary.update(cosine_correlation_agreement=agree, bins=BINS[q], topk=TOPK[q],
                   fast=inputs.quick)
    findings = [
        anisotropy_sentence(s["n_tokens"], s["n_pairs"], s["mean"], s["std"]),
        duplicates_sentence(s["n_duplicate_groups"], s["largest_duplicate_group"],
                            s["duplicate_threshold"], s["n_unused"], s["unused_unique_values"]),
        agreement_sentence(agree["pearson_r"], agree["mean_abs_difference"],
                           agree["n_sampled_pairs"]),
    ]
    tables = {"histogram": result.to_frame(), "top_pairs": top_pairs(result.neighbours)}
    if len(result.duplicates):
        tables["duplicate_groups"] = result.duplicates.head(TOP_ROWS)
    return Section("embeddings", SPEC.title, findings=findings, summary=summary, tables=tables,
                   figures=result.figures())


SPEC = SectionSpec("embeddings", "The embedding matrix, all to all", applies, run)
