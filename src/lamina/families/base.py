"""What lamina knows about one architecture family, in one record: :class:`Family`.

A family never rewrites the model: it names modules (paths relative to the family's *base*
model, ``GPT2Model``, ``LlamaModel``, ``BertModel``..., so one record serves the bare model and
its LM-head variants), says whether a site is a module's input or output and how to reshape it,
reads the per-head attention weights into one layout, and states the conventions that change
what a site means (norm placement and scale, embedding scale, parallel blocks).

Per-head layout (:class:`HeadWeights`): ``W_Q, W_K, W_V`` are ``[heads, d_model, d_head]`` (so
``q_h = x @ W_Q[h] + b_Q[h]``), ``W_O`` is ``[n_heads, d_head, d_model]``, biases
``[heads, d_head]``. With grouped-query attention ``W_K``/``W_V`` have ``n_kv_heads`` heads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

Side = Literal["input", "output"]
Loader = Literal["auto", "t5_encoder"]


@dataclass(frozen=True)
class HookPoint:
    """One place to read a site: ``module`` (dotted path), its ``side``, and an optional
    ``transform`` turning the raw tensor ``[batch, seq, ...]`` into the site's value (for
    example, splitting a fused qkv projection into ``[batch, seq, n_heads, d_head]``)."""

    module: str
    side: Side = "output"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Dims:
    """Shape facts read from a model's config (``-1`` where the config does not say)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    vocab_size: int
    max_length: int | None


