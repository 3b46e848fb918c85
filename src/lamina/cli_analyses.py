"""``lamina lens``, ``pathlength``, ``embeddings``, ``categories``, ``contexts``,
``alignment``: the analysis commands, registered on the app of :mod:`lamina.cli_common`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli_common import (
    FormatOpt,
    ModelOpt,
    OutOpt,
    SitesOpt,
    TextArg,
    TruncateOpt,
    _friendly,
    _readable,
    _save,
    _text,
    app,
)
from lamina.cli_format import (
    CATEGORY_COLUMNS,
    CONTEXT_COLUMNS,
    PATHLENGTH_COLUMNS,
    _old,
    number,
    renamed,
)
from lamina.cli_format import print_frame as _print_frame
from lamina.errors import LaminaError


@app.command()
@_friendly
def lens(
    text: TextArg,
    model: ModelOpt = "minilm",
    sublayers: Annotated[bool, typer.Option(help="Also read out after attention.")] = False,
    truncate: TruncateOpt = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Logit lens of one text: per layer, top token and the next token's probability and rank."""
    from lamina.analyses import lens as run

    result = run(model, _text(text), sublayers=sublayers, truncate=truncate)
    frame = result.to_frame()
    last = frame[frame["position"] == frame["position"].max() - 1]
    typer.echo(f"position {last['position'].iloc[0]}: {last['token'].iloc[0]!r}, next token "
               f"{last['next_token'].iloc[0]!r}")
    _print_frame(last, {"label": "layer", "top_token": "top_token", "top_prob": "top_prob",
                        "next_token_prob": "next_prob", "next_token_rank": "next_rank"})
    _save(result, out, figure_format)


@app.command()
@_friendly
def pathlength(
    text: TextArg,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model(s), repeatable.")],
    sites: Annotated[str, typer.Option(help="hidden or resid_post.")] = "hidden",
    truncate: TruncateOpt = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Per-token residual path length per layer, and its correlation with next-token logits."""
    from lamina.analyses import pathlength as run

    result = run({m: m for m in model}, _text(text), sites=sites, truncate=truncate)
    _print_frame(result.per_model, PATHLENGTH_COLUMNS, width=20)
    for note in result.notes():
        typer.echo(f"note: {note}")
    _save(result, out, figure_format)


@app.command()
@_friendly
def embeddings(
    model: ModelOpt = "minilm",
    tokens: Annotated[str | None, typer.Option(
        help="all (default), unused, special, re:<regex>, or comma-separated ids.")] = None,
    which: Annotated[str, typer.Option(help="input or output (a separate unembedding).")
                     ] = "input",
    bins: int = 200,
    topk: int = 10,
    duplicate_threshold: float = 0.999,
    probe: Annotated[str | None, typer.Option(help="Two words, comma-separated.")] = None,
    fast: Annotated[bool, typer.Option(help="bfloat16 products, exact top-k re-scoring.")
                    ] = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """All-to-all similarity of the embedding matrix over the whole vocabulary."""
    from lamina.analyses import embeddings as run

    token_spec: object = tokens
    if tokens and all(part.strip().isdigit() for part in tokens.split(",")):
        token_spec = [int(p) for p in tokens.split(",")]
    result = run(model, tokens=token_spec, which=which, bins=bins, topk=topk,
                 duplicate_threshold=duplicate_threshold, fast=fast,
                 probe=[w.strip() for w in probe.split(",")] if probe else None)
    s = result.summary
    for key in ("n_tokens", "n_pairs", "mean", "std", "min", "max", "n_unused",
                "unused_unique_values", "n_duplicate_groups"):
        value = s[key]
        typer.echo(f"{key:>22}: {number(value) if isinstance(value, float) else value}")
    _save(result, out, figure_format)


@app.command()
@_friendly
def categories(
    model: ModelOpt = "minilm",
    words: Annotated[Path | None, typer.Option(
        help="CSV with columns label,word (default: the notebook's space/furniture/fruit).")
    ] = None,
    template: Annotated[str | None, typer.Option(help="e.g. 'I saw the {word}'.")] = None,
    site: SitesOpt = None,
    pooling: Annotated[str | None, typer.Option(help="last or mean, for multi-token words.")
                       ] = None,
    permutations: int = 1000,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Within- vs across-category cosine similarity per layer (t, Welch, d, permutation p)."""
    from lamina.analyses import categories as run

    if words:
        _readable(words, "--words")
    result = run(model, str(words) if words else None, template=template,
                 sites=site or ["hidden.*"], pooling=pooling, permutations=permutations)
    _print_frame(result.to_frame(), CATEGORY_COLUMNS)
    for note in result.summary["notes"]:
        typer.echo(f"note: {note}")
    _save(result, out, figure_format)


@app.command()
@_friendly
def contexts(
    target: Annotated[list[str], typer.Option("--target", help="Target word (repeatable).")],
    text_file: Annotated[Path | None, typer.Option(
        "--text-file", help="Running text (a UTF-8 file) to search for the targets.")] = None,
    corpus: Annotated[Path | None, _old("--corpus")] = None,
    model: ModelOpt = "minilm",
    window: int = 50,
    max_per_target: int = 1000,
    seed: int = 0,
    site: SitesOpt = None,
    permutations: int = 0,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Same word in different contexts: within- vs across-word similarity per layer."""
    from lamina.analyses import contexts as run

    text_file, option = renamed(text_file, corpus, "--text-file", "--corpus")
    if text_file is None:
        raise LaminaError("Missing option '--text-file' (running text to search).")
    _readable(text_file, option)
    result = run(model, text_file, target, window=window, max_per_target=max_per_target,
                 seed=seed, sites=site or ["hidden.*"], permutations=permutations)
    _print_frame(result.counts)
    _print_frame(result.to_frame(), CATEGORY_COLUMNS if permutations else CONTEXT_COLUMNS)
    for note in result.summary["notes"]:
        typer.echo(f"note: {note}")
    _save(result, out, figure_format)


@app.command()
@_friendly
def alignment(
    layer: Annotated[int, typer.Option(help="Block of the head.")],
    head: Annotated[int, typer.Option(help="Head index.")],
    model: ModelOpt = "minilm",
    query: Annotated[str, typer.Option(help="bias, bias_folded or token:<word>.")] = "bias",
    position: Annotated[list[int] | None, typer.Option(help="Key positions (repeatable).")] = None,
    n_sequences: int = 2500,
    seq_len: int = 40,
    seed: int = 0,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Cosine of a head's query bias with the keys of every token and of every position."""
    from lamina.analyses import alignment as run

    positions = tuple(position or [p for p in (0, 9, 19, 39) if p < seq_len])
    result = run(model, layer, head, query=query, positions=positions,
                 n_sequences=n_sequences, seq_len=seq_len, seed=seed)
    v = result.vocab
    typer.echo(f"query: {result.meta['query']}\nvocabulary, each token alone at position 0: "
               f"mean {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f})")
    side = result.meta["key_side"]
    typer.echo(f"key side: {side['fallback'] or ', '.join(side['matrices'])}")
    _print_frame(result.by_position())
    _save(result, out, figure_format)
