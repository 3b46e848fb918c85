"""The ``lamina`` command line: a thin layer over the same public functions a notebook calls.

Every command takes ``--model`` (a built-in name, a local directory or a hub id) and writes
its tables, figures and ``summary.json`` to ``--out`` when given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli_common import (  # noqa: F401  (app and the options, for lamina.cli users)
    FormatOpt,
    LinesOpt,
    ModelOpt,
    OutOpt,
    SitesOpt,
    TruncateOpt,
    _friendly,
    _positions,
    _readable,
    _save,
    app,
    fail,
)
from lamina.cli_format import _old, renamed
from lamina.cli_format import print_frame as _print_frame
from lamina.errors import LaminaError


@app.command()
@_friendly
def sites(
    model: ModelOpt = "minilm",
    modules: Annotated[bool, typer.Option(
        help="List every submodule path instead (capture one with --site module:PATH).")
    ] = False,
) -> None:
    """List the model's canonical site names, each with its shape for one position per text
    (n x d_model, or n x heads x d_head per head)."""
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
    figure_format: FormatOpt = None,
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
    _save(result, out, figure_format)


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


from lamina import cli_analyses, cli_compare, cli_contextuality, cli_report, cli_store, cli_train  # noqa: E402,F401,I001  (register their commands)


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
