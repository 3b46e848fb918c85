"""``lamina report``: the atlas, one self-contained HTML page of a model's geometry
(registered on the same app as :mod:`lamina.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli_common import _friendly, _readable, app, fail
from lamina.cli_format import _old, renamed
from lamina.errors import LaminaError


def _check_report_out(out: Path) -> Path:
    """Refuse an --out that cannot hold a report, before any work."""
    from lamina.atlas.save import MARKERS
    from lamina.outputs import check_output_dir

    try:
        check_output_dir(out, option="--out", marker=MARKERS)
    except LaminaError as err:
        fail(err.cli_message)
    return out


def parse_head(value: str) -> tuple[int, int]:
    """A --head option, ``LAYER.HEAD`` (``10.7``) or ``LAYER:HEAD``."""
    parts = value.replace(":", ".").split(".")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise LaminaError(f"--head {value!r} is not LAYER.HEAD (e.g. --head 10.7).")
    return int(parts[0]), int(parts[1])


@app.command()
@_friendly
def report(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Report directory (index.html, manifest.json, one folder per "
        "section; replaced as a whole).", callback=_check_report_out)],
    model: Annotated[list[str], typer.Option(
        "--model", "-m", help="Built-in name, directory or hub id (repeatable).")],
    text_file: Annotated[Path | None, typer.Option(
        "--text-file", help="Running text (UTF-8 file) for contexts and the inputs (default: "
        "the shipped TinyShakespeare).")] = None,
    lines: Annotated[Path | None, typer.Option(
        "--lines", help="Text file, one input per line (default: lines of --text-file).")
    ] = None,
    corpus: Annotated[Path | None, _old("--corpus")] = None,
    texts: Annotated[Path | None, _old("--texts")] = None,
    words: Annotated[Path | None, typer.Option(
        help="Categories word list, CSV with columns label,word (default built in).")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="Target word for the contexts section (repeatable).")] = None,
    head: Annotated[list[str] | None, typer.Option(
        "--head", help="LAYER.HEAD for the alignment section (repeatable; default all).")
    ] = None,
    section: Annotated[list[str] | None, typer.Option(
        "--section", help="Only this section (repeatable; default all).")] = None,
    quick: Annotated[bool, typer.Option(help="Small samples (the demo).")] = False,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Progress bar per section.")] = True,
) -> None:
    """The atlas: every analysis that applies to the model(s), on one self-contained HTML page,
    with the tables behind its figures and a manifest."""
    from lamina.atlas.core import report as build
    from lamina.corpus import read_lines, read_text_file

    heads = [parse_head(h) for h in head] if head else None
    text_file, text_option = renamed(text_file, corpus, "--text-file", "--corpus")
    lines, lines_option = renamed(lines, texts, "--lines", "--texts")
    text = read_text_file(text_file, option=text_option) if text_file is not None else None
    inputs = read_lines(lines, option=lines_option) if lines is not None else None
    if words is not None:
        _readable(words, "--words")
    rep = build(model, corpus=text, texts=inputs, words=str(words) if words else None,
                targets=target, heads=heads, sections=section, quick=quick, seed=seed,
                progress=progress)
    index = rep.save(out)
    typer.echo(f"wrote {index}")
    for name, title, finding in rep.headlines():
        prefix = f"{name} · " if len(rep.models) > 1 else ""
        typer.echo(f"- {prefix}{title}: {finding}")
