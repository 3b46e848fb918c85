"""Logit lens with sublayers (:func:`lamina.analyses.lens`): every residual point read out
through the model's own final norm and unembedding (causal models)."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec
from lamina.errors import LaminaError
from lamina.models import Model


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs a causal LM with a final norm and an unembedding, and a text of two tokens."""
    from lamina.readout import final_norm, unembedding

    if not model.is_causal:
        return ("the logit lens reads next-token predictions, and this model is not a causal "
                "language model.")
    try:
        final_norm(model), unembedding(model)
    except LaminaError as err:
        return f"no read-out: {err}"
    if len(model.to_tokens([inputs.lens_text], truncate=True)[0]) < 2:
        return "the lens text is shorter than two tokens."
    return None


def per_readout(table: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per read-out point: its relative depth (:func:`~lamina.analyses.layerwise.relative_depth`
    of 0 for the embeddings, L + 0.5 after block L's attention, L + 1 after block L), mean
    probability of the correct next token, top-1 accuracy and median rank, over the positions
    that have a next token."""
    from lamina.analyses.layerwise import relative_depth

    t = table[table["next_token_rank"].notna()]
    out = t.groupby(["layer", "label", "site"], sort=True).agg(
        mean_next_token_prob=("next_token_prob", "mean"),
        top1_accuracy=("next_token_rank", lambda r: float((r == 1).mean())),
        median_rank=("next_token_rank", lambda r: float(r.astype(float).median())))
    out = out.reset_index()

    def depth(label: str) -> float:
        if label == "embed":
            return 0.0
        block, _, part = label.partition(" ")
        if block == "block":
            return relative_depth(int(part) + 1, n_layers)
        return relative_depth(int(block) + (0.5 if part == "attn" else 1.0), n_layers)

    out.insert(3, "depth", [depth(s) for s in out["label"]])
    return out


def emergence_sentence(labels: list[str], accuracy: list[float], probs: list[float]) -> str:
    """Where the read-out first gets at least half of the final top-1 accuracy."""
    final = accuracy[-1]
    if final == 0:
        return (f"The model's own output never ranks the next token first on this text; its "
                f"mean probability for it is {probs[-1]:.3f}.")
    first = next(i for i, a in enumerate(accuracy) if a >= final / 2)
    return (f"The read-out reaches half of the output's top-1 accuracy ({final:.0%}) first at "
            f"'{labels[first]}' ({accuracy[first]:.0%}); the mean next-token probability goes "
            f"from {probs[0]:.3f} at the embeddings to {probs[-1]:.3f} at the output.")


def run(model: Model, inputs: ReportInputs) -> Section:
    """The lens of ``inputs.lens_text``, with sublayers where the blocks have them."""
    from lamina.analyses import lens

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lens(model, inputs.lens_text, sublayers=True, truncate=True)
    points = per_readout(result.to_frame(), max(model.n_layers, 1))
    summary: dict[str, Any] = {**result.summary,
                               "top1_accuracy_by_readout": points["top1_accuracy"].tolist(),
                               "readouts": points["label"].tolist(),
                               "truncated": any("Truncated" in str(w.message) for w in caught)}
    findings = [emergence_sentence(points["label"].tolist(), points["top1_accuracy"].tolist(),
                                   points["mean_next_token_prob"].tolist())]
    overlays = {"mean next-token probability": pd.DataFrame(
                    {"x": points["depth"], "y": points["mean_next_token_prob"]}),
                "top-1 accuracy": pd.DataFrame({"x": points["depth"],
                                                "y": points["top1_accuracy"]})}
    return Section("lens", SPEC.title, findings=findings, summary=summary,
                   tables={"per_readout": points}, figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("lens", "Logit lens: what each layer would predict", applies, run)