def config_int(config: Any, *names: str, default: int = -1) -> int:
    """The first of ``names`` that ``config`` holds as an int, else ``default``."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def dims_from_config(config: Any) -> Dims:
    """Layer count, widths and heads from a Hugging Face config, under its usual names."""
    d_model = config_int(config, "hidden_size", "n_embd", "d_model", "dim")
    n_heads = config_int(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    d_head = config_int(config, "head_dim",
                        default=d_model // n_heads if n_heads > 0 and d_model > 0 else -1)
    max_length = config_int(config, "max_position_embeddings", "n_positions", "n_ctx")
    return Dims(
        n_layers=config_int(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        n_kv_heads=config_int(config, "num_key_value_heads", default=n_heads),
        vocab_size=config_int(config, "vocab_size"),
        max_length=max_length if max_length > 0 else None,
    )


@dataclass
class HeadWeights:
    """One layer's attention weights, per head (layout in the module docstring).

    ``ln1`` is the norm in front of attention (``None``: attention reads the residual stream
    directly, as in post-LN BERT or OLMo-2); ``ln1_scale``/``ln1_bias`` are its effective affine
    parameters (Gemma's RMSNorm scales by ``1 + w``: ``ln1_scale`` is ``1 + w`` there).
    ``q_norm``/``k_norm`` are per-head (Qwen3) or whole-projection (OLMo-2) norms applied to
    ``x @ W_Q + b_Q`` before rotary embeddings (``None`` where the family has none).
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor
    ln1: nn.Module | None
    ln1_scale: torch.Tensor | None = None
    ln1_bias: torch.Tensor | None = None
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads (grouped-query attention)."""
        return head // (self.W_Q.shape[0] // self.W_K.shape[0])


#: A per-block site: ``(layer, dims, config) -> HookPoint`` (``None``: no such site here).
SiteFn = Callable[[int, Dims, Any], "HookPoint | None"]
#: Reads one block's raw attention weights: ``(block, dims) -> (W_Q, W_K, W_V, W_O, b_Q, b_K,
#: b_V, b_O)`` in the per-head layout, biases zero where the module has none.
AttentionFn = Callable[[nn.Module, Dims], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Family:
    """Everything lamina knows about one architecture family.

    Attributes:
        name: the family's name (``Model.family``).
        model_types: the ``config.model_type`` values it serves.
        causal: a causal LM (``False``: an encoder).
        loader: the class ``lamina.load`` builds from a directory or hub id: ``"auto"`` picks
            the LM head class from ``config.architectures``; ``"t5_encoder"`` runs T5's encoder.
        blocks: path of the block list; ``embed``/``pos_embed``: token / absolute position
            embedding modules; ``final_norm``: the norm after the last block (``None`` for
            post-LN encoders, whose blocks end in their own norm). All relative to the base
            model.
        block_sites: per-block site suffix (``hook_resid_pre``, ``attn.hook_q``...) ->
            ``(layer, dims, config) -> HookPoint`` with a path relative to the base model.
        attention: reads a block's per-head weights (see :data:`AttentionFn`).
        ln1, ln2: paths inside a block of the norm in front of attention / the MLP (``None``
            where the sublayer reads the residual stream directly).
        post_attn_norm, post_mlp_norm: paths of norms applied to a sublayer's output before
            the residual add (Gemma-2/3, OLMo-2); ``q_norm``/``k_norm``: query/key norms.
        mlp: path of the MLP inside a block.
        norm: ``"layernorm"`` or ``"rmsnorm"``; ``norm_offset``: 1.0 where the norm scales by
            ``1 + w`` (Gemma), else 0.0.
        post_ln: blocks normalise *after* each residual add (BERT-like encoders).
        embed_scale: ``config -> factor`` the token embedding is multiplied by before block 0
            (Gemma: ``sqrt(d_model)``).
        parallel: ``config -> bool``: attention and MLP read the same block input (GPT-J,
            Pythia); there is no ``hook_resid_mid``.
        dims: ``config -> Dims`` (default: :func:`dims_from_config`).
        runner: path of the module to call instead of the base model (T5: ``"encoder"``).
        position_offset: ``config -> int`` added to the position ids lamina passes (``0, 1,
            2, ...`` over each input's real tokens): RoBERTa numbers them from
            ``padding_idx + 1``.
        notes: what a site means in this family where it differs from GPT-2's (docs).
    """

    name: str
    model_types: tuple[str, ...]
    causal: bool
    blocks: str
    embed: str
    pos_embed: str | None
    final_norm: str | None
    block_sites: Mapping[str, SiteFn] = field(repr=False)
    attention: AttentionFn = field(repr=False)
    ln1: str | None
    ln2: str | None
    mlp: str = "mlp"
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    q_norm: str | None = None
    k_norm: str | None = None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_offset: float = 0.0
    post_ln: bool = False
    loader: Loader = "auto"
    embed_scale: Callable[[Any], float] = field(default=lambda config: 1.0, repr=False)
    parallel: Callable[[Any], bool] = field(default=lambda config: False, repr=False)
    dims: Callable[[Any], Dims] = field(default=dims_from_config, repr=False)
    runner: str | None = None
    notes: str = ""
    position_offset: Callable[[Any], int] = field(default=lambda config: 0, repr=False)

    def block(self, layer: int) -> str:
        """Path of block ``layer`` relative to the base model."""
        return f"{self.blocks}.{layer}"

    def norm_affine(self, module: nn.Module | None) -> tuple[torch.Tensor | None, ...]:
        """``(scale, bias)`` a norm module applies after normalising (``None``: none)."""
        if module is None:
            return None, None
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        scale = None if weight is None else weight.detach() + self.norm_offset
        return scale, None if bias is None else bias.detach()


# -- helpers the family modules share ------------------------------------------------------


def heads(n_heads: int, d_head: int, start: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Slice ``[..., start : start + n_heads * d_head]`` of the last dim and split it into
    heads, ``[..., n_heads, d_head]``."""
    width = n_heads * d_head

    def split(t: torch.Tensor) -> torch.Tensor:
        return t[..., start : start + width].unflatten(-1, (n_heads, d_head))

    return split


def split_in(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[d_model, heads * d_head]`` (``x @ w`` convention) -> ``[heads, d_model, d_head]``."""
    return w.unflatten(1, (n_heads, -1)).permute(1, 0, 2)


def bias(linear: nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
    """A linear layer's bias as ``[n_heads, d_head]`` (zeros if it has none)."""
    b = getattr(linear, "bias", None)
    if b is not None:
        return b.detach().reshape(n_heads, d_head)
    w = linear.weight
    return torch.zeros(n_heads, d_head, dtype=w.dtype, device=w.device)


def out_bias(linear: nn.Module, d_model: int) -> torch.Tensor:
    """The output projection's bias ``[d_model]`` (zeros if it has none)."""
    b = getattr(linear, "bias", None)
    w = linear.weight
    return b.detach() if b is not None else torch.zeros(d_model, dtype=w.dtype, device=w.device)


def separate_qkv(q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module,
                 d: Dims) -> tuple[torch.Tensor, ...]:
    """Per-head weights of separate ``nn.Linear`` q/k/v/o projections (Llama, BERT, T5...)."""
    h, kv, dh = d.n_heads, d.n_kv_heads, d.d_head
    return (split_in(q.weight.T, h), split_in(k.weight.T, kv), split_in(v.weight.T, kv),
            o.weight.T.reshape(h, dh, -1), bias(q, h, dh), bias(k, kv, dh), bias(v, kv, dh),
            out_bias(o, d.d_model))


def block_io(blocks: str) -> dict[str, SiteFn]:
    """The sites every family has at the same place: the block's input and output."""
    return {
        "hook_resid_pre": lambda L, d, c: HookPoint(f"{blocks}.{L}", "input"),
        "hook_resid_post": lambda L, d, c: HookPoint(f"{blocks}.{L}"),
    }
