"""BERT: a post-LN encoder, each block ends in a LayerNorm; learned absolute positions.

Following TransformerLens's ``HookedEncoder``, ``hook_resid_mid = resid_pre + attn_out`` and
``hook_resid_post = LN1(resid_mid) + mlp_out`` are *before* their LayerNorms, and the block's
output (what Hugging Face's hidden states hold) is ``hook_normalized_resid_post``. RoBERTa and
XLM-R share these module paths (:mod:`lamina.families.roberta`).
"""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, separate_qkv

B = "encoder.layer"


def attention(block: nn.Module, d: Dims) -> tuple:
    s = block.attention.self
    return separate_qkv(s.query, s.key, s.value, block.attention.output.dense, d)


SITES = {
    **block_io(B),
    "attn.hook_q": lambda L, d, c: HookPoint(f"{B}.{L}.attention.self.query",
                                             transform=heads(d.n_heads, d.d_head)),
    "attn.hook_k": lambda L, d, c: HookPoint(f"{B}.{L}.attention.self.key",
                                             transform=heads(d.n_heads, d.d_head)),
    "attn.hook_v": lambda L, d, c: HookPoint(f"{B}.{L}.attention.self.value",
                                             transform=heads(d.n_heads, d.d_head)),
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.attention.output.dense", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.attention.output.dense"),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.attention.output.LayerNorm", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.output.dense"),
    "hook_resid_post": lambda L, d, c: HookPoint(f"{B}.{L}.output.LayerNorm", "input"),
    "hook_normalized_resid_post": lambda L, d, c: HookPoint(f"{B}.{L}"),
}

FAMILY = Family(
    name="bert", model_types=("bert",), causal=False,
    blocks=B, embed="embeddings.word_embeddings", pos_embed="embeddings.position_embeddings",
    final_norm=None, block_sites=SITES, attention=attention,
    ln1=None, ln2="attention.output.LayerNorm", mlp="intermediate", post_ln=True,
)
