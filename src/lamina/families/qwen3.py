"""Qwen3: Llama-like pre-norm RMSNorm blocks (scale ``w``), rotary embeddings, separate q/k/v/o
projections with grouped-query attention, plus a *per-head* RMSNorm on queries and keys
(``self_attn.q_norm``/``k_norm``, over ``head_dim``) applied after the projections and before
rotary. ``head_dim`` is explicit in the config and need not be ``hidden_size / heads``.

``attn.hook_q``/``hook_k`` are the projections (``q_proj``/``k_proj`` outputs, before the q/k
norm), as TransformerLens 4.x places them; the normed queries / keys are the outputs of
``self_attn.q_norm`` / ``k_norm``, ``[batch, seq, heads, head_dim]`` (a ``module:`` site)."""

from __future__ import annotations

from lamina.families.base import Family, HookPoint, block_io
from lamina.families.llama import self_attn_sites, self_attn_weights

B = "layers"


SITES = {
    **block_io(B),
    **self_attn_sites(B),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
}

FAMILY = Family(
    name="qwen3", model_types=("qwen3",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=self_attn_weights,
    ln1="input_layernorm", ln2="post_attention_layernorm", norm="rmsnorm",
    q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
    notes="attn.hook_q/hook_k: the q_proj/k_proj outputs per head, before the per-head RMSNorm "
          "(self_attn.q_norm/k_norm over head_dim) and rotary; the normed queries are "
          "module:<base>.layers.{L}.self_attn.q_norm, [batch, seq, heads, head_dim].",
)
