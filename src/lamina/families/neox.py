"""GPT-NeoX / Pythia: pre-LN LayerNorm blocks, rotary embeddings on part of each head, q/k/v
fused *per head* (``[..., n_heads, 3 * d_head]``). With ``use_parallel_residual`` (Pythia's
default) attention and MLP both read the block input: there is no ``hook_resid_mid``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads

B = "layers"


def _qkv(n_heads: int, d_head: int, which: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def split(t: torch.Tensor) -> torch.Tensor:
        per_head = t.unflatten(-1, (n_heads, 3 * d_head))
        return per_head[..., which * d_head : (which + 1) * d_head]

    return split


def attention(block: nn.Module, d: Dims) -> tuple:
    h, dh, dm = d.n_heads, d.d_head, d.d_model
    lin = block.attention.query_key_value  # per head: [q | k | v]
    w = lin.weight.T.unflatten(1, (h, 3, dh))  # [d_model, h, 3, dh]
    bb = lin.bias.reshape(h, 3, dh)
    dense = block.attention.dense
    return (*(w[:, :, i].permute(1, 0, 2) for i in range(3)), dense.weight.T.reshape(h, dh, dm),
            bb[:, 0], bb[:, 1], bb[:, 2], dense.bias)


def _parallel(config: object) -> bool:
    return bool(getattr(config, "use_parallel_residual", False))


SITES = {
    **block_io(B),
    **{f"attn.hook_{name}": (lambda L, d, c, i=i: HookPoint(
        f"{B}.{L}.attention.query_key_value", transform=_qkv(d.n_heads, d.d_head, i)))
       for i, name in enumerate("qkv")},
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.attention.dense", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.attention"),
    "hook_resid_mid": lambda L, d, c: None if _parallel(c)
    else HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.mlp"),
}

FAMILY = Family(
    name="gpt_neox", model_types=("gpt_neox",), causal=True,
    blocks=B, embed="embed_in", pos_embed=None, final_norm="final_layer_norm",
    block_sites=SITES, attention=attention,
    ln1="input_layernorm", ln2="post_attention_layernorm", parallel=_parallel,
)
