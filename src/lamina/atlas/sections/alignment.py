"""Query-bias / key alignment: every head swept (:func:`lamina.analyses.head_sweep`), ranked by
how strongly its query bias separates the key at position 0 from later keys, and the top head
shown in full (:func:`lamina.analyses.alignment`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lamina.atlas.section import ReportInputs, Section, SectionSpec
from lamina.errors import LaminaError
from lamina.models import Model

#: Random sequences of the sweep and of the top head's figure (quick, full) and their length.
N_SEQUENCES = (200, 1000)
SEQ_LEN = 40
#: Rows of the ranked-heads table shown on the page.
TOP_ROWS = 50


def top_head_sentence(layer: int, head: int, m0: float, later: float, gap: float,
                      n_heads: int) -> str:
    """The headline: which head's query bias separates position 0 most, and by how much."""
    side = "more" if gap > 0 else "less"
    return (f"Of {n_heads} heads swept, head {layer}.{head}'s query bias separates position 0 "
            f"most: its cosine with keys at position 0 averages {m0:+.3f} against {later:+.3f} "
            f"at later positions (gap {gap:+.3f}; position 0 is {side} aligned).")


def runner_up_sentence(gaps: list[float], top_gap: float) -> str:
    """How exceptional the top head is: the next gap, and how many heads reach half the top."""
    if len(gaps) < 2:
        return "Only one head has a non-zero query bias."
    half = sum(abs(g) >= abs(top_gap) / 2 for g in gaps)
    return (f"The next strongest gap is {gaps[1]:+.3f}; {half} of {len(gaps)} heads reach at "
            f"least half of the top head's |gap|.")


def _bias_layers(model: Model) -> list[int]:
    """Layers with a non-zero query bias in some head."""
    from lamina.weights import head_weights

    return [L for L in range(model.n_layers)
            if float(head_weights(model, L).b_Q.abs().max()) > 0]


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs a known attention layout, query biases, and heads within the model."""
    if model.architecture is None:
        return "lamina does not know this architecture's attention weights."
    if not _bias_layers(model):
        return (f"{model.name}'s attention has no query bias (every b_Q is zero or absent), so "
                "there is no bias to align with the keys.")
    if inputs.heads is not None:
        bad = [f"{L}.{h}" for L, h in inputs.heads
               if not (0 <= L < model.n_layers and 0 <= h < model.n_heads)]
        if bad:
            return (f"the heads {', '.join(bad)} do not exist in this model "
                    f"({model.n_layers} layers x {model.n_heads} heads).")
    return None


def _overlay(table: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per layer, the largest |gap| of its heads, at the relative depth of the block's output,
    (layer + 1) / n_layers (:func:`~lamina.analyses.layerwise.relative_depth`)."""
    from lamina.analyses.layerwise import relative_depth

    best = table.dropna(subset=["gap"]).groupby("layer")["gap"].agg(lambda g: g.abs().max())
    return pd.DataFrame({"x": relative_depth(best.index.to_numpy() + 1, n_layers),
                         "y": best.to_numpy()})


def run(model: Model, inputs: ReportInputs) -> Section:
    """Sweep every head (or ``inputs.heads``), then the full alignment of the top head."""
    from lamina.analyses import alignment, head_sweep

    n = N_SEQUENCES[0] if inputs.quick else N_SEQUENCES[1]
    seq_len = min(SEQ_LEN, model.max_length or SEQ_LEN)
    if seq_len < 2:
        raise LaminaError(f"{model.name}'s context is {seq_len} token(s): the sweep needs two.")
    sweep = head_sweep(model, inputs.heads, n_sequences=n, seq_len=seq_len, seed=inputs.seed)
    table = sweep.to_frame()
    s = sweep.summary
    summary: dict[str, Any] = {k: s[k] for k in ("n_heads", "n_zero_query", "top_head",
                                                 "top_gap", "top_mean_position_0",
                                                 "top_mean_later")}
    summary.update(n_sequences=n, seq_len=seq_len, query="bias")
    figures: dict[str, Any] = {"head_sweep": sweep.plot()}
    findings = []
    if s["top_head"] is not None:
        layer, head = s["top_head"]
        ranked = table.dropna(subset=["gap"])
        findings = [top_head_sentence(layer, head, s["top_mean_position_0"], s["top_mean_later"],
                                      s["top_gap"], len(table)),
                    runner_up_sentence(ranked["gap"].tolist(), s["top_gap"])]
        positions = sorted({0, 1, seq_len // 2, seq_len - 1})
        top = alignment(model, layer, head, positions=positions, n_sequences=n,
                        seq_len=seq_len, seed=inputs.seed)
        summary["top_head_positions"] = top.by_position().to_dict("records")
        summary["top_head_vocab"] = {k: top.vocab[k] for k in ("mean", "std", "min", "max")}
        figures.update({f"alignment_{layer}_{head}": fig for fig in top.figures().values()})
    tables = {"heads": table.head(TOP_ROWS)}
    return Section("alignment", SPEC.title, findings=findings, summary=summary, tables=tables,
                   figures=figures, overlays={"largest |gap| per layer": _overlay(
                       table, model.n_layers)})


SPEC = SectionSpec("alignment", "Query-bias / key alignment: which heads single out position 0",
                   applies, run)
