"""T5's *encoder* (``T5EncoderModel``; the encoder of ``T5Model`` /
``T5ForConditionalGeneration`` when one of those is given): pre-norm blocks
``encoder.block.{L}`` of two sublayers, ``layer.0`` = self-attention (``layer_norm``,
``SelfAttention.q/k/v/o`` without biases) and ``layer.1`` = feed-forward (``layer_norm``,
``DenseReluDense``), then ``encoder.final_layer_norm``. Norms are RMSNorms scaling by ``w``
(no offset, no bias). There are no absolute positions: block 0's attention computes a relative
position bias that every block adds to its attention scores (not a residual-stream site).

Only the encoder runs (``runner = "encoder"``): lamina never needs decoder inputs. Heads have
``d_kv`` dims, which need not be ``d_model / num_heads``; the context is unbounded
(``max_length`` is ``None``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from lamina.families.base import Dims, Family, HookPoint, config_int, heads, separate_qkv

B = "encoder.block"
ATTN = "layer.0.SelfAttention"


def dims(config: Any) -> Dims:
    """Shapes under T5's config names: ``num_layers``, ``d_model``, ``num_heads``, ``d_kv``."""
    n_heads = config_int(config, "num_heads")
    return Dims(
        n_layers=config_int(config, "num_layers"), d_model=config_int(config, "d_model"),
        n_heads=n_heads, d_head=config_int(config, "d_kv"), n_kv_heads=n_heads,
        vocab_size=config_int(config, "vocab_size"), max_length=None,
    )


def attention(block: nn.Module, d: Dims) -> tuple:
    a = block.get_submodule(ATTN)
    return separate_qkv(a.q, a.k, a.v, a.o, d)


SITES = {
    "hook_resid_pre": lambda L, d, c: HookPoint(f"{B}.{L}", "input"),
    **{f"attn.hook_{n}": (lambda L, d, c, n=n: HookPoint(f"{B}.{L}.{ATTN}.{n}",
                                                         transform=heads(d.n_heads, d.d_head)))
       for n in "qkv"},
    "attn.hook_z": lambda L, d, c: HookPoint(f"{B}.{L}.{ATTN}.o", "input",
                                             heads(d.n_heads, d.d_head)),
    "hook_attn_out": lambda L, d, c: HookPoint(f"{B}.{L}.{ATTN}"),
    "hook_resid_mid": lambda L, d, c: HookPoint(f"{B}.{L}.layer.1.layer_norm", "input"),
    "hook_mlp_out": lambda L, d, c: HookPoint(f"{B}.{L}.layer.1.DenseReluDense"),
    "hook_resid_post": lambda L, d, c: HookPoint(f"{B}.{L}"),
}

FAMILY = Family(
    name="t5", model_types=("t5",), causal=False,
    blocks=B, embed="encoder.embed_tokens", pos_embed=None, final_norm="encoder.final_layer_norm",
    block_sites=SITES, attention=attention,
    ln1="layer.0.layer_norm", ln2="layer.1.layer_norm", mlp="layer.1.DenseReluDense",
    norm="rmsnorm", loader="t5_encoder", dims=dims, runner="encoder",
    notes="Encoder only. Pre-norm RMSNorm (scale w). No absolute positions (no "
          "hook_pos_embed): a relative position bias from block 0 enters every block's "
          "attention scores. hidden.{n_layers} and ln_final.hook_normalized are after "
          "encoder.final_layer_norm.",
)
