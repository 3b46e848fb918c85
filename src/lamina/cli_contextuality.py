"""``lamina contextuality``: how contextual each layer is (Ethayarajh 2019), registered on the
app of :mod:`lamina.cli_common`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli_common import (
    FormatOpt,
    ModelOpt,
    OutOpt,
    SitesOpt,
    _friendly,
    _readable,
    _save,
    app,
)
from lamina.cli_format import print_frame
from lamina.errors import LaminaError

#: Columns printed, with their short headers.
COLUMNS = {"site": "site", "self_similarity": "self_sim", "intra_sentence_similarity": "intra",
           "mev": "mev", "anisotropy_baseline": "baseline",
           "self_similarity_adjusted": "self_adj", "intra_sentence_similarity_adjusted":
           "intra_adj", "mev_adjusted": "mev_adj", "top_dim_share": "top_dim",
           "max_ratio": "max/median"}


def _source(corpus: Path | None, text_file: Path | None, lines: Path | None
            ) -> tuple[Path, str]:
    """The one input file given, and its option name."""
    given = [(p, o) for p, o in ((corpus, "--corpus"), (text_file, "--text-file"),
                                 (lines, "--lines")) if p is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(o for _, o in given)
        raise LaminaError(f"Give exactly one of --corpus FILE, --text-file FILE (running text, "
                          f"split into sentences) or --lines FILE (one sentence per line), not "
                          f"{what}.")
    _readable(*given[0])
    return given[0]


@app.command()
@_friendly
def contextuality(
    model: ModelOpt = "minilm",
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="Running text (UTF-8), split into sentences.")] = None,
    text_file: Annotated[Path | None, typer.Option(
        "--text-file", help="Same as --corpus.")] = None,
    lines: Annotated[Path | None, typer.Option(
        "--lines", help="Text file, one sentence per line.")] = None,
    site: SitesOpt = None,
    max_sentences: Annotated[int | None, typer.Option(
        help="Use a random sample of this many sentences (with --seed).")] = None,
    min_occurrences: Annotated[int, typer.Option(
        help="Measure word types that occur at least this often.")] = 5,
    word: Annotated[list[str] | None, typer.Option(
        "--word", help="Measure exactly this word type (repeatable).")] = None,
    batch_size: int = 32,
    seed: int = 0,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Self-similarity, intra-sentence similarity and MEV per layer with their anisotropy
    baselines, rogue dimensions and massive activations, exactly over every word occurrence."""
    from lamina.analyses.contextuality import contextuality as run
    from lamina.corpus import read_lines

    path, option = _source(corpus, text_file, lines)
    source = read_lines(path, option=option) if option == "--lines" else path
    result = run(model, source, site or "hidden.*", max_sentences=max_sentences,
                 min_occurrences=min_occurrences, words=word, batch_size=batch_size,
                 seed=seed, progress=None)
    s = result.summary
    typer.echo(f"{s['n_sentences']:,} sentences, {s['n_occurrences']:,} word occurrences, "
               f"{s['n_types_measured']:,} of {s['n_word_types']:,} word types measured")
    print_frame(result.to_frame(), COLUMNS)
    typer.echo("\n" + s["conclusion"])
    for note in s["notes"]:
        typer.echo(f"note: {note}")
    _save(result, out, figure_format)
