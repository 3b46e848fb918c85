"""OLMo-2: no norm in front of attention or the MLP. Each sublayer reads the residual stream
directly and its output is RMS-normalised (``post_attention_layernorm``,
``post_feedforward_layernorm``, scale ``w``) before the residual add. Queries and keys go
through an RMSNorm over the *whole* projection (``self_attn.q_norm`` over ``n_heads *
d_head``, ``k_norm`` over ``n_kv_heads * d_head``, not per head) before rotary.

``hook_attn_out``/``hook_mlp_out`` are the sublayer modules' outputs, *before* their norm
(TransformerLens 4.x names the norms' outputs so). ``hook_resid_mid`` is the MLP's input,
which is exactly the residual stream between the sublayers: ``resid_pre +
post_attention_layernorm(attn_out)``."""

from __future__ import annotations

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, separate_qkv

B = "layers"


def attention(block: nn.Module, d: Dims) -> tuple:
    a = block.self_attn
    return separate_qkv(a.q_proj, a.k_proj, a.v_proj, a.o_proj, d)


SITES = {
    **block_io(B),
    "attn.hook_q": lambda L, d, c: HookPoint(f"{B}.{L}.self_attn.q_proj",
                                             transform=heads(d.n_heads, d.d_head)),
    "attn.hook_k": lambda L, d, c: HookPoint(f"{B}.{L}.self_attn.k_proj",
                                             transform=heads(d.n_kv_heads, d.d_head)),
    "attn.hook_v": lambda L, d, c: HookPoint(f"{B}.{L}.self_attn.v_proj",
                                             transform=heads(d.n_kv_heads, d.d_head)),
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.self_attn.o_proj", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.self_attn"),
    # The MLP reads the residual stream itself (no pre-MLP norm): its input is resid_mid.
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.mlp", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.mlp"),
}

FAMILY = Family(
    name="olmo2", model_types=("olmo2",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=attention,
    ln1=None, ln2=None, norm="rmsnorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
    q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
    notes="No pre-sublayer norm: attention and MLP read the residual stream. hook_attn_out/"
          "hook_mlp_out are before post_attention_layernorm/post_feedforward_layernorm (TL "
          "4.x's hook_attn_out/hook_mlp_out are after); hook_resid_mid is the MLP's input. "
          "q_norm/k_norm normalise the whole q/k projection, not each head.",
)
