"""DistilBERT: a post-LN encoder (``transformer.layer.{L}``) with learned absolute positions
and an embedding LayerNorm, like BERT but with its own module names: attention
``q_lin/k_lin/v_lin/out_lin``, ``sa_layer_norm`` after the attention residual add, ``ffn``
(``lin1``, ``lin2``) and ``output_layer_norm`` after the MLP residual add.

Sites follow BERT's documented meanings: ``hook_resid_mid = resid_pre + attn_out`` and
``hook_resid_post = sa_layer_norm(resid_mid) + mlp_out`` are *before* their LayerNorms; the
block output (Hugging Face's hidden state) is ``hook_normalized_resid_post``.
"""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, separate_qkv

B = "transformer.layer"


def attention(block: nn.Module, d: Dims) -> tuple:
    a = block.attention
    return separate_qkv(a.q_lin, a.k_lin, a.v_lin, a.out_lin, d)


SITES = {
    **block_io(B),
    **{f"attn.hook_{n}": (lambda L, d, c, n=n: HookPoint(f"{B}.{L}.attention.{n}_lin",
                                                         transform=heads(d.n_heads, d.d_head)))
       for n in "qkv"},
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.attention.out_lin", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.attention.out_lin"),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.sa_layer_norm", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.ffn"),
    "hook_resid_post": lambda L, d, c: HookPoint(f"{B}.{L}.output_layer_norm", "input"),
    "hook_normalized_resid_post": lambda L, d, c: HookPoint(f"{B}.{L}"),
}

FAMILY = Family(
    name="distilbert", model_types=("distilbert",), causal=False,
    blocks=B, embed="embeddings.word_embeddings", pos_embed="embeddings.position_embeddings",
    final_norm=None, block_sites=SITES, attention=attention,
    ln1=None, ln2="sa_layer_norm", mlp="ffn", post_ln=True,
    notes="Post-LN as BERT: hook_resid_mid/hook_resid_post are before sa_layer_norm / "
          "output_layer_norm, the block output is hook_normalized_resid_post.",
)
