"""Per-head attention weights in one layout for every family, read from the raw model.

``W_Q, W_K, W_V``: ``[n_heads, d_model, d_head]`` (so ``q_h = x @ W_Q[h] + b_Q[h]``), ``W_O``:
``[n_heads, d_head, d_model]``, ``b_Q, b_K, b_V``: ``[n_heads, d_head]``. With grouped-query
attention, ``W_K``/``W_V`` have ``n_kv_heads`` heads; query head ``h`` reads key head
``kv_head(h) = h // (n_heads // n_kv_heads)``. Nothing is folded or centred: the folded query
bias (what TransformerLens calls ``b_Q`` after ``fold_ln``) is a separate, named function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lamina.errors import LaminaError
from lamina.models import Model


@dataclass
class HeadWeights:
    """One layer's attention weights, per head (see module docstring for shapes)."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor
    ln1: nn.Module | None  # the norm in front of attention (None: post-LN, e.g. BERT)

    def kv_head(self, head: int) -> int:
        return head // (self.W_Q.shape[0] // self.W_K.shape[0])


def _split_in(w: torch.Tensor, heads: int) -> torch.Tensor:
    """``[d_model, heads * d_head]`` (x @ w convention) -> ``[heads, d_model, d_head]``."""
    return w.unflatten(1, (heads, -1)).permute(1, 0, 2)


def _zeros(heads: int, d_head: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(heads, d_head, dtype=like.dtype, device=like.device)


def _bias(lin: nn.Module, heads: int, d_head: int, like: torch.Tensor) -> torch.Tensor:
    b = getattr(lin, "bias", None)
    return b.detach().reshape(heads, d_head) if b is not None else _zeros(heads, d_head, like)


def head_weights(model: Model, layer: int) -> HeadWeights:
    """The raw attention weights of block ``layer``, per head."""
    if model.adapter is None:
        raise LaminaError(f"{model.name} has no architecture adapter: its weights are unknown.")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise LaminaError(f"layer must be an int in [0, {model.n_layers}), not {layer!r}.",
                          cli=f"--layer must be in [0, {model.n_layers}), not {layer}.")
    block = model.base_module(model.adapter.block(layer))
    h, kv, dh, d = model.n_heads, model.n_kv_heads, model.d_head, model.d_model
    family = model.family
    with torch.no_grad():
        if family == "gpt2":
            w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: x @ w
            qkv = [_split_in(w[:, i * d : (i + 1) * d], h) for i in range(3)]
            bq, bk, bv = (b[i * d : (i + 1) * d].reshape(h, dh) for i in range(3))
            W_O, b_O, ln1 = block.attn.c_proj.weight.reshape(h, dh, d), block.attn.c_proj.bias, \
                block.ln_1
        elif family == "gpt_neox":
            lin = block.attention.query_key_value  # per head: [q | k | v]
            w = lin.weight.T.unflatten(1, (h, 3, dh))  # [d, h, 3, dh]
            qkv = [w[:, :, i].permute(1, 0, 2) for i in range(3)]
            bb = lin.bias.reshape(h, 3, dh)
            bq, bk, bv = bb[:, 0], bb[:, 1], bb[:, 2]
            dense = block.attention.dense
            W_O, b_O, ln1 = dense.weight.T.reshape(h, dh, d), dense.bias, block.input_layernorm
        elif family == "llama":
            att = block.self_attn
            qkv = [_split_in(att.q_proj.weight.T, h), _split_in(att.k_proj.weight.T, kv),
                   _split_in(att.v_proj.weight.T, kv)]
            like = att.q_proj.weight
            bq, bk, bv = (_bias(att.q_proj, h, dh, like), _bias(att.k_proj, kv, dh, like),
                          _bias(att.v_proj, kv, dh, like))
            W_O = att.o_proj.weight.T.reshape(h, dh, d)
            b_O = att.o_proj.bias if att.o_proj.bias is not None else torch.zeros(d)
            ln1 = block.input_layernorm
        elif family == "bert":
            s = block.attention.self
            qkv = [_split_in(lin.weight.T, h) for lin in (s.query, s.key, s.value)]
            bq, bk, bv = (lin.bias.reshape(h, dh) for lin in (s.query, s.key, s.value))
            out = block.attention.output.dense
            W_O, b_O, ln1 = out.weight.T.reshape(h, dh, d), out.bias, None
        else:  # pragma: no cover - adapters and this table list the same families
            raise LaminaError(f"No weight layout for family {family!r}.")
    t = [x.detach().clone() for x in (*qkv, W_O, bq, bk, bv, b_O)]
    return HeadWeights(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], ln1)


