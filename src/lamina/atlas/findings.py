"""Finding sentences of the model-card and norms sections: small pure functions from numbers
to sentences (each tested with given numbers). Other sections keep theirs in their modules."""

from __future__ import annotations

from typing import Any


def count(n: int) -> str:
    """A parameter count for prose: ``1234`` -> ``"1.23k"``, ``22_713_216`` -> ``"22.7M"``."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def modelcard_findings(s: dict[str, Any]) -> list[str]:
    """One sentence describing the model from its card's numbers."""
    kind = "causal" if s["causal"] else "bidirectional"
    family = s.get("family") or "unrecognised-family"
    ctx = (f"a context of {s['max_length']:,} tokens" if s.get("max_length")
           else "no stated context length")
    share = ""
    if s.get("n_parameters") and s.get("embedding_parameters") is not None:
        pct = 100 * s["embedding_parameters"] / s["n_parameters"]
        share = f" ({pct:.0f}% in the token embedding)"
    return [
        f"{s['name']} is a {kind} {family} model: {s['n_layers']} layers of width "
        f"{s['d_model']} ({s['n_heads']} heads of {s['d_head']}), "
        f"{count(s['n_parameters'])} parameters{share}, a {s['vocab_size']:,}-token vocabulary "
        f"and {ctx}."
    ]


def norms_findings(s: dict[str, Any]) -> list[str]:
    """The cosine-vs-Euclidean verdict, where the norms peak, and the hidden-state growth."""
    verdict = (
        "cosine similarity, not Euclidean distance, is the fair comparison here"
        if s["prefer_cosine"] else
        "norms are nearly constant, so cosine and Euclidean distance rank pairs alike")
    out = [
        f"Mean norms vary {s['max_layer_ratio']:.2f}x across layers and their coefficient of "
        f"variation reaches {s['max_cv']:.2f} within a layer: {verdict}."
    ]
    if s.get("peak_site") is not None:
        out.append(f"The largest mean norm, {s['peak_mean_norm']:.4g}, is at {s['peak_site']}.")
    first, last = s.get("hidden_first_mean_norm"), s.get("hidden_last_mean_norm")
    if first is not None and last is not None and first > 0:
        out.append(f"Hidden-state norms go from {first:.4g} at the embedding output to "
                   f"{last:.4g} after the last layer ({last / first:.2f}x).")
    return out
