"""Reading the residual stream out as next-token logits: the model's own final norm and
unembedding, applied to any residual vector (the norm's statistics are recomputed from that
vector, as a correct logit lens requires)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lamina.errors import LaminaError
from lamina.models import Model


def final_norm(model: Model) -> nn.Module:
    """The model's final normalisation module (``ln_f``, ``final_layer_norm``, ``norm``)."""
    if model.architecture is None or model.architecture.final_norm is None:
        raise LaminaError(
            f"{model.name} has no final norm before an unembedding (family: {model.family}); "
            "reading out logits needs a causal LM of a supported family."
        )
    return model.base_module(model.architecture.final_norm)


def unembedding(model: Model) -> nn.Module:
    """The output embedding (``lm_head``) of a causal LM."""
    head = model.hf_model.get_output_embeddings() if hasattr(
        model.hf_model, "get_output_embeddings") else None
    if head is None:
        raise LaminaError(
            f"{model.name} ({type(model.hf_model).__name__}) has no unembedding: load a model "
            "with a language-modelling head (e.g. AutoModelForCausalLM) to read out logits."
        )
    return head


def logits_from_resid(model: Model, resid: torch.Tensor) -> torch.Tensor:
    """``unembed(final_norm(resid))``: ``[..., d_model]`` -> ``[..., vocab]`` in float32,
    soft-capped as the model caps its own logits (Gemma-2's ``final_logit_softcapping``:
    ``cap * tanh(logits / cap)``)."""
    norm, head = final_norm(model), unembedding(model)
    weight = next(head.parameters())
    cap = getattr(model.config, "final_logit_softcapping", None)
    with torch.inference_mode():
        x = resid.to(device=weight.device, dtype=weight.dtype)
        logits = head(norm(x)).float()
        return torch.tanh(logits / cap) * cap if cap else logits
