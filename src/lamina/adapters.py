"""Per-family tables: where each canonical site lives inside an unmodified Hugging Face model.

An adapter never rewrites the model: it only names modules and says whether a site is the
module's input or output and how to reshape it (fused q/k/v projections are split into heads).
Paths are relative to the family's *base* model (``GPT2Model``, ``LlamaModel``, ``BertModel``...),
so the same table serves ``GPT2Model`` and ``GPT2LMHeadModel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Side = Literal["input", "output"]


@dataclass(frozen=True)
class HookPoint:
    """One place to read a site: ``module`` (dotted path from the base model), its ``side``,
    and an optional ``transform`` turning the raw tensor ``[batch, seq, ...]`` into the site's
    value (for example, splitting a fused qkv projection into ``[batch, seq, n_heads, d_head]``).
    """

    module: str
    side: Side = "output"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _heads(n_heads: int, d_head: int, start: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Slice ``[..., start*1 : start+n_heads*d_head]`` of the last dim and split it into heads."""
    width = n_heads * d_head

    def split(t: torch.Tensor) -> torch.Tensor:
        return t[..., start : start + width].unflatten(-1, (n_heads, d_head))

    return split


def _neox_qkv(n_heads: int, d_head: int, which: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """GPT-NeoX fuses q, k, v per head: ``[..., n_heads, 3 * d_head]`` then chunks."""

    def split(t: torch.Tensor) -> torch.Tensor:
        per_head = t.unflatten(-1, (n_heads, 3 * d_head))
        return per_head[..., which * d_head : (which + 1) * d_head]

    return split


@dataclass(frozen=True)
class Dims:
    """Shape facts read from a model's config."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    vocab_size: int
    max_length: int | None


@dataclass
class Adapter:
    """Where the canonical sites of one architecture family live.

    ``block_sites`` maps a per-block site suffix (``hook_resid_pre``, ``attn.hook_q``...) to a
    function ``(layer, dims) -> HookPoint``. ``final_norm`` is the final normalisation module
    (``None`` for post-LN encoders such as BERT, whose blocks end in their own LayerNorm).
    """

    family: str
    model_types: tuple[str, ...]
    is_causal: bool
    blocks: str
    embed: str
    pos_embed: str | None
    final_norm: str | None
    block_sites: dict[str, Callable[[int, Dims, Any], HookPoint | None]] = field(repr=False)

    def block(self, layer: int) -> str:
        return f"{self.blocks}.{layer}"


def _block_io(adapter_blocks: str) -> dict[str, Callable[[int, Dims, Any], HookPoint | None]]:
    return {
        "hook_resid_pre": lambda L, d, c: HookPoint(f"{adapter_blocks}.{L}", "input"),
    }


def _gpt2() -> Adapter:
    b = "h"
    sites = _block_io(b)
    sites.update(
        {
            "attn.hook_q": lambda L, d, c: HookPoint(
                f"{b}.{L}.attn.c_attn", transform=_heads(d.n_heads, d.d_head, 0)
            ),
            "attn.hook_k": lambda L, d, c: HookPoint(
                f"{b}.{L}.attn.c_attn", transform=_heads(d.n_heads, d.d_head, d.d_model)
            ),
            "attn.hook_v": lambda L, d, c: HookPoint(
                f"{b}.{L}.attn.c_attn", transform=_heads(d.n_heads, d.d_head, 2 * d.d_model)
            ),
            "attn.hook_z": lambda L, d, c: HookPoint(
                f"{b}.{L}.attn.c_proj", "input", _heads(d.n_heads, d.d_head)
            ),
            "hook_attn_out": lambda L, d, c: HookPoint(f"{b}.{L}.attn"),
            "hook_resid_mid": lambda L, d, c: HookPoint(f"{b}.{L}.ln_2", "input"),
            "hook_mlp_out": lambda L, d, c: HookPoint(f"{b}.{L}.mlp"),
            "hook_resid_post": lambda L, d, c: HookPoint(f"{b}.{L}"),
        }
    )
    return Adapter("gpt2", ("gpt2",), True, b, "wte", "wpe", "ln_f", sites)


def _neox() -> Adapter:
    b = "layers"
    sites = _block_io(b)
    sites.update(
        {
            f"attn.hook_{name}": (
                lambda L, d, c, i=i: HookPoint(
                    f"{b}.{L}.attention.query_key_value",
                    transform=_neox_qkv(d.n_heads, d.d_head, i),
                )
            )
            for i, name in enumerate("qkv")
        }
    )
    sites.update(
        {
            "attn.hook_z": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.dense", "input", _heads(d.n_heads, d.d_head)
            ),
            "hook_attn_out": lambda L, d, c: HookPoint(f"{b}.{L}.attention"),
            # Parallel attention (Pythia's default) has no residual point between the sublayers.
            "hook_resid_mid": lambda L, d, c: None
            if getattr(c, "use_parallel_residual", False)
            else HookPoint(f"{b}.{L}.post_attention_layernorm", "input"),
            "hook_mlp_out": lambda L, d, c: HookPoint(f"{b}.{L}.mlp"),
            "hook_resid_post": lambda L, d, c: HookPoint(f"{b}.{L}"),
        }
    )
    return Adapter("gpt_neox", ("gpt_neox",), True, b, "embed_in", None, "final_layer_norm", sites)


def _llama() -> Adapter:
    b = "layers"
    sites = _block_io(b)
    sites.update(
        {
            "attn.hook_q": lambda L, d, c: HookPoint(
                f"{b}.{L}.self_attn.q_proj", transform=_heads(d.n_heads, d.d_head)
            ),
            "attn.hook_k": lambda L, d, c: HookPoint(
                f"{b}.{L}.self_attn.k_proj", transform=_heads(d.n_kv_heads, d.d_head)
            ),
            "attn.hook_v": lambda L, d, c: HookPoint(
                f"{b}.{L}.self_attn.v_proj", transform=_heads(d.n_kv_heads, d.d_head)
            ),
            "attn.hook_z": lambda L, d, c: HookPoint(
                f"{b}.{L}.self_attn.o_proj", "input", _heads(d.n_heads, d.d_head)
            ),
            "hook_attn_out": lambda L, d, c: HookPoint(f"{b}.{L}.self_attn"),
            "hook_resid_mid": lambda L, d, c: HookPoint(
                f"{b}.{L}.post_attention_layernorm", "input"
            ),
            "hook_mlp_out": lambda L, d, c: HookPoint(f"{b}.{L}.mlp"),
            "hook_resid_post": lambda L, d, c: HookPoint(f"{b}.{L}"),
        }
    )
    return Adapter(
        "llama", ("llama", "mistral", "qwen2"), True, b, "embed_tokens", None, "norm", sites
    )


def _bert() -> Adapter:
    """BERT is post-LN: each block ends in a LayerNorm. Following TransformerLens's
    ``HookedEncoder``, ``hook_resid_mid = resid_pre + attn_out`` and
    ``hook_resid_post = LN1(resid_mid) + mlp_out`` are *before* their LayerNorms, and the
    block's output (what Hugging Face's hidden states hold) is ``hook_normalized_resid_post``.
    """
    b = "encoder.layer"
    sites = _block_io(b)
    sites.update(
        {
            "attn.hook_q": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.self.query", transform=_heads(d.n_heads, d.d_head)
            ),
            "attn.hook_k": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.self.key", transform=_heads(d.n_heads, d.d_head)
            ),
            "attn.hook_v": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.self.value", transform=_heads(d.n_heads, d.d_head)
            ),
            "attn.hook_z": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.output.dense", "input", _heads(d.n_heads, d.d_head)
            ),
            "hook_attn_out": lambda L, d, c: HookPoint(f"{b}.{L}.attention.output.dense"),
            "hook_resid_mid": lambda L, d, c: HookPoint(
                f"{b}.{L}.attention.output.LayerNorm", "input"
            ),
            "hook_mlp_out": lambda L, d, c: HookPoint(f"{b}.{L}.output.dense"),
            "hook_resid_post": lambda L, d, c: HookPoint(f"{b}.{L}.output.LayerNorm", "input"),
            "hook_normalized_resid_post": lambda L, d, c: HookPoint(f"{b}.{L}"),
        }
    )
    return Adapter(
        "bert",
        ("bert",),
        False,
        b,
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        None,
        sites,
    )


ADAPTERS: tuple[Adapter, ...] = (_gpt2(), _neox(), _llama(), _bert())
SUPPORTED_FAMILIES = ", ".join(
    f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS
)


def adapter_for(config: Any) -> Adapter | None:
    """The adapter whose family includes ``config.model_type``, or ``None``."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    return None


def dims_from_config(config: Any) -> Dims:
    """Read layer count, widths and heads from any Hugging Face config (``-1`` if absent)."""

    def get(*names: str, default: int = -1) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return default

    d_model = get("hidden_size", "n_embd", "d_model", "dim")
    n_heads = get("num_attention_heads", "n_head", "num_heads")
    d_head = get("head_dim", default=d_model // n_heads if n_heads > 0 else -1)
    max_length = get("max_position_embeddings", "n_positions", "n_ctx")
    return Dims(
        n_layers=get("num_hidden_layers", "n_layer", "num_layers"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        n_kv_heads=get("num_key_value_heads", default=n_heads),
        vocab_size=get("vocab_size"),
        max_length=max_length if max_length > 0 else None,
    )
