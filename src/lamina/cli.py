"""The ``lamina`` command line: a thin layer over the same public functions a notebook calls.

Every command takes ``--model`` (a built-in name, a local directory or a hub id) and writes
its tables, figures and ``summary.json`` to ``--out`` when given.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.errors import LaminaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lamina: layer-by-layer cosine geometry of transformer representations.",
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Built-in name, directory or hub id.")]
SitesOpt = Annotated[
    list[str] | None,
    typer.Option("--site", "-s", help="Site name, glob or short form (repeatable)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the outputs.")]
TextsOpt = Annotated[
    Path | None, typer.Option("--texts", help="Text file, one input per line.")
]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn lamina's input errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LaminaError as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _print_frame(frame: Any, columns: list[str] | None = None) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", 200, "display.width", 120,
                           "display.float_format", "{:.4f}".format):
        typer.echo(frame[columns] if columns else frame)


def _positions(value: str) -> str | int:
    """A --positions option: 'last', 'first', 'all' or an int."""
    return int(value) if value.lstrip("-").isdigit() else value


def _save(result: Any, out: Path | None) -> None:
    """Write a result's tables, figures and summary.json when --out was given."""
    if out:
        typer.echo(f"wrote {result.save(out)}")


@app.command()
@_friendly
def sites(model: ModelOpt = "minilm") -> None:
    """List the model's canonical site names and its shape facts."""
    import lamina

    m = lamina.load(model)
    typer.echo(repr(m))
    for name in m.sites:
        typer.echo(name)


@app.command()
@_friendly
def norms(
    model: ModelOpt = "minilm",
    texts: TextsOpt = None,
    site: SitesOpt = None,
    positions: Annotated[str, typer.Option(help="last, first, all or an int.")] = "last",
    store: Annotated[Path | None, typer.Option(
        help="Measure every row of this activation store instead (no model run).")] = None,
    out: OutOpt = None,
) -> None:
    """Per-layer table of activation norms (mean, std, CV) and whether cosine is preferable."""
    import lamina
    from lamina.analyses import norms as run
    from lamina.analyses.norms import norms_of
    from lamina.corpus import read_lines
    from lamina.store import open as open_store

    if store is not None:
        result = norms_of(open_store(store))
    else:
        result = run(
            lamina.load(model),
            read_lines(texts) if texts else None,
            sites=site or ["hidden.*"],
            positions=_positions(positions),
        )
    _print_frame(result.to_frame(), ["site", "layer", "n", "mean_norm", "std_norm", "cv"])
    typer.echo("\n" + result.summary["conclusion"])
    _save(result, out)