def folded_query_bias(model: Model, layer: int) -> torch.Tensor:
    """``b_Q + ln1.bias @ W_Q`` per head, ``[n_heads, d_head]``: the query bias seen by a
    normalised input once the LayerNorm's affine part is folded into ``W_Q`` (TransformerLens's
    ``b_Q`` after ``fold_ln``). Equals the raw bias for norms without a bias (RMSNorm) and for
    post-LN blocks (BERT), whose attention reads the residual directly."""
    hw = head_weights(model, layer)
    ln_bias = getattr(hw.ln1, "bias", None) if hw.ln1 is not None else None
    if ln_bias is None:
        return hw.b_Q.clone()
    return hw.b_Q + torch.einsum("d,hde->he", ln_bias.detach(), hw.W_Q)


def folded_query_weight(model: Model, layer: int) -> torch.Tensor:
    """``ln1.weight[:, None] * W_Q``: the query weight applied to the *normalised* input
    (before the norm's own scale), ``[n_heads, d_model, d_head]``."""
    hw = head_weights(model, layer)
    scale = getattr(hw.ln1, "weight", None) if hw.ln1 is not None else None
    return hw.W_Q.clone() if scale is None else scale.detach()[None, :, None] * hw.W_Q


def embedding_matrix(model: Model) -> torch.Tensor:
    """The raw input embedding matrix ``W_E``, ``[vocab, d_model]``."""
    emb = model.hf_model.get_input_embeddings() if hasattr(
        model.hf_model, "get_input_embeddings") else None
    if emb is None:
        raise LaminaError(f"{model.name} exposes no input embedding.")
    return emb.weight.detach()


def effective_embedding(model: Model, batch_rows: int = 4096) -> dict[str, torch.Tensor]:
    """Block 0's view of every token, as the query-bias notebook defines it (pre-LN blocks):
    ``W_EE = W_E + attn0(W_E) + MLP0(LN2(W_E + attn0(W_E)))`` where ``attn0`` lets each token
    attend only to itself (``LN1(x) @ W_V @ W_O`` summed over heads, no value/output biases,
    no position embedding); parallel-attention blocks feed the MLP ``LN2(W_E)`` instead.

    Returns ``{"W_E", "W_EE", "mlp", "attn_mlp"}``, each ``[vocab, d_model]`` (``mlp`` is the
    MLP term alone, ``attn_mlp = W_EE - W_E``).
    """
    if model.family not in ("gpt2", "gpt_neox", "llama"):
        raise LaminaError(
            f"The effective embedding is defined for pre-LN blocks (GPT-2, GPT-NeoX, Llama); "
            f"{model.name} is {model.family}.")
    hw = head_weights(model, 0)
    block = model.base_module(model.adapter.block(0))
    ln2 = block.ln_2 if model.family == "gpt2" else block.post_attention_layernorm
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    groups = hw.W_Q.shape[0] // hw.W_V.shape[0]
    OV = torch.einsum("hde,hef->df", hw.W_V.repeat_interleave(groups, 0), hw.W_O)  # [d, d]
    W_E = embedding_matrix(model)
    parts: dict[str, list[torch.Tensor]] = {"W_EE": [], "mlp": []}
    with torch.inference_mode():
        for start in range(0, W_E.shape[0], batch_rows):
            x = W_E[start : start + batch_rows]
            mid = x + hw.ln1(x) @ OV.to(x.dtype)
            mlp = block.mlp(ln2(x if parallel else mid))
            parts["W_EE"].append(mid + mlp)
            parts["mlp"].append(mlp)
    W_EE = torch.cat(parts["W_EE"])
    return {"W_E": W_E, "W_EE": W_EE, "mlp": torch.cat(parts["mlp"]), "attn_mlp": W_EE - W_E}
