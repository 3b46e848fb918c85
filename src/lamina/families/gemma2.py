"""Gemma-2: Gemma's conventions (RMSNorm ``1 + w``, embedding scaled by ``sqrt(d_model)``
inside the embedding module, see :mod:`lamina.families.gemma`) plus "sandwich" norms.

Each sublayer is wrapped in two norms: ``input_layernorm -> self_attn ->
post_attention_layernorm -> + residual`` and ``pre_feedforward_layernorm -> mlp ->
post_feedforward_layernorm -> + residual``. Unlike Llama, the module named
``post_attention_layernorm`` is *not* the pre-MLP norm: it normalises the attention output
before the residual add. So:

* ``hook_attn_out`` / ``hook_mlp_out`` are the sublayer modules' outputs, *before* the post
  norms (``post_attn_norm`` / ``post_mlp_norm``); the residual stream receives
  ``post_attention_layernorm(hook_attn_out)`` and ``post_feedforward_layernorm(hook_mlp_out)``.
  (TransformerLens 4.x names the post-norm outputs ``hook_attn_out``/``hook_mlp_out``; the
  sublayer outputs are its ``attn.hook_out``/``mlp.hook_out``.)
* ``hook_resid_mid`` is the residual stream between the sublayers, the input of
  ``pre_feedforward_layernorm`` (``ln2``).

Attention scores are soft-capped (``tanh(s / cap) * cap``, ``attn_logit_softcapping``), scaled
by ``query_pre_attn_scalar ** -0.5``, and alternate layers use a sliding window
(``config.layer_types``); the final logits are soft-capped (``final_logit_softcapping``). None
of these changes what a site holds: they act inside attention and after the unembedding.
"""

from __future__ import annotations

from lamina.families.base import Family, HookPoint, block_io
from lamina.families.gemma import embed_scale
from lamina.families.llama import self_attn_sites, self_attn_weights

B = "layers"

SITES = {
    **block_io(B),
    **self_attn_sites(B),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.pre_feedforward_layernorm", "input"),
}

NOTES = ("hook_attn_out/hook_mlp_out are the sublayer outputs before post_attention_layernorm/"
         "post_feedforward_layernorm (TransformerLens's hook_attn_out/hook_mlp_out are after "
         "them); hook_resid_mid is the input of pre_feedforward_layernorm; hook_embed is the "
         "scaled embedding (W_E * sqrt(d_model)); RMSNorm scales by 1 + w.")

FAMILY = Family(
    name="gemma2", model_types=("gemma2",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1="input_layernorm", ln2="pre_feedforward_layernorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
    norm="rmsnorm", norm_offset=1.0, embed_scale=embed_scale, notes=NOTES,
)