@app.command()
@_friendly
def capture(
    texts: Annotated[Path, typer.Option("--texts", help="Text file, one input per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    model: ModelOpt = "minilm",
    site: SitesOpt = None,
    positions: str = "last",
    batch_size: int = 32,
    dtype: str = "float32",
) -> None:
    """Capture sites for the lines of a text file into one safetensors file."""
    import lamina
    from lamina.corpus import read_lines

    acts = lamina.load(model).collect(
        read_lines(texts), site or ["hidden.*"],
        positions=_positions(positions),
        batch_size=batch_size, dtype=dtype, progress=True,
    )
    typer.echo(f"{acts!r}\nwrote {acts.save(out)}")


TextArg = Annotated[str, typer.Option("--text", "-t", help="The text (or @file to read one).")]


def _text(value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise LaminaError(f"No such text file: {path}.")
        return path.read_text("utf-8")
    return value


@app.command()
@_friendly
def lens(
    text: TextArg,
    model: ModelOpt = "minilm",
    sublayers: Annotated[bool, typer.Option(help="Also read out after attention.")] = False,
    out: OutOpt = None,
) -> None:
    """Logit lens of one text: per layer, top token and the next token's probability and rank."""
    from lamina.analyses import lens as run

    result = run(model, _text(text), sublayers=sublayers)
    frame = result.to_frame()
    last = frame[frame["position"] == frame["position"].max() - 1]
    _print_frame(last, ["label", "token", "next_token", "top_token", "top_prob",
                        "next_token_prob", "next_token_rank"])
    _save(result, out)


@app.command()
@_friendly
def pathlength(
    text: TextArg,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model(s), repeatable.")],
    sites: Annotated[str, typer.Option(help="hidden or resid_post.")] = "hidden",
    out: OutOpt = None,
) -> None:
    """Per-token residual path length per layer, and its correlation with next-token logits."""
    from lamina.analyses import pathlength as run

    result = run({m: m for m in model}, _text(text), sites=sites)
    _print_frame(result.summary)
    _save(result, out)


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
        typer.echo(f"{key:>22}: {s[key]}")
    _save(result, out)


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
) -> None:
    """Within- vs across-category cosine similarity per layer (t, Welch, d, permutation p)."""
    from lamina.analyses import categories as run

    result = run(model, str(words) if words else None, template=template,
                 sites=site or ["hidden.*"], pooling=pooling, permutations=permutations)
    _print_frame(result.to_frame(), ["site", "within_mean", "across_mean", "delta", "t",
                                     "t_welch", "cohens_d", "p_permutation", "centred_delta",
                                     "baseline_mean"])
    _save(result, out)


@app.command()
@_friendly
def contexts(
    corpus: Annotated[Path, typer.Option(help="Text file to search.")],
    target: Annotated[list[str], typer.Option("--target", help="Target word (repeatable).")],
    model: ModelOpt = "minilm",
    window: int = 50,
    max_per_target: int = 1000,
    seed: int = 0,
    site: SitesOpt = None,
    permutations: int = 0,
    out: OutOpt = None,
) -> None:
    """Same word in different contexts: within- vs across-word similarity per layer."""
    from lamina.analyses import contexts as run

    if not corpus.is_file():
        raise LaminaError(f"No such corpus file: {corpus}.")
    result = run(model, corpus, target, window=window, max_per_target=max_per_target,
                 seed=seed, sites=site or ["hidden.*"], permutations=permutations)
    _print_frame(result.counts)
    _print_frame(result.to_frame(), ["site", "within_mean", "across_mean", "delta", "t",
                                     "cohens_d", "centred_delta", "baseline_mean"])
    _save(result, out)


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
) -> None:
    """Cosine of a head's query bias with the keys of every token and of every position."""
    from lamina.analyses import alignment as run

    positions = tuple(position or [p for p in (0, 9, 19, 39) if p < seq_len])
    result = run(model, layer, head, query=query, positions=positions,
                 n_sequences=n_sequences, seq_len=seq_len, seed=seed)
    v = result.vocab
    typer.echo(f"query: {result.meta['query']}\nvocabulary, each token alone at position 0: "
               f"mean {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f})")
    _print_frame(result.summary)
    _save(result, out)


@app.command()
@_friendly
def train(
    corpus: Annotated[Path, typer.Option("--corpus", help="Training text file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    preset: Annotated[str, typer.Option(help="seed (the notebook's model), small, tiny.")] = "seed",
    steps: Annotated[int | None, typer.Option(help="Override the preset's steps.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: auto).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 1337).")] = None,
) -> None:
    """Train (or resume) a character-level GPT-2; writes a Hugging Face model directory."""
    from lamina.train import train_char_lm

    if not corpus.is_file():
        raise LaminaError(f"No such corpus file: {corpus}.")
    command = f"lamina train --corpus {corpus} --out {out} --preset {preset}" + "".join(
        f" --{k} {v}" for k, v in {"steps": steps, "device": device, "seed": seed}.items()
        if v is not None)
    result = train_char_lm(corpus, out, preset=preset, steps=steps, device=device, seed=seed,
                           command=command)
    typer.echo(f"train loss {result.train_loss:.4f}, validation loss {result.val_loss:.4f}, "
               f"{result.n_params:,} parameters; wrote {result.path}")


@app.command()
@_friendly
def generate(
    model: ModelOpt = "shakespeare-char",
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "ROMEO:",
    n: Annotated[int, typer.Option("-n", help="Tokens to generate.")] = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> None:
    """Sample a continuation of a prompt (seeded, with temperature)."""
    from lamina.sampling import generate as run

    typer.echo(run(model, prompt, n, temperature=temperature, top_k=top_k, seed=seed))


from lamina import cli_store  # noqa: E402,F401  (registers collect, similar, approximate)


def main() -> None:
    app(prog_name="lamina")


if __name__ == "__main__":
    sys.exit(main())
