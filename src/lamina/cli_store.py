"""``lamina collect``, ``lamina verify``, ``lamina similar``, ``lamina approximate``: the
activation-store commands, registered on the same app as :mod:`lamina.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli_common import (
    FormatOpt,
    LinesOpt,
    ModelOpt,
    OutOpt,
    SitesOpt,
    _friendly,
    _positions,
    _save,
    app,
)
from lamina.cli_format import _old, renamed
from lamina.cli_format import print_frame as _print_frame
from lamina.errors import LaminaError


@app.command()
@_friendly
def collect(
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory (resumed if present).")],
    model: ModelOpt = "minilm",
    lines: LinesOpt = None,
    corpus: Annotated[Path | None, _old("--corpus")] = None,
    substrings: Annotated[int | None, typer.Option(
        help="Instead of lines: all unique substrings of this length of --text-file.")] = None,
    text_file: Annotated[Path | None, typer.Option(
        help="Running text (a UTF-8 file) for --substrings.")] = None,
    site: SitesOpt = None,
    positions: str = "last",
    dtype: str = "float32",
    batch_size: int = 256,
    shard_rows: Annotated[int | None, typer.Option(
        help="Rows per shard (default: about 256 MiB per shard; a resume keeps the store's)."
    )] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Collect on Ray: one capture worker per CPU (or GPU) of the cluster.")
    ] = False,
    address: Annotated[str | None, typer.Option(
        help="With --ray: the Ray cluster to join (e.g. HOST:6379 or auto; default: Ray on "
             "this machine).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="With --ray: capture workers (default: the cluster's CPUs, or GPUs / "
             "--gpus-per-worker).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        help="With --ray: GPUs per worker (default 0: CPU workers).")] = None,
    cpus_per_worker: Annotated[int | None, typer.Option(
        help="With --ray: CPUs (torch threads) per worker (default 1).")] = None,
) -> None:
    """Capture sites for the lines of a text file into an on-disk store (safetensors shards).

    Running it again on the same --out resumes an interrupted collect (with or without
    --ray); one collect writes a store at a time."""
    from lamina import store
    from lamina.corpus import read_lines, read_text_file
    from lamina.outputs import check_output_dir
    from lamina.store.lock import LOCK
    from lamina.store.ray_collect import check_engine_args

    lines, option = renamed(lines, corpus, "--lines", "--corpus")
    engine = dict(engine="ray" if ray else "local", workers=workers,
                  gpus_per_worker=0 if gpus_per_worker is None else gpus_per_worker,
                  cpus_per_worker=1 if cpus_per_worker is None else cpus_per_worker,
                  address=address)
    for given, flag in ((address, "--address"), (workers, "--workers"),
                        (gpus_per_worker, "--gpus-per-worker"),
                        (cpus_per_worker, "--cpus-per-worker")):
        if given is not None and not ray:
            raise LaminaError(f"{flag} goes with --ray: add --ray or leave {flag} out.")
    check_engine_args(**engine)
    check_output_dir(out, option="--out", marker=("manifest.json", LOCK))
    if substrings is not None:
        if text_file is None or lines is not None:
            raise LaminaError(f"--substrings needs --text-file FILE (and no {option}).")
        source: object = store.substrings(read_text_file(text_file, option="--text-file"),
                                          substrings)
    elif lines is not None:
        if text_file is not None:
            raise LaminaError(f"--text-file goes with --substrings N; with {option}, leave it "
                              "out.")
        source = read_lines(lines, option=option)
    else:
        raise LaminaError("Give --lines FILE, or --substrings N with --text-file FILE.")
    result = store.collect(
        model, source, site or ["hidden.*"], out,
        positions=_positions(positions),
        dtype=dtype, batch_size=batch_size, shard_rows=shard_rows, **engine,
    )
    typer.echo(repr(result))


@app.command()
@_friendly
def verify(
    store: Annotated[Path, typer.Argument(help="Activation store directory.")],
) -> None:
    """Check a store: manifest, every shard's checksum, header and values, and its strings.

    Exit code 0 when it is healthy (complete or not), 2 with one line naming what is damaged."""
    from lamina import store as lstore

    report = lstore.open(store).verify()
    state = ("complete" if report["complete"] else
             f"incomplete: {report['n_committed']:,} of {report['n_rows']:,} rows (run the same "
             "collect again to finish)")
    checks = ("checksums match" if report["checksums"] else
              "no checksums in this older format: headers and values checked")
    typer.echo(f"ok: {store}: {report['shards']} shards, {report['n_committed']:,} rows, "
               f"{checks}; {state}")


PartialOpt = Annotated[bool, typer.Option(
    help="Use the rows committed so far by an unfinished collect (else an error).")]


def _note_partial(meta: dict[str, Any]) -> None:
    if meta.get("partial"):
        typer.echo(f"note: partial store: {meta['n_committed']:,} of {meta['n_rows']:,} rows "
                   "(its collect has not finished)")


def stored_sites(stored: list[str], patterns: list[str]) -> list[str]:
    """Expand site names, short forms and globs against a store's sites, in stored order; a
    pattern that matches none is an error listing the stored sites."""
    import fnmatch

    from lamina.sites import _expand_short

    chosen: set[str] = set()
    for raw in patterns:
        pattern = _expand_short(raw)
        hits = [name for name in stored if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise LaminaError(f"--site {raw!r} matches no stored site; this store holds: "
                              f"{', '.join(stored)}.")
        chosen.update(hits)
    return [name for name in stored if name in chosen]


def _store_model(store: Any, model: str | None) -> Any:
    """``--model`` when given, else the model the store's manifest names (loaded), or an error
    that asks for ``--model``."""
    import lamina

    if model is not None:
        return model
    name = store.manifest["model"]
    try:
        return lamina.load(name)
    except LaminaError as err:
        raise LaminaError(f"This store was collected from {name!r}, which cannot be loaded "
                          f"here ({err.cli_message.rstrip('.')}): give --model.") from None


@app.command()
@_friendly
def similar(
    store: Annotated[Path, typer.Option(help="Activation store directory.")],
    query: Annotated[list[str], typer.Option("--query", "-q", help="Query string (repeatable).")],
    site: Annotated[list[str], typer.Option(
        "--site", "-s", help="Stored site, glob or short form (repeatable).")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="The store's model (default: the one its manifest names).")
    ] = None,
    k: int = 10,
    threshold: float | None = None,
    metric: str = "cosine",
    partial: PartialOpt = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
) -> None:
    """The stored strings whose activation is most similar to each query's."""
    from lamina import store as lstore
    from lamina.analyses import similar_strings

    opened = lstore.open(store)
    result = similar_strings(_store_model(opened, model), opened, query,
                             site=stored_sites(opened.sites, site), k=k,
                             threshold=threshold, metric=metric, allow_partial=partial)
    _note_partial(result.meta)
    _print_frame(result.to_frame(), ["query", "site", "rank", "string", "similarity", "next"])
    _save(result, out, figure_format)


