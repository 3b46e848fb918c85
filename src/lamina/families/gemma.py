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

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, separate_qkv

B = "layers"


def attention(block: nn.Module, d: Dims) -> tuple:
    """Per-head q/k/v/o weights of a Gemma-style ``self_attn`` (separate projections)."""
    a = block.self_attn
    return separate_qkv(a.q_proj, a.k_proj, a.v_proj, a.o_proj, d)


def embed_scale(config: Any) -> float:
    """``sqrt(hidden_size)``: the factor every Gemma version multiplies the embedding by."""
    return float(config.hidden_size) ** 0.5


def attention_sites(blocks: str) -> dict:
    """q/k/v (projection outputs: before q/k norms and rotary), z and the attention output."""
    return {
        "attn.hook_q": lambda L, d, c: HookPoint(f"{blocks}.{L}.self_attn.q_proj",
                                                 transform=heads(d.n_heads, d.d_head)),
        "attn.hook_k": lambda L, d, c: HookPoint(f"{blocks}.{L}.self_attn.k_proj",
                                                 transform=heads(d.n_kv_heads, d.d_head)),
        "attn.hook_v": lambda L, d, c: HookPoint(f"{blocks}.{L}.self_attn.v_proj",
                                                 transform=heads(d.n_kv_heads, d.d_head)),
        "attn.hook_z": lambda L, d, c: HookPoint(f"{blocks}.{L}.self_attn.o_proj", "input",
                                                 heads(d.n_heads, d.d_head)),
        "hook_attn_out": lambda L, d, c: HookPoint(f"{blocks}.{L}.self_attn"),
        "hook_mlp_out": lambda L, d, c: HookPoint(f"{blocks}.{L}.mlp"),
    }


SITES = {
    **block_io(B),
    **attention_sites(B),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
}

FAMILY = Family(
    name="gemma", model_types=("gemma",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=attention,
    ln1="input_layernorm", ln2="post_attention_layernorm",
    norm="rmsnorm", norm_offset=1.0, embed_scale=embed_scale,
    notes="hook_embed is the scaled embedding (W_E * sqrt(d_model)), as in TransformerLens; "
          "RMSNorm scales by 1 + w.",
)
