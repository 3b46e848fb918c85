"""The ``lamina`` command line: a thin layer over the same public functions a notebook calls.

Every command takes ``--model`` (a built-in name, a local directory or a hub id) and writes
its tables, figures and ``summary.json`` to ``--out`` when given.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

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


def _check_out(out: Path | None) -> Path | None:
    """Refuse an --out directory that cannot be written (an existing file, a read-only parent,
    a non-empty directory that is no previous output), before the command does any work."""
    if out is not None:
        from lamina.outputs import check_output_dir

        try:
            check_output_dir(out, option="--out", marker="summary.json")
        except LaminaError as err:
            fail(err.cli_message)
    return out


OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Directory for the outputs (replaced as a whole).", callback=_check_out)]
TruncateOpt = Annotated[bool, typer.Option(
    help="Cut a text longer than the model's context to its first tokens (with a warning).")]
LinesOpt = Annotated[
    Path | None, typer.Option("--lines", help="Text file, one input per line.")
]

def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn lamina's input errors into a one-line message (in the CLI's words) and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if writes_out:
                from lamina.results import check_formats

                _FORMATS[0] = check_formats(kwargs.pop("figure_format", None) or ["png"])
            return fn(*args, **kwargs)
        except LaminaError as err:
            fail(err.cli_message)

    writes_out = fn.__annotations__.get("out") in ("OutOpt", OutOpt)
    if writes_out:  # a command that writes --out also takes --format (read by _save)
        sig = inspect.signature(fn, eval_str=True)
        extra = inspect.Parameter("figure_format", inspect.Parameter.KEYWORD_ONLY,
                                  default=None, annotation=FormatOpt)
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*sig.parameters.values(), extra])
    return wrapper


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with code 2."""
    typer.secho("error: " + " ".join(str(message).split()), fg="red", err=True)
    raise typer.Exit(2)


def _positions(value: str) -> str | int:
    """A --positions option: 'last', 'first', 'all' or an int."""
    return int(value) if value.lstrip("-").isdigit() else value


FormatOpt = Annotated[list[str] | None, typer.Option(
    "--format", help="Figure format with --out: png, svg or pdf (repeatable; default png).")]
_FORMATS: list[tuple[str, ...]] = [("png",)]  # this run's --format, set by _friendly


def _save(result: Any, out: Path | None) -> None:
    """Write a result's tables, figures (in each --format) and summary.json when --out was
    given."""
    if out:
        typer.echo(f"wrote {result.save(out, formats=_FORMATS[0])}")


@app.command()
@_friendly
def sites(
    model: ModelOpt = "minilm",
    modules: Annotated[bool, typer.Option(
        help="List every submodule path instead (capture one with --site module:PATH).")
    ] = False,
) -> None:
    """List the model's canonical site names, each with its shape for one position per text
    (``[n, d_model]``, or ``[n, heads, d_head]`` per head)."""
    import lamina
    from lamina.sites import site_shape

    m = lamina.load(model)
    typer.echo(repr(m))
    if modules:
        for name, module in m.hf_model.named_modules():
            if name:
                typer.echo(f"module:{name}  ({type(module).__name__})")
        return
    width = max(map(len, m.sites))
    for name in m.sites:
        shape = ", ".join(map(str, ("n", *site_shape(name, m.dims))))
        typer.echo(f"{name:<{width}}  [{shape}]")


@app.command()
@_friendly
def norms(
    model: ModelOpt = "minilm",
    lines: LinesOpt = None,
    texts: Annotated[Path | None, _old("--texts")] = None,
    site: SitesOpt = None,
    positions: Annotated[str, typer.Option(help="last, first, all or an int.")] = "last",
    store: Annotated[Path | None, typer.Option(
        help="Measure every row of this activation store instead (no model run).")] = None,
    partial: Annotated[bool, typer.Option(
        help="With --store: measure the rows of an unfinished collect.")] = False,
    truncate: TruncateOpt = False,
    out: OutOpt = None,
) -> None:
    """Per-layer table of activation norms (mean, std, CV) and whether cosine is preferable."""
    import lamina
    from lamina.analyses import norms as run
    from lamina.analyses.norms import norms_of
    from lamina.corpus import read_lines
    from lamina.store import open as open_store

    lines, option = renamed(lines, texts, "--lines", "--texts")
    if store is not None:
        result = norms_of(open_store(store), allow_partial=partial)
        if result.meta["partial"]:
            typer.echo(f"note: partial store: {result.meta['n_committed']:,} of "
                       f"{result.meta['n_rows']:,} rows (its collect has not finished)")
    else:
        result = run(
            lamina.load(model),
            read_lines(lines, option=option) if lines else None,
            sites=site or ["hidden.*"],
            positions=_positions(positions),
            truncate=truncate,
        )
    _print_frame(result.to_frame(), ["site", "layer", "n", "mean_norm", "std_norm", "cv"])
    typer.echo("\n" + result.summary["conclusion"])
    _save(result, out)