@app.command()
@_friendly
def approximate(
    store: Annotated[Path, typer.Option(help="Substring store with mlp_out of every block.")],
    model: ModelOpt = "shakespeare-char",
    prompts: Annotated[int, typer.Option(help="Stored strings drawn as prompts.")] = 2000,
    tune: Annotated[int, typer.Option(help="Tuning prompts for fitted thresholds.")] = 500,
    study: Annotated[bool, typer.Option(
        help="Use the study's hand-tuned thresholds/weights (6-block models).")] = False,
    thresholds: Annotated[str | None, typer.Option(
        help="Comma-separated threshold per block (default: fitted).")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Comma-separated weight per block (default: fitted).")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="The same architecture trained with another seed: its distance is the baseline.")
    ] = None,
    exclude_self: bool = False,
    seed: int = 1337,
    partial: PartialOpt = False,
    out: OutOpt = None,
    figure_format: FormatOpt = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Each block's pass over the store as Ray tasks (needs lamina[ray]).")
    ] = False,
    address: Annotated[str | None, typer.Option(
        help="With --ray: the Ray cluster to join (default: start Ray on this machine).")
    ] = None,
) -> None:
    """Approximate next-token distributions from similar strings (Hellinger distance)."""
    from lamina import store as lstore
    from lamina.analyses import approximation
    from lamina.analyses.approximation import STUDY_THRESHOLDS, STUDY_WEIGHTS

    def numbers(text: str | None, study_values: tuple[float, ...]) -> list[float] | None:
        if text is None:
            return list(study_values) if study else None
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise LaminaError(f"Expected comma-separated numbers, got {text!r}.") from None

    if address is not None and not ray:
        raise LaminaError("--address needs --ray (it names the Ray cluster to run on).")
    if ray:
        from lamina.ray_runtime import ensure_ray

        ensure_ray(address)  # a runtime already running (ray.init by the caller) is kept
    result = approximation(model, lstore.open(store), prompts, tune=tune, seed=seed,
                           engine="ray" if ray else "local",
                           thresholds=numbers(thresholds, STUDY_THRESHOLDS),
                           weights=numbers(weights, STUDY_WEIGHTS), exclude_self=exclude_self,
                           baseline=baseline, allow_partial=partial)
    _note_partial(result.meta)
    s = result.summary
    for variant in ("with_self", "without_self", "baseline"):
        if variant not in s:
            continue
        v = s[variant]
        typer.echo(f"{variant:>13}: mean {v['mean']:.4f} (std {v['std']:.4f}), "
                   f"{v['n_below_0.2']}/{s['n_prompts']} below 0.2, {v['n_empty']} empty")
    typer.echo(f"thresholds {s['thresholds']}, weights {s['weights']}, fitted: {s['fitted']}")
    _save(result, out, figure_format)
