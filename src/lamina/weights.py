"""Per-head attention weights in one layout for every family, read from the raw model
(layout: :mod:`lamina.families.base`), and what is built from them: the folded query bias and
weight, and block 0's effective embedding.

Nothing is folded or centred in the model: the folded query bias (what TransformerLens calls
``b_Q`` after ``fold_ln``) is a separate, named function. Each family says how its norms scale
(Gemma's RMSNorm by ``1 + w``), where they sit and how its embedding is scaled, so every
function here is the same for all families.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lamina.errors import LaminaError
from lamina.families import Family, HeadWeights
from lamina.models import Model

__all__ = ["HeadWeights", "effective_embedding", "embedding_matrix", "folded_query_bias",
           "folded_query_weight", "head_weights"]


def _family(model: Model, what: str) -> Family:
    if model.architecture is None:
        raise LaminaError(f"{model.name} has no known architecture family: its {what} are "
                          "unknown.")
    return model.architecture


def _part(block: nn.Module, path: str | None) -> nn.Module | None:
    return None if path is None else block.get_submodule(path)


def head_weights(model: Model, layer: int) -> HeadWeights:
    """The raw attention weights of block ``layer``, per head (see :class:`HeadWeights`)."""
    family = _family(model, "attention weights")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise LaminaError(f"layer must be an int in [0, {model.n_layers}), not {layer!r}.",
                          cli=f"--layer must be in [0, {model.n_layers}), not {layer}.")
    block = model.block(layer)
    with torch.no_grad():
        t = [x.detach().clone() for x in family.attention(block, model.dims)]
    ln1 = _part(block, family.ln1)
    scale, shift = family.norm_affine(ln1)
    return HeadWeights(*t, ln1=ln1, ln1_scale=scale, ln1_bias=shift,
                       q_norm=_part(block, family.q_norm), k_norm=_part(block, family.k_norm))


def folded_query_bias(model: Model, layer: int) -> torch.Tensor:
    """``b_Q + ln1.bias @ W_Q`` per head, ``[n_heads, d_head]``: the query bias seen by a
    normalised input once the LayerNorm's affine part is folded into ``W_Q`` (TransformerLens's
    ``b_Q`` after ``fold_ln``). Equals the raw bias for norms without a bias (RMSNorm) and for
    post-LN blocks (BERT), whose attention reads the residual directly."""
    hw = head_weights(model, layer)
    if hw.ln1_bias is None:
        return hw.b_Q.clone()
    return hw.b_Q + torch.einsum("d,hde->he", hw.ln1_bias, hw.W_Q)


def folded_query_weight(model: Model, layer: int) -> torch.Tensor:
    """``scale[:, None] * W_Q``: the query weight applied to the *normalised* input (before
    the norm's own scale: ``ln1.weight``, or ``1 + ln1.weight`` for Gemma's norms),
    ``[n_heads, d_model, d_head]``."""
    hw = head_weights(model, layer)
    return hw.W_Q.clone() if hw.ln1_scale is None else hw.ln1_scale[None, :, None] * hw.W_Q


def embedding_matrix(model: Model) -> torch.Tensor:
    """The raw input embedding matrix ``W_E``, ``[vocab, d_model]``."""
    emb = model.hf_model.get_input_embeddings() if hasattr(
        model.hf_model, "get_input_embeddings") else None
    if emb is None:
        raise LaminaError(f"{model.name} exposes no input embedding.")
    return emb.weight.detach()


def effective_embedding(model: Model, batch_rows: int = 4096) -> dict[str, torch.Tensor]:
    """Block 0's view of every token, as the query-bias notebook defines it (pre-norm blocks):
    ``W_EE = x + attn0(x) + MLP0(LN2(x + attn0(x)))`` with ``x = W_E * embed_scale``, where
    ``attn0`` lets each token attend only to itself (``LN1(x) @ W_V @ W_O`` summed over heads,
    no value/output biases, no position embedding). Each family's conventions apply: the
    embedding scale (Gemma: ``sqrt(d_model)``), norms after a sublayer (Gemma-2/3, OLMo-2), a
    sublayer without a norm in front (OLMo-2), and parallel blocks (GPT-J, Pythia), whose MLP
    reads ``LN2(x)``.

    Returns ``{"W_E", "W_EE", "mlp", "attn_mlp"}``, each ``[vocab, d_model]``: ``W_E`` is the
    raw embedding matrix, ``mlp`` the MLP term alone and ``attn_mlp = W_EE - x`` (``W_EE - W_E``
    where the embedding is not scaled).
    """
    family = _family(model, "blocks")
    if family.post_ln:
        raise LaminaError(
            f"The effective embedding is defined for pre-LN (pre-norm) blocks; {model.name} is "
            f"{family.name}, whose blocks normalise after each residual add.")
    hw = head_weights(model, 0)
    block = model.block(0)
    ln2, mlp = _part(block, family.ln2), block.get_submodule(family.mlp)
    post_attn, post_mlp = _part(block, family.post_attn_norm), _part(block, family.post_mlp_norm)
    parallel = family.parallel(model.config)
    scale = family.embed_scale(model.config)
    groups = hw.W_Q.shape[0] // hw.W_V.shape[0]
    OV = torch.einsum("hde,hef->df", hw.W_V.repeat_interleave(groups, 0), hw.W_O)  # [d, d]
    W_E = embedding_matrix(model)

    def norm(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return x if module is None else module(x)

    parts: dict[str, list[torch.Tensor]] = {"W_EE": [], "mlp": []}
    with torch.inference_mode():
        for start in range(0, W_E.shape[0], batch_rows):
            x = W_E[start : start + batch_rows]
            x = x * torch.tensor(scale, dtype=x.dtype) if scale != 1.0 else x
            mid = x + norm(post_attn, norm(hw.ln1, x) @ OV.to(x.dtype))
            out = norm(post_mlp, mlp(norm(ln2, x if parallel else mid)))
            parts["W_EE"].append(mid + out)
            parts["mlp"].append(out)
    W_EE = torch.cat(parts["W_EE"])
    scaled = W_E * torch.tensor(scale, dtype=W_E.dtype) if scale != 1.0 else W_E
    return {"W_E": W_E, "W_EE": W_EE, "mlp": torch.cat(parts["mlp"]), "attn_mlp": W_EE - scaled}
