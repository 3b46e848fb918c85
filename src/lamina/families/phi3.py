"""Phi-3: Llama-like pre-norm RMSNorm blocks (scale ``w``), rotary embeddings (possibly on the
first ``partial_rotary_factor`` of each head only), q/k/v fused in one ``self_attn.qkv_proj``
whose output is ``[q | k | v]`` with grouped-query widths (``n_heads * d_head``, then
``n_kv_heads * d_head`` twice), and gate/up fused in ``mlp.gate_up_proj`` (``[gate | up]``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, block_io, heads, out_bias, split_in
from lamina.families.llama import self_attn_sites

B = "layers"


def _widths(d: Dims) -> tuple[int, int]:
    """Widths of the query part and of each of the key / value parts of ``qkv_proj``."""
    return d.n_heads * d.d_head, d.n_kv_heads * d.d_head


def attention(block: nn.Module, d: Dims) -> tuple:
    a = block.self_attn
    q, kv = _widths(d)
    w = a.qkv_proj.weight.T  # [d_model, q + 2 kv]
    Wq, Wk, Wv = torch.split(w, [q, kv, kv], dim=1)
    b = getattr(a.qkv_proj, "bias", None)
    if b is None:
        b = torch.zeros(q + 2 * kv, dtype=w.dtype, device=w.device)
    bq, bk, bv = torch.split(b.detach(), [q, kv, kv])
    h, n_kv, dh = d.n_heads, d.n_kv_heads, d.d_head
    return (split_in(Wq, h), split_in(Wk, n_kv), split_in(Wv, n_kv),
            a.o_proj.weight.T.reshape(h, dh, -1), bq.reshape(h, dh), bk.reshape(n_kv, dh),
            bv.reshape(n_kv, dh), out_bias(a.o_proj, d.d_model))


def _part(which: int):
    def site(L: int, d: Dims, c: object) -> HookPoint:
        q, kv = _widths(d)
        n, start = [(d.n_heads, 0), (d.n_kv_heads, q), (d.n_kv_heads, q + kv)][which]
        return HookPoint(f"{B}.{L}.self_attn.qkv_proj", transform=heads(n, d.d_head, start))

    return site


SITES = {
    **block_io(B),
    **self_attn_sites(B),  # z, attention and MLP outputs as Llama's; q/k/v from qkv_proj:
    "attn.hook_q": _part(0),
    "attn.hook_k": _part(1),
    "attn.hook_v": _part(2),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.post_attention_layernorm", "input"),
}

FAMILY = Family(
    name="phi3", model_types=("phi3",), causal=True,
    blocks=B, embed="embed_tokens", pos_embed=None, final_norm="norm",
    block_sites=SITES, attention=attention,
    ln1="input_layernorm", ln2="post_attention_layernorm", norm="rmsnorm",
    notes="attn.hook_q/k/v: slices [q | k | v] of the fused qkv_proj output (GQA widths), "
          "before rotary (which may cover only the first partial_rotary_factor of each head).",
)
