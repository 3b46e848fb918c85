"""How contextual each layer is (:func:`lamina.analyses.contextuality`): self-similarity,
intra-sentence similarity and MEV of every word occurrence of a sample of the corpus's
sentences, against the anisotropy baseline; rogue dimensions and massive activations."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec, layer_profiles
from lamina.errors import LaminaError
from lamina.models import Model

#: Sentences sampled from the corpus (quick, full), and the least occurrences of a word type.
MAX_SENTENCES = (48, 1000)
MIN_OCCURRENCES = 5


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs hidden-state sites and a fast tokenizer (character offsets locate the words)."""
    if not model.sites:
        return "lamina has no canonical sites for this architecture."
    if not getattr(model.tokenizer, "is_fast", False):
        return "the tokenizer gives no character offsets (not a fast tokenizer)."
    return None


def contextuality_findings(s: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """Sentences from the summary and the per-layer table: where words are most contextual,
    how the anisotropy baseline moves, the largest rogue dimension and massive activation."""
    first, last = table.iloc[0], table.iloc[-1]
    out = [f"Words are most contextual at layer {s['most_contextual_layer']}: the mean cosine "
           f"between occurrences of the same word is {s['min_self_similarity_adjusted']:.3f} "
           "above the anisotropy baseline (Ethayarajh's adjusted self-similarity; "
           f"{s['n_types_measured']} word types of {MIN_OCCURRENCES}+ occurrences).",
           f"The anisotropy baseline (mean cosine between different words) goes from "
           f"{first['anisotropy_baseline']:.3f} at layer {int(first['layer'])} to "
           f"{last['anisotropy_baseline']:.3f} at layer {int(last['layer'])}."]
    rogue = table.loc[table["top_dim_share"].idxmax()]
    out.append(f"The largest rogue dimension is {int(rogue['top_dim'])} at layer "
               f"{int(rogue['layer'])}: {100 * rogue['top_dim_share']:.0f}% of the layer's "
               "mean cosine.")
    ratios = table["max_ratio"]
    if ratios.notna().any():
        row = table.loc[ratios.idxmax()]
        n = row["n_massive"]
        many = "" if math.isnan(n) else "; no entry there exceeds 100x" if n == 0 else (
            f"; {int(n):,} entr{'y' if n == 1 else 'ies'} there exceed{'s' if n == 1 else ''} "
            "100x")
        out.append(f"The largest activation is {row['max_ratio']:.0f}x its layer's median "
                   f"|activation| (layer {int(row['layer'])}){many}.")
    return out


def run(model: Model, inputs: ReportInputs) -> Section:
    """Contextuality over a sample of the report corpus's sentences."""
    from lamina.analyses import contextuality

    reason = applies(model, inputs)
    if reason:
        raise LaminaError(f"contextuality does not apply: {reason}")
    n = MAX_SENTENCES[0 if inputs.quick else 1]
    result = contextuality(model, inputs.corpus, "hidden.*", max_sentences=n,
                           min_occurrences=MIN_OCCURRENCES, seed=inputs.seed, batch_size=64,
                           progress=False)
    table = result.to_frame()
    summary = {k: v for k, v in result.summary.items() if k != "conclusion"}
    summary.update(max_sentences=n, min_occurrences=MIN_OCCURRENCES, n_layers=model.n_layers)
    overlays = layer_profiles(table, model.n_layers,
                              {"self-similarity - anisotropy baseline":
                               "self_similarity_adjusted",
                               "anisotropy baseline (cosine)": "anisotropy_baseline"})
    massive = result.massive
    return Section("contextuality", SPEC.title,
                   findings=contextuality_findings(result.summary, table), summary=summary,
                   tables={"contextuality": table,
                           "rogue_dimensions": result.dims[result.dims["rank"] <= 3],
                           "largest_activations": massive.groupby("site", sort=False).head(3)},
                   figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("contextuality", "How contextual is each layer?", applies, run)
