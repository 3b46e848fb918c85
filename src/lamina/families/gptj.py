"""GPT-J: pre-LN LayerNorm blocks with *parallel* attention and MLP, both reading ``ln_1(x)``
(one norm per block), rotary embeddings on the first ``rotary_dim`` dims of each head, separate
bias-free ``q_proj``/``k_proj``/``v_proj``/``out_proj``. There is no ``hook_resid_mid``:
``resid_post = resid_pre + attn_out + mlp_out``."""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, separate_qkv

B = "h"


def attention(block: nn.Module, d: Dims) -> tuple:
    a = block.attn
    return separate_qkv(a.q_proj, a.k_proj, a.v_proj, a.out_proj, d)


SITES = {
    **block_io(B),
    **{f"attn.hook_{n}": (lambda L, d, c, n=n: HookPoint(f"{B}.{L}.attn.{n}_proj",
                                                         transform=heads(d.n_heads, d.d_head)))
       for n in "qkv"},
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.attn.out_proj", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.attn"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.mlp"),
}

FAMILY = Family(
    name="gptj", model_types=("gptj",), causal=True,
    blocks=B, embed="wte", pos_embed=None, final_norm="ln_f",
    block_sites=SITES, attention=attention,
    # one norm: the MLP reads ln_1(x) as attention does
    ln1="ln_1", ln2="ln_1", parallel=lambda config: True,
    notes="Parallel block, one LayerNorm (ln_1) in front of both attention and MLP: no "
          "hook_resid_mid; resid_post = resid_pre + attn_out + mlp_out. q/k are before rotary "
          "(rotary_dim of each head).",
)
