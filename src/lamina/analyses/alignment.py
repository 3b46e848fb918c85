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

from lamina.analyses._checks import single_token
from lamina.checks import check_int
from lamina.errors import LaminaError
from lamina.geometry import cosine
from lamina.models import Model, load
from lamina.results import Result
from lamina.weights import effective_embedding, embedding_matrix, folded_query_bias, head_weights


@dataclass
class AlignmentResult(Result):
    """``vocab_cosines``: ``[vocab]`` cosine of the query vector with each token's key at
    position 0 (token alone). ``position_cosines``: position -> ``[n_sequences]``.
    :meth:`by_position` (saved as ``alignment_summary.csv``): one row per position
    (``position``, ``mean``, ``std``, ``min``, ``max``, ``n``). ``summary``: the vocabulary
    sweep's ``vocab_mean``, ``vocab_std``, ``vocab_min``, ``vocab_max`` and
    ``mean_by_position`` (position -> mean cosine).
    ``vocab``: statistics and extreme tokens of the vocabulary sweep; ``key_side``: cosines
    with ``W_E``/effective-embedding transforms (``meta["key_side"]`` says which matrices were
    used and, when only ``W_E``, why); ``bos``: the BOS-specific figures."""

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
        return {"alignment_summary": self.by_position(), "alignment_vocab": vocab}

    def by_position(self) -> pd.DataFrame:
        """One row per key position: ``position``, ``mean``, ``std`` (ddof=1), ``min``,
        ``max`` and ``n`` of the cosines over the sequences."""
        return pd.DataFrame([
            {"position": p, "mean": float(v.mean()), "std": float(v.std(ddof=1)),
             "min": float(v.min()), "max": float(v.max()), "n": len(v)}
            for p, v in self.position_cosines.items()])

    def plot(self, **kwargs: Any) -> Any:
        """Small multiples: the vocabulary sweep, then one panel per key position, each
        histogram on an x range fitted to its data (positions share one range)."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        from lamina.plotting import fitted_range

        n = 1 + len(self.position_cosines)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        flat = list(axs.ravel())
        vocab = [self.vocab_cosines, *self.key_side.values()]
        lo, hi = fitted_range(*vocab)
        ax = flat[0]
        ax.hist(self.vocab_cosines, bins=np.linspace(lo, hi, 61), alpha=0.7,
                label="key at position 0")
        for name, values in self.key_side.items():
            ax.hist(values[np.isfinite(values)], bins=np.linspace(lo, hi, 61), alpha=0.4,
                    histtype="stepfilled", label=f"{name} @ W_K")
        ax.set(xlim=(lo, hi), xlabel="cosine with query vector", ylabel="tokens",
               title=f"Vocabulary, each token alone\nx range {lo:.4f} to {hi:.4f}")
        ax.legend(fontsize=7)
        plo, phi = fitted_range(*self.position_cosines.values(),
                                [self.bos.get("key_position_0", np.nan)])
        for ax, (p, values) in zip(flat[1:], self.position_cosines.items(), strict=False):
            ax.hist(values, bins=np.linspace(plo, phi, 41), color="C1", alpha=0.8)
            if p == 0 and "key_position_0" in self.bos:
                ax.axvline(self.bos["key_position_0"], color="k", linestyle="--",
                           label="BOS key at 0")
                ax.legend(fontsize=7)
            ax.set(xlim=(plo, phi), xlabel="cosine with query vector", ylabel="sequences",
                   title=f"Key position {p} (mean {values.mean():.4f})\n"
                         f"x range {plo:.4f} to {phi:.4f}")
        for ax in flat[:n]:
            ax.xaxis.set_major_locator(MaxNLocator(5))
        for ax in flat[n:]:
            ax.set_visible(False)
        m = self.meta
        fig.suptitle(f"{m.get('model', '')}: head {m.get('layer')}.{m.get('head')}, "
                     f"query = {m.get('query')} (x axes fitted to the data)")
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
            raise LaminaError(f"{model.name} has no unembedding for query={query!r}.",
                              cli=f"{model.name} has no unembedding for --query {query}: use "
                              "--query bias or bias_folded.")
        tid = single_token(model, word, "query", "--query token:<word>")
        vec = unembed.weight.detach()[tid] @ hw.W_Q[head]
        label = f"unembedding of {word!r} through W_Q"
    elif not isinstance(query, str):
        try:
            v = torch.as_tensor(np.asarray(query, dtype=np.float64), dtype=hw.W_Q.dtype)
        except (TypeError, ValueError):
            raise LaminaError(f"A query must be 'bias', 'bias_folded', 'token:<word>' or a "
                              f"vector of numbers, not {type(query).__name__}.") from None
        if not torch.isfinite(v).all():
            raise LaminaError("The query vector has NaN or infinite entries.")
        if v.shape == (model.d_head,):
            vec, label = v, "user vector (head space)"
        elif v.shape == (model.d_model,):
            vec, label = v @ hw.W_Q[head], "user direction through W_Q"
        else:
            raise LaminaError(f"A query vector must have shape [{model.d_head}] or "
                              f"[{model.d_model}], not {tuple(v.shape)}.")
    else:
        raise LaminaError(f"Unknown query {query!r}: use 'bias', 'bias_folded', "
                          "'token:<word>', or a vector.",
                          cli=f"Unknown --query {query!r}: use bias, bias_folded or "
                          "token:<word>.")
    if float(vec.norm()) == 0:
        raise LaminaError(f"The query vector of head {layer}.{head} is zero (this model has no "
                          "query bias?): pass another query, e.g. query='token:the'.",
                          cli=f"The query vector of head {layer}.{head} is zero (this model has "
                          "no query bias?): pass another --query, e.g. --query token:the.")
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
        n_sequences, seq_len, seed: the random sequences (uniform over non-special tokens);
            at least two sequences (for a spread), ``1 <= seq_len <=`` the model's context.

    The key-side cosines use the effective embedding (``W_E``, ``W_EE``, ``mlp``,
    ``attn_mlp``) where it is defined (pre-LN blocks) and ``W_E`` alone otherwise;
    ``meta["key_side"]`` records which, and why.
    """
    check_int(n_sequences, "n_sequences", 2, option="--n-sequences",
                why=" (the spread of the cosines needs two sequences)")
    check_int(seq_len, "seq_len", 1, option="--seq-len")
    check_int(batch_size, "batch_size", 1)
    positions = tuple(positions)
    if not positions:
        raise LaminaError("positions is empty: give at least one key position.",
                          cli="Give at least one --position.")
    model = load(model)
    for name, value, n in (("layer", layer, model.n_layers), ("head", head, model.n_heads)):
        check_int(value, name, 0, option=f"--{name}")
        if value >= n:
            raise LaminaError(f"{name} must be in [0, {n}), not {value}: the model has {n} "
                              f"{name}s.", cli=f"--{name} must be in [0, {n}), not {value}: the "
                              f"model has {n} {name}s.")
    if model.max_length and seq_len > model.max_length:
        raise LaminaError(f"seq_len={seq_len} exceeds the model's context of "
                          f"{model.max_length} tokens.",
                          cli=f"--seq-len {seq_len} exceeds the model's context of "
                          f"{model.max_length} tokens.")
    if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < seq_len
           for p in positions):
        raise LaminaError(f"positions must lie in [0, seq_len={seq_len}): {list(positions)}.",
                          cli=f"Each --position must lie in [0, --seq-len {seq_len}): "
                          f"{list(positions)}.")
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
    try:
        parts, fallback = effective_embedding(model), None
    except LaminaError as err:
        parts, fallback = {"W_E": embedding_matrix(model)}, f"W_E only: {err}"
    key_meta: dict[str, Any] = {"matrices": list(parts), "fallback": fallback}
    W_K = hw.W_K[kvh].double()
    for name, matrix in parts.items():
        side = matrix.double() @ W_K
        nonzero = side.norm(dim=-1) > 0
        values = np.full(len(side), np.nan)  # a zero key has no cosine
        values[nonzero.numpy()] = cosine(side[nonzero], qvec).numpy()
        key_side[name] = values
        if not nonzero.all():
            key_meta[f"{name}_zero_rows"] = int((~nonzero).sum())
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
    order = np.argsort(vocab_cos)
    strings = model.token_strings(list(range(model.vocab_size)))
    vocab = {
        "mean": float(vocab_cos.mean()), "std": float(vocab_cos.std(ddof=1)),
        "min": float(vocab_cos.min()), "max": float(vocab_cos.max()),
        "lowest": [(strings[i], float(vocab_cos[i])) for i in order[:10]],
        "highest": [(strings[i], float(vocab_cos[i])) for i in order[::-1][:10]],
    }
    summary = {**{f"vocab_{k}": vocab[k] for k in ("mean", "std", "min", "max")},
               "mean_by_position": {p: float(v.mean()) for p, v in position_cos.items()}}
    return AlignmentResult(
        vocab_cos, position_cos, vocab, key_side, bos, summary=summary,
        meta=model.describe(layer=layer, head=head, query=qlabel, kv_head=kvh,
                            positions=list(positions), n_sequences=n_sequences,
                            seq_len=seq_len, seed=seed, vocab=vocab, bos=bos,
                            key_side=key_meta),
    )
