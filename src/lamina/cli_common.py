"""What every ``lamina`` command shares: the app, the common options (``--model``,
``--site``, ``--out`` checked before the work, ``--format``, ``--lines``, ``--truncate``), the
one-line error exit and the helpers that read CLI inputs and save results."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
            return fn(*args, **kwargs)
        except LaminaError as err:
            fail(err.cli_message)

    return wrapper


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with code 2."""
    typer.secho("error: " + " ".join(str(message).split()), fg="red", err=True)
    raise typer.Exit(2)


def _positions(value: str) -> str | int:
    """A --positions option: 'last', 'first', 'all' or an int."""
    return int(value) if value.lstrip("-").isdigit() else value


def _check_formats(formats: list[str] | None) -> list[str] | None:
    """Refuse an unknown --format before the command does any work."""
    if formats:
        from lamina.results import check_formats

        try:
            check_formats(formats)
        except LaminaError as err:
            fail(err.cli_message)
    return formats


FormatOpt = Annotated[list[str] | None, typer.Option(
    "--format", help="Figure format with --out: png, svg or pdf (repeatable; default png).",
    callback=_check_formats)]


def _save(result: Any, out: Path | None, formats: list[str] | None = None) -> None:
    """Write a result's tables, figures (in each --format) and summary.json when --out was
    given."""
    if out:
        from lamina.results import check_formats

        typer.echo(f"wrote {result.save(out, formats=check_formats(formats or ['png']))}")


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
