"""Residual path length (:func:`lamina.analyses.pathlength`): how far each token moves from
layer to layer, and (causal models) whether the final step predicts the next-token logit. The
report's texts are read as one text (joined by newlines, cut to the model's context)."""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec, layer_profiles
from lamina.models import Model


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs hidden states (any model with canonical sites) and a text."""
    if not model.sites:
        return "lamina has no canonical sites for this architecture."
    if not "".join(inputs.texts).strip():
        return "there is no text to read."
    return None


def per_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (after the first): mean and median step, mean cosine with the previous
    layer, mean cumulative path, over every position of the text."""
    t = table[table["layer"] > 0]
    out = t.groupby(["layer", "site"], sort=True).agg(
        mean_step=("step_norm", "mean"), median_step=("step_norm", "median"),
        mean_cos_prev=("cos_prev", "mean"), mean_cumulative=("cumulative", "mean"))
    return out.reset_index()


def step_sentence(layers: list[int], steps: list[float]) -> str:
    """Which layer moves tokens furthest, against the median layer."""
    i = max(range(len(steps)), key=lambda k: steps[k])
    median = statistics.median(steps)
    return (f"Tokens move furthest into layer {layers[i]}: a mean step of {steps[i]:.3g}, "
            f"against a median of {median:.3g} over the {len(steps)} layers.")


def correlation_sentence(r: float, low: float, high: float, rho: float, n: int) -> str:
    """The final step vs next-token logit correlation, with its interval."""
    strength = "strongly" if abs(r) >= 0.5 else "weakly" if abs(r) >= 0.2 else "hardly"
    return (f"The final layer's step length {strength} tracks the next-token logit: Pearson "
            f"r = {r:.2f} (95% CI {low:.2f} to {high:.2f}), Spearman ρ = {rho:.2f}, over {n} "
            "positions.")


def run(model: Model, inputs: ReportInputs) -> Section:
    """Path length of the joined texts through the hidden states."""
    from lamina.analyses import pathlength

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pathlength(model, "\n".join(inputs.texts), truncate=True)
    row = {"pearson_r": math.nan, "spearman_r": math.nan, **result.per_model.iloc[0].to_dict()}
    layers = per_layer(result.to_frame())
    summary: dict[str, Any] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                               for k, v in row.items()}
    summary["truncated"] = any("Truncated" in str(w.message) for w in caught)
    summary["mean_step_by_layer"] = layers["mean_step"].tolist()
    summary["mean_cos_prev_by_layer"] = layers["mean_cos_prev"].tolist()
    findings = [step_sentence(layers["layer"].tolist(), layers["mean_step"].tolist())]
    if row.get("correlation_note"):
        findings.append(f"No next-token correlation: {row['correlation_note']}.")
    else:
        findings.append(correlation_sentence(row["pearson_r"], row["pearson_ci_low"],
                                             row["pearson_ci_high"], row["spearman_r"],
                                             int(row["n_pairs"])))
    overlays = layer_profiles(layers, model.n_layers,
                              {"mean step per layer": "mean_step",
                               "mean cosine with previous layer": "mean_cos_prev"})
    tables = {"per_layer": layers, "summary": result.per_model}
    return Section("pathlength", SPEC.title, findings=findings, summary=summary, tables=tables,
                   figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("pathlength", "Residual path length and the next-token logit", applies, run)
