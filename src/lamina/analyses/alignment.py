"""Query–key alignment: does an attention head's query bias (or any query-side vector) line up
with the keys of the whole vocabulary because of *what* a token is or *where* it is?

The third seed notebook (GPT-2 head 10.7): the query bias has cosine about +0.47 with the key of
every token at position 0 and about -0.45 at later positions — a function of position, not of
the BOS token. This analysis measures that for any head of any model lamina loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.errors import LaminaError
from lamina.geometry import cosine
from lamina.models import Model, load
from lamina.results import Result
from lamina.weights import effective_embedding, folded_query_bias, head_weights


@dataclass
class AlignmentResult(Result):
    """``vocab_cosines``: ``[vocab]`` cosine of the query vector with each token's key at
    position 0 (token alone). ``position_cosines``: position -> ``[n_sequences]``.
    ``summary``: one row per position (``position``, ``mean``, ``std``, ``min``, ``max``).
    ``vocab``: statistics and extreme tokens of the vocabulary sweep; ``key_side``: cosines
    with ``W_E``/effective-embedding transforms; ``bos``: the BOS-specific figures."""

    vocab_cosines: np.ndarray
    position_cosines: dict[int, np.ndarray]
    vocab: dict[str, Any] = field(default_factory=dict)
    key_side: dict[str, np.ndarray] = field(default_factory=dict)
    bos: dict[str, float] = field(default_factory=dict)
    name = "alignment"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"position": p, "sequence": i, "cosine": float(c)}
            for p, values in self.position_cosines.items() for i, c in enumerate(values)
        ])

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        vocab = pd.DataFrame({"token_id": np.arange(len(self.vocab_cosines)),
                              "key_cosine": self.vocab_cosines,
                              **{f"{k}_cosine": v for k, v in self.key_side.items()}})
        return {"alignment_summary": self.summary, "alignment_vocab": vocab}

    def plot(self, **kwargs: Any) -> Any:
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, 2, figsize=(12, 4))
        bins = np.linspace(-1, 1, 81)
        axs[0].hist(self.vocab_cosines, bins=bins, alpha=0.7, label="key at position 0")
        for name, values in self.key_side.items():
            axs[0].hist(values, bins=bins, alpha=0.4, label=f"{name} @ W_K")
        axs[0].set(xlabel="cosine with query vector", ylabel="tokens",
                   title="A) Whole vocabulary, each token alone")
        axs[0].legend(fontsize=8)
        for p, values in self.position_cosines.items():
            axs[1].hist(values, bins=bins, alpha=0.6, label=f"position {p}")
        if "key_position_0" in self.bos:
            axs[1].axvline(self.bos["key_position_0"], color="k", linestyle="--",
                           label="BOS key at 0")
        axs[1].set(xlabel="cosine with query vector", ylabel="sequences",
                   title="B) Keys in random sequences, by position")
        axs[1].legend(fontsize=8)
        m = self.meta
        fig.suptitle(f"{m.get('model', '')}: head {m.get('layer')}.{m.get('head')}, "
                     f"query = {m.get('query')}")
        fig.tight_layout()
        return fig


def _query_vector(model: Model, layer: int, head: int, query: Any) -> tuple[torch.Tensor, str]:
    hw = head_weights(model, layer)
    if isinstance(query, str) and query == "bias":
        vec, label = hw.b_Q[head], "bias (raw)"
    elif isinstance(query, str) and query == "bias_folded":
        vec, label = folded_query_bias(model, layer)[head], "bias_folded (b_Q + ln1.bias @ W_Q)"
    elif isinstance(query, str) and query.startswith("token:"):
        word = query.removeprefix("token:")
        unembed = model.hf_model.get_output_embeddings()
        if unembed is None:
            raise LaminaError(f"{model.name} has no unembedding for query={query!r}.")
        vec = unembed.weight.detach()[model.single_token(word)] @ hw.W_Q[head]
        label = f"unembedding of {word!r} through W_Q"
    elif not isinstance(query, str):
        v = torch.as_tensor(np.asarray(query), dtype=hw.W_Q.dtype)
        if v.shape == (model.d_head,):
            vec, label = v, "user vector (head space)"
        elif v.shape == (model.d_model,):
            vec, label = v @ hw.W_Q[head], "user direction through W_Q"
        else:
            raise LaminaError(f"A query vector must have shape [{model.d_head}] or "
                              f"[{model.d_model}], not {tuple(v.shape)}.")
    else:
        raise LaminaError(f"Unknown query {query!r}: use 'bias', 'bias_folded', "
                          "'token:<word>', or a vector.")
    if float(vec.norm()) == 0:
        raise LaminaError(f"The query vector of head {layer}.{head} is zero (this model has no "
                          "query bias?): pass another query, e.g. query='token:the'.")
    return vec.detach().double(), label


def alignment(model: Model | str, layer: int, head: int, *, query: Any = "bias",
              positions: Sequence[int] = (0, 9, 19, 39), n_sequences: int = 2500,
              seq_len: int = 40, seed: int = 0, batch_size: int = 512) -> AlignmentResult:
    """Cosine of a head's query-side vector with keys over the vocabulary and positions.

    Args:
        model: any model lamina loads; layer, head: the head (``0 <= head < n_heads``).
        query: ``"bias"`` (raw ``b_Q``), ``"bias_folded"`` (``b_Q + ln1.bias @ W_Q``),
            ``"token:<word>"`` (the word's unembedding through ``W_Q``), or a vector of shape
            ``[d_head]`` (used as is) or ``[d_model]`` (mapped through ``W_Q``).
        positions: key positions of the random-sequence sweep (each ``< seq_len``).
        n_sequences, seq_len, seed: the random sequences (uniform over non-special tokens).
    """
    model = load(model)
    if not 0 <= head < model.n_heads:
        raise LaminaError(f"head must be in [0, {model.n_heads}), not {head}.")
    if any(not 0 <= p < seq_len for p in positions):
        raise LaminaError(f"positions must lie in [0, seq_len={seq_len}): {list(positions)}.")
    qvec, qlabel = _query_vector(model, layer, head, query)
    hw = head_weights(model, layer)
    kvh = hw.kv_head(head)
    site = f"blocks.{layer}.attn.hook_k"
    vocab_ids = [[t] for t in range(model.vocab_size)]
    keys = model.collect(vocab_ids, site, positions=0, batch_size=batch_size)[site][:, kvh]
    vocab_cos = cosine(keys, qvec).numpy()
    key_side: dict[str, np.ndarray] = {}
    bos_id = next((getattr(model.tokenizer, a) for a in ("bos_token_id", "cls_token_id")
                   if isinstance(getattr(model.tokenizer, a, None), int)), None)
    bos: dict[str, float] = {}
    parts: dict[str, torch.Tensor] = {}
    try:
        parts = effective_embedding(model)
    except LaminaError:
        from lamina.weights import embedding_matrix

        parts = {"W_E": embedding_matrix(model)}
    W_K = hw.W_K[kvh].double()
    for name, matrix in parts.items():
        side = matrix.double() @ W_K
        nonzero = side.norm(dim=-1) > 0
        values = np.full(len(side), np.nan)
        values[nonzero.numpy()] = cosine(side[nonzero], qvec).numpy()
        key_side[name] = values
        if bos_id is not None:
            bos[f"{name}_through_W_K"] = float(values[bos_id])
    if bos_id is not None:
        bos["key_position_0"] = float(vocab_cos[bos_id])
        bos["token"] = model.token_strings([bos_id])[0]
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    pool = torch.tensor([t for t in range(model.vocab_size) if t not in special])
    gen = torch.Generator().manual_seed(seed)
    seqs = pool[torch.randint(len(pool), (n_sequences, seq_len), generator=gen)]
    acts = model.collect(seqs, site, positions="all", batch_size=max(1, batch_size // 4))
    pos_keys = acts[site][:, list(positions), kvh]  # [n, P, d_head]
    position_cos = {p: cosine(pos_keys[:, i], qvec).numpy() for i, p in enumerate(positions)}
    summary = pd.DataFrame([
        {"position": p, "mean": float(v.mean()), "std": float(v.std(ddof=1)),
         "min": float(v.min()), "max": float(v.max()), "n": len(v)}
        for p, v in position_cos.items()])
    order = np.argsort(vocab_cos)
    strings = model.token_strings(list(range(model.vocab_size)))
    vocab = {
        "mean": float(vocab_cos.mean()), "std": float(vocab_cos.std(ddof=1)),
        "min": float(vocab_cos.min()), "max": float(vocab_cos.max()),
        "lowest": [(strings[i], float(vocab_cos[i])) for i in order[:10]],
        "highest": [(strings[i], float(vocab_cos[i])) for i in order[::-1][:10]],
    }
    return AlignmentResult(
        vocab_cos, position_cos, vocab, key_side, bos, summary=summary,
        meta=model.describe(layer=layer, head=head, query=qlabel, kv_head=kvh,
                            positions=list(positions), n_sequences=n_sequences,
                            seq_len=seq_len, seed=seed, vocab=vocab, bos=bos),
    )
