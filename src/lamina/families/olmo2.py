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

from lamina.families.base import Family, HookPoint, block_io
from lamina.families.llama import self_attn_sites, self_attn_weights

B = "layers"


SITES = {
    **block_io(B),
    **self_attn_sites(B),
    # The MLP reads the residual stream itself (no pre-MLP norm): its input is resid_mid.
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.mlp", "input"),
}

FAMILY = Family(
    name="olmo2", model_types=("olmo2",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1=None, ln2=None, norm="rmsnorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
    q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
    notes="No pre-sublayer norm: attention and MLP read the residual stream. hook_attn_out/"
          "hook_mlp_out are before post_attention_layernorm/post_feedforward_layernorm (TL "
          "4.x's hook_attn_out/hook_mlp_out are after); hook_resid_mid is the MLP's input. "
          "q_norm/k_norm normalise the whole q/k projection, not each head.",
)
