"""GPT-2: pre-LN LayerNorm blocks, learned absolute positions, one fused ``c_attn`` projection
(a ``Conv1D``: ``x @ W``, columns ``[q | k | v]``)."""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, split_in

B = "h"


def attention(block: nn.Module, d: Dims) -> tuple:
    h, dh, dm = d.n_heads, d.d_head, d.d_model
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
    W = [split_in(w[:, i * dm : (i + 1) * dm], h) for i in range(3)]
    bq, bk, bv = (b[i * dm : (i + 1) * dm].reshape(h, dh) for i in range(3))
    proj = block.attn.c_proj
    return (*W, proj.weight.reshape(h, dh, dm), bq, bk, bv, proj.bias)


SITES = {
    **block_io(B),
    "attn.hook_q": lambda L, d, c: HookPoint(f"{B}.{L}.attn.c_attn",
                                             transform=heads(d.n_heads, d.d_head, 0)),
    "attn.hook_k": lambda L, d, c: HookPoint(f"{B}.{L}.attn.c_attn",
                                             transform=heads(d.n_heads, d.d_head, d.d_model)),
    "attn.hook_v": lambda L, d, c: HookPoint(f"{B}.{L}.attn.c_attn",
                                             transform=heads(d.n_heads, d.d_head, 2 * d.d_model)),
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.attn.c_proj", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.attn"),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.ln_2", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.mlp"),
}

FAMILY = Family(
    name="gpt2", model_types=("gpt2",), causal=True,
    blocks=B, embed="wte", pos_embed="wpe", final_norm="ln_f",
    block_sites=SITES, attention=attention, ln1="ln_1", ln2="ln_2",
)
