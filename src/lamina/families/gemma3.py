"""Gemma-3 (text, ``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``): Gemma-2's block
(sandwich norms, see :mod:`lamina.families.gemma2`) with per-head RMSNorms on queries and keys
(``self_attn.q_norm`` / ``k_norm``, also ``1 + w``) applied after the projections and before
rotary embeddings. ``attn.hook_q``/``hook_k`` are the projection outputs, before those norms.

Sliding-window and global layers follow ``config.layer_types`` (each with its own rotary
base); attention-score soft-capping is off by default (``attn_logit_softcapping=None``). The
embedding is scaled by ``sqrt(d_model)`` inside ``Gemma3TextScaledWordEmbedding``, so
``hook_embed`` is the scaled embedding. The multimodal ``Gemma3ForConditionalGeneration``
(``model_type`` ``gemma3``) is not served by this record.
"""

from __future__ import annotations

from lamina.families.base import Family
from lamina.families.gemma import embed_scale
from lamina.families.gemma2 import NOTES, SITES
from lamina.families.llama import self_attn_weights

B = "layers"

FAMILY = Family(
    name="gemma3", model_types=("gemma3_text",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1="input_layernorm", ln2="pre_feedforward_layernorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
    q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
    norm="rmsnorm", norm_offset=1.0, embed_scale=embed_scale,
    notes=NOTES + " attn.hook_q/hook_k are before self_attn.q_norm/k_norm (per head, 1 + w).",
)
