"""Logit lens: every layer's residual stream read out through the model's own final norm and
unembedding (the norm's statistics recomputed from each layer's vector), as the first seed
study's heat map shows. The last row is the model's own output distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.errors import ContextLengthError, LaminaError
from lamina.models import Model, load
from lamina.plotting import token_label
from lamina.readout import final_norm, logits_from_resid, unembedding
from lamina.results import Result


@dataclass
class LensResult(Result):
    """One row per layer and position: ``layer`` (0 = embeddings), ``label``, ``position``,
    ``token``, ``next_token``, ``top_token``, ``top_prob``, ``next_token_prob`` and
    ``next_token_rank`` (1 = the model's top choice; empty at the last position)."""

    table: pd.DataFrame
    name = "lens"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, *, annotate: bool | None = None, **kwargs: Any) -> Any:
        import matplotlib.pyplot as plt

        t = self.table
        layers = t.drop_duplicates("layer")[["layer", "label"]]
        n_pos = int(t["position"].max()) + 1
        prob = t.pivot(index="layer", columns="position", values="top_prob").to_numpy()
        tops = t.pivot(index="layer", columns="position", values="top_token").to_numpy()
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * n_pos + 2), 0.45 * len(layers) + 2))
        im = ax.imshow(prob, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        if annotate if annotate is not None else n_pos <= 48:
            for i in range(prob.shape[0]):
                for j in range(n_pos):
                    ax.text(j, i, token_label(tops[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if prob[i, j] < 0.6 else "black")
        first = t[t["layer"] == t["layer"].min()].sort_values("position")
        ax.set_xticks(range(n_pos), [token_label(s) for s in first["token"]], fontsize=7)
        ax.set_yticks(range(len(layers)), list(layers["label"]))
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(n_pos), [token_label(s) if isinstance(s, str) else ""
                                      for s in first["next_token"]], fontsize=7)
        top.set_xlabel("correct next token")
        ax.set(xlabel="input token", ylabel="layer read out",
               title=f"Logit lens: top-1 token and its probability ({self.meta.get('model', '')})")
        fig.colorbar(im, ax=ax, pad=0.01, label="top-1 probability")
        fig.tight_layout()
        return fig


def _sites(model: Model, sublayers: bool) -> list[tuple[str, str]]:
    """(label, site) of the residual points read out, in order."""
    points = [("embed", "hidden.0")]
    for L in range(model.n_layers):
        if sublayers and f"blocks.{L}.hook_resid_mid" in model.sites:
            points.append((f"{L} attn", f"blocks.{L}.hook_resid_mid"))
        points.append((f"{L} mlp" if sublayers else f"block {L}", f"blocks.{L}.hook_resid_post"))
    return points


def text_ids(model: Model, text: str | list[int], *, truncate: bool = False) -> list[int]:
    """Token ids of the one ``text`` that :func:`lens` or :func:`~lamina.analyses.pathlength`
    reads: refuses an empty text, and a text longer than the context unless ``truncate``."""
    if isinstance(text, str) and not text.strip():
        raise LaminaError("The text is empty: give a text to read.",
                          cli="The text is empty: give one with --text (or --text @file).")
    if not isinstance(text, str) and hasattr(text, "__len__") and len(text) == 0:
        raise LaminaError("The text is an empty list of token ids: give at least one token.")
    try:
        return model.to_tokens([text], truncate=truncate)[0]
    except ContextLengthError:
        n = len(model.tokenizer(text)["input_ids"]) if isinstance(text, str) else len(text)
        what = (f"The text is {n} tokens, longer than the model's context of "
                f"{model.max_length}: shorten it, or ")
        raise ContextLengthError(what + "pass truncate=True to read its first tokens.",
                                 cli=what + "pass --truncate to read its first tokens."
                                 ) from None


def lens(model: Model | str, text: str | list[int], *, sublayers: bool = False,
         truncate: bool = False) -> LensResult:
    """Logit lens of one text.

    Args:
        model: a causal LM (:class:`Model` or anything :func:`lamina.load` accepts); a model
            without a final norm and unembedding (an encoder) is refused.
        text: a string or token ids, at least two tokens.
        sublayers: also read out after each block's attention (``resid_mid``), the finer
            variant of the seed study (not available for parallel-attention blocks).
        truncate: read the first tokens of a text longer than the context instead of raising.
    """
    model = load(model)
    final_norm(model), unembedding(model)  # refuse a model without a read-out first
    ids = text_ids(model, text, truncate=truncate)
    if len(ids) < 2:
        raise LaminaError(f"The text is one token ({model.token_strings(ids)[0]!r}): the lens "
                          "compares each position's read-out with the next token, so give at "
                          "least two.")
    points = _sites(model, sublayers)
    acts = model.collect([ids], [s for _, s in points], positions="all")
    n = len(ids)
    tokens = acts.token_strings[0]
    rows = []
    for layer, (label, site) in enumerate(points):
        logits = logits_from_resid(model, acts[site][0, :n])  # [n, vocab]
        probs = torch.softmax(logits.double(), dim=-1)
        top_prob, top_id = probs.max(dim=-1)
        for pos in range(n):
            nxt = ids[pos + 1] if pos + 1 < n else None
            p_next = float(probs[pos, nxt]) if nxt is not None else np.nan
            rows.append({
                "layer": layer, "label": label, "site": site, "position": pos,
                "token": tokens[pos],
                "next_token": tokens[pos + 1] if nxt is not None else None,
                "top_token": model.token_strings([int(top_id[pos])])[0],
                "top_prob": float(top_prob[pos]), "next_token_prob": p_next,
                "next_token_rank": int((probs[pos] > probs[pos, nxt]).sum()) + 1
                if nxt is not None else pd.NA,
            })
    table = pd.DataFrame(rows)
    table["next_token_rank"] = table["next_token_rank"].astype("Int64")
    final = table[table["layer"] == len(points) - 1]
    summary = {
        "n_tokens": n,
        "final_layer_top1_accuracy": float((final["next_token_rank"].dropna() == 1).mean()),
        "mean_next_token_prob_by_layer": table.groupby("layer")["next_token_prob"].mean()
        .tolist(),
    }
    return LensResult(table, summary=summary,
                      meta=model.describe(text=text if isinstance(text, str) else None,
                                          sublayers=sublayers))
