"""Gemma (v1): Llama's block layout with Gemma's conventions.

* RMSNorm scales by ``1 + w`` (``GemmaRMSNorm``): ``norm_offset=1.0``, so
  ``HeadWeights.ln1_scale`` and :func:`lamina.weights.folded_query_weight` use ``1 + w``.
* The token embedding is multiplied by ``sqrt(d_model)``. In transformers >= 5 the scale sits
  *inside* the embedding module (``GemmaTextScaledWordEmbedding.forward`` multiplies by its
  ``embed_scale`` buffer), so ``hook_embed`` (the module's output) is already scaled, as
  TransformerLens's ``hook_embed`` is; ``embed_scale`` states the factor for code that starts
  from the raw matrix ``W_E`` (the effective embedding).
* Pre-norm blocks, rotary embeddings, separate q/k/v/o projections (grouped-query attention in
  the larger checkpoints), gated GELU MLP, tied unembedding.
"""

from __future__ import annotations

from typing import Any

from lamina.families.base import Family, HookPoint, block_io
from lamina.families.llama import self_attn_sites, self_attn_weights

B = "layers"


def embed_scale(config: Any) -> float:
    """``sqrt(hidden_size)``: the factor every Gemma version multiplies the embedding by."""
    return float(config.hidden_size) ** 0.5


SITES = {
    **block_io(B),
    **self_attn_sites(B),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
}

FAMILY = Family(
    name="gemma", model_types=("gemma",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1="input_layernorm", ln2="post_attention_layernorm",
    norm="rmsnorm", norm_offset=1.0, embed_scale=embed_scale,
    notes="hook_embed is the scaled embedding (W_E * sqrt(d_model)), as in TransformerLens; "
          "RMSNorm scales by 1 + w.",
)
