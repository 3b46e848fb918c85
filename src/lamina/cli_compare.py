"""``lamina compare``: which layers of model A match which of model B, on the same texts
(registered on the app of :mod:`lamina.cli_common`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli_common import FormatOpt, OutOpt, TruncateOpt, _friendly, _readable, _save, app
from lamina.cli_format import number
from lamina.cli_format import print_frame as _print_frame
from lamina.errors import LaminaError


def _texts(corpus: Path | None, lines: Path | None, text: list[str] | None) -> list[str]:
    """The inputs of exactly one of --corpus, --lines and --text."""
    from lamina.corpus import read_lines

    given = [name for name, v in (("--corpus", corpus), ("--lines", lines), ("--text", text))
             if v]
    if len(given) != 1:
        raise LaminaError("Give the texts with exactly one of --corpus FILE (its non-empty "
                          "lines), --lines FILE (one input per line) and --text (repeatable)"
                          + (f", not {' and '.join(given)}." if given else "."))
    if text:
        bad = [t for t in text if not t.strip()]
        if bad:
            raise LaminaError("--text is empty: give a non-empty text.")
        return list(text)
    path, option = (corpus, "--corpus") if corpus else (lines, "--lines")
    assert path is not None
    _readable(path, option)
    return read_lines(path, option=option)


@app.command()
@_friendly
def compare(
    model: Annotated[list[str], typer.Option(
        "--model", "-m", help="Model A, then model B (give --model twice; the same model "
        "twice compares it with itself).")],
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="UTF-8 text file; each non-empty line is one input.")] = None,
    lines: Annotated[Path | None, typer.Option(
        "--lines", help="Text file, one input per line.")] = None,
    text: Annotated[list[str] | None, typer.Option(
        "--text", "-t", help="An input text (repeatable).")] = None,
    site_a: Annotated[list[str] | None, typer.Option(
        "--site-a", help="Sites of model A (repeatable; default hidden.*).")] = None,
    site_b: Annotated[list[str] | None, typer.Option(
        "--site-b", help="Sites of model B (repeatable; default hidden.*).")] = None,
    measure: Annotated[list[str] | None, typer.Option(
        "--measure", help="cka, cka_debiased, rsa, rsa_correlation, procrustes, svcca, pwcca, "
        "mutual_knn, cknna, rsa_spearman or cka_rbf (repeatable; default cka, cka_debiased, rsa, "
        "procrustes).")] = None,
    rows: Annotated[str, typer.Option(
        help="tokens (one row per token: needs identical tokenizers) or pooled (one row "
        "per text).")] = "tokens",
    pooling: Annotated[str, typer.Option(help="With --rows pooled: mean or last.")] = "mean",
    k: Annotated[int, typer.Option("--k", help="Neighbours of mutual_knn and cknna.")] = 10,
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap replicates for 95% intervals (0: none).")] = 0,
    seed: int = 0,
    max_rows: Annotated[int | None, typer.Option(help="Compare only the first N rows.")
                        ] = None,
    batch_size: int = 32,
    truncate: TruncateOpt = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """Similarity of every layer of model A with every layer of model B on the same texts
    (CKA, debiased CKA, RSA, Procrustes, ...): the heat maps and each layer's best match."""
    from lamina.analyses.compare import compare as run

    if len(model) != 2:
        raise LaminaError(f"Give --model exactly twice (model A, then model B; the same model "
                          f"twice compares it with itself), not {len(model)} time(s).")
    inputs = _texts(corpus, lines, text)
    chosen = tuple(measure) if measure else ("cka", "cka_debiased", "rsa", "procrustes")
    result = run(model[0], model[1], texts=inputs, sites_a=site_a or "hidden.*",
                 sites_b=site_b or "hidden.*", measures=chosen, k=k, rows=rows,
                 pooling=pooling, bootstrap=bootstrap, seed=seed,
                 max_rows=max_rows, batch_size=batch_size, progress=True, truncate=truncate)
    s = result.summary
    typer.echo(f"{s['models'][0]} vs {s['models'][1]}: {s['n_rows']:,} rows ({s['rows']})")
    for m in result.measures:
        typer.echo(f"\n{m} (rows: sites of A, columns: sites of B)")
        typer.echo(result.matrix(m).to_string(float_format=number))
    first = result.measures[0]
    typer.echo(f"\nbest match in B for each site of A ({first})")
    _print_frame(result.best_match(first), ["site_a", "site_b", "value"])
    for note in s["notes"]:
        typer.echo(f"note: {note}")
    _save(result, out, figure_format)
