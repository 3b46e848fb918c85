"""The model card: family, layers, widths, heads, parameters, vocabulary and context."""

from __future__ import annotations

from typing import Any

from lamina.atlas.findings import modelcard_findings
from lamina.atlas.section import ReportInputs, Section, SectionSpec
from lamina.models import Model


def card(model: Model) -> dict[str, Any]:
    """The card's numbers, read from the model's config and weights."""
    hf = model.hf_model
    params = list(hf.parameters())
    embed = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return {
        "name": model.name,
        "family": model.family,
        "architecture": type(hf).__name__,
        "causal": model.is_causal,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "n_heads": model.n_heads,
        "n_kv_heads": model.n_kv_heads,
        "d_head": model.d_head,
        "vocab_size": model.vocab_size,
        "max_length": model.max_length,
        "n_parameters": int(sum(p.numel() for p in params)),
        "embedding_parameters": (int(embed.weight.numel())
                                 if embed is not None and hasattr(embed, "weight") else None),
        "dtype": ", ".join(dtypes),
        "n_sites": len(model.sites),
        "processing": ", ".join(model.processing) or "none (raw weights)",
    }


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Every model has a card."""
    return None


def run(model: Model, inputs: ReportInputs) -> Section:
    """The card: its numbers are the summary (shown as the section's numbers table)."""
    summary = card(model)
    return Section("modelcard", SPEC.title, findings=modelcard_findings(summary),
                   summary=summary)


SPEC = SectionSpec("modelcard", "Model card", applies, run)