@app.command()
@_friendly
def capture(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    lines: LinesOpt = None,
    texts: Annotated[Path | None, _old("--texts")] = None,
    model: ModelOpt = "minilm",
    site: SitesOpt = None,
    positions: str = "last",
    batch_size: int = 32,
    dtype: str = "float32",
    truncate: TruncateOpt = False,
) -> None:
    """Capture sites for the lines of a text file into one safetensors file."""
    import lamina
    from lamina.activations import safetensors_path
    from lamina.corpus import read_lines
    from lamina.inputs import check_batch_size, check_positions
    from lamina.loading import parse_dtype
    from lamina.outputs import check_output_file

    lines, option = renamed(lines, texts, "--lines", "--texts")
    if lines is None:
        raise LaminaError("Missing option '--lines' (a text file, one input per line).")
    path = check_output_file(safetensors_path(out), option="--out")  # all checked before work
    inputs = read_lines(lines, option=option)
    chosen = _positions(positions)
    check_positions(chosen)
    check_batch_size(batch_size)
    parse_dtype(dtype)
    acts = lamina.load(model).collect(
        inputs, site or ["hidden.*"], positions=chosen, truncate=truncate,
        batch_size=batch_size, dtype=dtype, progress=True,
    )
    typer.echo(f"{acts!r}\nwrote {acts.save(path)}")


TextArg = Annotated[str, typer.Option("--text", "-t", help="The text (or @file to read one).")]


def _readable(path: Path, option: str) -> None:
    """Refuse a missing, unreadable or non-UTF-8 input file in one line, before any work."""
    from lamina.corpus import read_text_file

    read_text_file(path, option=option)


def _text(value: str) -> str:
    """A --text option: the text, or the contents of a UTF-8 file given as ``@file``."""
    if value.startswith("@"):
        from lamina.corpus import read_text_file

        return read_text_file(value[1:], option="--text")
    return value


@app.command()
@_friendly
def lens(
    text: TextArg,
    model: ModelOpt = "minilm",
    sublayers: Annotated[bool, typer.Option(help="Also read out after attention.")] = False,
    truncate: TruncateOpt = False,
    out: OutOpt = None,
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
    _save(result, out)


@app.command()
@_friendly
def pathlength(
    text: TextArg,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model(s), repeatable.")],
    sites: Annotated[str, typer.Option(help="hidden or resid_post.")] = "hidden",
    truncate: TruncateOpt = False,
    out: OutOpt = None,
) -> None:
    """Per-token residual path length per layer, and its correlation with next-token logits."""
    from lamina.analyses import pathlength as run

    result = run({m: m for m in model}, _text(text), sites=sites, truncate=truncate)
    _print_frame(result.summary, PATHLENGTH_COLUMNS, width=20)
    for note in result.notes():
        typer.echo(f"note: {note}")
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
        value = s[key]
        typer.echo(f"{key:>22}: {number(value) if isinstance(value, float) else value}")
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

    if words:
        _readable(words, "--words")
    result = run(model, str(words) if words else None, template=template,
                 sites=site or ["hidden.*"], pooling=pooling, permutations=permutations)
    _print_frame(result.to_frame(), CATEGORY_COLUMNS)
    for note in result.summary["notes"]:
        typer.echo(f"note: {note}")
    _save(result, out)


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
    side = result.meta["key_side"]
    typer.echo(f"key side: {side['fallback'] or ', '.join(side['matrices'])}")
    _print_frame(result.summary)
    _save(result, out)


from lamina import cli_report, cli_store, cli_train  # noqa: E402,F401,I001  (register their commands)


def _click_exceptions() -> Any:
    try:  # typer >= 0.20 ships its own copy of click
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Run the ``lamina`` command line. Usage errors (an unknown option, a value of the wrong
    type) are one line and exit code 2, like lamina's own input errors; Ctrl-C exits 130."""
    exc = _click_exceptions()
    try:
        code = app(args=argv, prog_name="lamina", standalone_mode=False)
    except exc.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else "lamina --help")
        return 2
    except exc.UsageError as err:
        hint = f" See `{err.ctx.command_path} --help`." if err.ctx else ""
        typer.secho("error: " + " ".join(err.format_message().split()).rstrip(".") + "." + hint,
                    fg="red", err=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        typer.secho("error: interrupted.", fg="red", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
