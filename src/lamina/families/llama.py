"""Llama, Mistral, Qwen2: pre-norm RMSNorm blocks (scale ``w``), rotary embeddings, separate
q/k/v/o projections with grouped-query attention (k/v keep ``n_kv_heads`` heads)."""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import (
    Dims,
    Family,
    HookPoint,
    SiteFn,
    block_io,
    heads,
    separate_qkv,
)

B = "layers"


def self_attn_weights(block: nn.Module, d: Dims) -> tuple:
    """Per-head weights of a ``self_attn`` with separate ``q_proj``/``k_proj``/``v_proj``/
    ``o_proj`` (the Llama layout, shared by Gemma, Qwen3, OLMo-2)."""
    a = block.self_attn
    return separate_qkv(a.q_proj, a.k_proj, a.v_proj, a.o_proj, d)


def self_attn_sites(blocks: str) -> dict[str, SiteFn]:
    """q/k/v (the projections' outputs: before any q/k norm and rotary; k/v with
    ``n_kv_heads`` heads), z (``o_proj``'s input), the attention and MLP outputs, for blocks
    at ``blocks.{L}`` with ``self_attn`` and ``mlp`` (the Llama layout)."""
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
    **self_attn_sites(B),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
}

FAMILY = Family(
    name="llama", model_types=("llama", "mistral", "qwen2"), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1="input_layernorm", ln2="post_attention_layernorm", norm="rmsnorm",
)
