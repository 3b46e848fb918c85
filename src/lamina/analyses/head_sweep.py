"""Head sweep: for every attention head, how strongly does its query bias separate the key at
position 0 from keys at later positions? (The seed's head-10.7 finding, found rather than
assumed.)

Random sequences (uniform over non-special tokens, drawn exactly as
:func:`lamina.analyses.alignment` draws them, so a head's numbers here equal that analysis'
for the same ``n_sequences``, ``seq_len`` and ``seed``) are run through the model once, with
every layer's keys captured in the same pass; each head's query vector is then compared with
its keys at every position. ``gap`` is the mean cosine at position 0 minus the mean over the
later positions; heads are ranked by ``|gap|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.checks import check_int
from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.results import Result
from lamina.weights import folded_query_bias, head_weights


@dataclass
class HeadSweepResult(Result):
    """``to_frame()``: one row per head, strongest first (``rank``, ``layer``, ``head``,
    ``kv_head``, ``query_norm``, ``mean_position_0``, ``mean_later``, ``std_later``, ``gap``,
    ``effect``: gap / std of the later positions' cosines). Heads whose query vector is zero
    are kept with empty figures and no rank. ``position_means``: ``[n_rows, seq_len]`` mean
    cosine per position, rows as in ``to_frame()``."""

    table: pd.DataFrame
    position_means: np.ndarray = field(repr=False)
    name = "head_sweep"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, **kwargs: Any) -> Any:
        """Heat map of the gap, layer x head (shared colour scale centred on 0)."""
        import matplotlib.pyplot as plt

        t = self.table
        grid = t.pivot(index="layer", columns="head", values="gap")
        vmax = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.notna().any().any() else 1.0
        fig, ax = plt.subplots(figsize=(max(4, 0.4 * grid.shape[1] + 2),
                                        max(3, 0.35 * grid.shape[0] + 1.5)))
        im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="RdBu_r",
                       vmin=-vmax, vmax=vmax)
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(L) for L in grid.index])
        ax.set(xlabel="head", ylabel="layer",
               title=f"Query {self.meta.get('query', 'bias')}: cosine with keys at position 0 "
                     "minus later positions")
        fig.colorbar(im, ax=ax, pad=0.02, label="gap")
        fig.tight_layout()
        return fig


def _heads(model: Model, heads: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Every head, or the given ``(layer, head)`` pairs checked against the model."""
    if heads is None:
        return [(L, h) for L in range(model.n_layers) for h in range(model.n_heads)]
    out = []
    for pair in heads:
        try:
            layer, head = pair
        except (TypeError, ValueError):
            raise LaminaError(f"heads must be (layer, head) pairs, not {pair!r}.") from None
        for name, value, n in (("layer", layer, model.n_layers), ("head", head, model.n_heads)):
            check_int(value, name, 0)
            if value >= n:
                raise LaminaError(f"Head {layer}.{head}: {name} must be in [0, {n}), the model "
                                  f"has {n} {name}s.")
        out.append((int(layer), int(head)))
    if not out:
        raise LaminaError("heads is empty: give at least one (layer, head) pair, or None for "
                          "every head.")
    return sorted(set(out))


def random_sequences(model: Model, n_sequences: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[n_sequences, seq_len]`` token ids uniform over non-special tokens, as
    :func:`lamina.analyses.alignment` draws them."""
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    pool = torch.tensor([t for t in range(model.vocab_size) if t not in special])
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randint(len(pool), (n_sequences, seq_len), generator=gen)]


def query_vectors(model: Model, layer: int, query: str) -> torch.Tensor:
    """``[n_heads, d_head]``: every head's raw (``"bias"``) or folded (``"bias_folded"``)
    query bias of ``layer``."""
    if query == "bias":
        return head_weights(model, layer).b_Q.detach().double()
    if query == "bias_folded":
        return folded_query_bias(model, layer).detach().double()
    raise LaminaError(f"query must be 'bias' or 'bias_folded', not {query!r}.")


def head_sweep(model: Model | str, heads: Sequence[tuple[int, int]] | None = None, *,
               query: str = "bias", n_sequences: int = 500, seq_len: int = 40, seed: int = 0,
               batch_size: int = 128) -> HeadSweepResult:
    """Rank attention heads by how strongly their query vector separates position 0's key.

    Args:
        model: any model lamina loads (of a known architecture family).
        heads: ``(layer, head)`` pairs, or ``None`` for every head.
        query: ``"bias"`` (raw ``b_Q``) or ``"bias_folded"`` (``b_Q + ln1.bias @ W_Q``).
        n_sequences, seq_len, seed: the random sequences (at least 2 sequences, at least 2
            positions, at most the model's context).
        batch_size: sequences per forward pass.
    """
    check_int(n_sequences, "n_sequences", 2, option="--n-sequences")
    check_int(seq_len, "seq_len", 2, why=" (position 0 and at least one later position)")
    check_int(batch_size, "batch_size", 1)
    if query not in ("bias", "bias_folded"):
        raise LaminaError(f"query must be 'bias' or 'bias_folded', not {query!r}.")
    model = load(model)
    if model.architecture is None:
        raise LaminaError(f"{model.name} has no known architecture family: its heads are unknown.")
    if model.max_length and seq_len > model.max_length:
        raise LaminaError(f"seq_len={seq_len} exceeds the model's context of "
                          f"{model.max_length} tokens.")
    pairs = _heads(model, heads)
    layers = sorted({L for L, _ in pairs})
    sites = [f"blocks.{L}.attn.hook_k" for L in layers]
    seqs = random_sequences(model, n_sequences, seq_len, seed)
    acts = model.collect(seqs, sites, positions="all", batch_size=batch_size)
    rows, means = [], []
    for L in layers:
        keys = acts[f"blocks.{L}.attn.hook_k"][:, :seq_len].double()  # [n, T, kv, d_head]
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        qs = query_vectors(model, L, query)
        hw = head_weights(model, L)
        for layer, head in (p for p in pairs if p[0] == L):
            q = qs[head]
            kvh = hw.kv_head(head)
            norm = float(q.norm())
            row: dict[str, Any] = {"layer": layer, "head": head, "kv_head": kvh,
                                   "query_norm": norm}
            if norm == 0:
                means.append(np.full(seq_len, np.nan))
                rows.append({**row, "mean_position_0": np.nan, "mean_later": np.nan,
                             "std_later": np.nan, "gap": np.nan, "effect": np.nan})
                continue
            cos = (keys[:, :, kvh] @ (q / q.norm())).numpy()  # [n, T]
            later = cos[:, 1:].ravel()
            m0, ml, sl = float(cos[:, 0].mean()), float(later.mean()), float(later.std(ddof=1))
            means.append(cos.mean(0))
            rows.append({**row, "mean_position_0": m0, "mean_later": ml, "std_later": sl,
                         "gap": m0 - ml, "effect": (m0 - ml) / sl if sl > 0 else np.nan})
    table = pd.DataFrame(rows)
    order = np.argsort(-np.nan_to_num(table["gap"].abs().to_numpy(), nan=-1.0), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    ranked = table["gap"].notna()
    table.insert(0, "rank", pd.array(np.where(ranked, np.cumsum(ranked), 0), dtype="Int64"))
    table.loc[~ranked, "rank"] = pd.NA
    position_means = np.stack(means)[order]
    top = table[ranked].head(1)
    summary = {
        "n_heads": len(table), "n_zero_query": int((~ranked).sum()),
        "top_head": None if top.empty else [int(top["layer"].iloc[0]), int(top["head"].iloc[0])],
        "top_gap": None if top.empty else float(top["gap"].iloc[0]),
        "top_mean_position_0": None if top.empty else float(top["mean_position_0"].iloc[0]),
        "top_mean_later": None if top.empty else float(top["mean_later"].iloc[0]),
    }
    return HeadSweepResult(
        table, position_means, summary=summary,
        meta=model.describe(query=query, n_sequences=n_sequences, seq_len=seq_len, seed=seed,
                            heads="all" if heads is None else [list(p) for p in pairs]),
    )
