"""Writing a store: :func:`collect`, resumable shard by shard, one writer at a time."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from lamina.checks import check_int
from lamina.errors import LaminaError, StoreError
from lamina.fingerprint import model_fingerprint
from lamina.models import Model, load
from lamina.outputs import check_output_dir
from lamina.store.lock import LOCK, writer_lock
from lamina.store.manifest import DTYPES, FORMAT, write_atomic
from lamina.store.ray_collect import check_engine_args
from lamina.store.reader import Store
from lamina.store.shard import capture_shard
from lamina.store.text import Substrings, strings_fingerprint

#: One collected shard on its way to the commit: rows [start, stop), the safetensors bytes,
#: and the per-row shape of every site.
ShardData = tuple[int, int, bytes, dict[str, list]]

#: Settings a resumed collect must share with the store it continues.
_SAME = ("sites", "positions", "dtype", "n_rows", "fingerprint", "substring_length")


def _corpus(corpus: Any) -> tuple[list[str], Substrings | None]:
    if isinstance(corpus, Substrings):
        return corpus.strings, corpus
    if isinstance(corpus, (str, Path)):
        from lamina.corpus import read_lines

        return read_lines(corpus, option="corpus"), None
    if corpus is None or isinstance(corpus, (bytes, dict)) or not hasattr(corpus, "__iter__"):
        raise LaminaError(f"corpus must be a text file, a list of strings, or "
                          f"lamina.store.substrings(text, n), not {type(corpus).__name__}.")
    strings = list(corpus)
    if not strings:
        raise LaminaError("The corpus is empty: give at least one string.")
    for i, s in enumerate(strings):
        if not isinstance(s, str) or not s:
            raise LaminaError(f"Row {i} of the corpus is {s!r}: every row must be a "
                              "non-empty string.")
    return strings, None


def _dtype(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise LaminaError(f"Storage dtype must be float32, float16 or bfloat16, not {dtype}.",
                          cli=f"--dtype must be float32, float16 or bfloat16, not {name}.")
    return name


def _check_args(positions: Any, batch_size: Any, shard_rows: Any, shard_bytes: Any) -> None:
    if positions == "all" or not (positions in ("last", "first") or (
            isinstance(positions, int) and not isinstance(positions, bool))):
        raise LaminaError(f"positions must be 'last', 'first' or an int, not {positions!r}: a "
                          "store keeps one position per string (substrings give every prefix "
                          "its own row).",
                          cli=f"--positions must be last, first or an integer, not {positions}: "
                              "a store keeps one position per string (--substrings give every "
                              "prefix its own row).")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows),
                        ("shard_bytes", shard_bytes)):
        if value is not None or name != "shard_rows":
            check_int(value, name, 1, option=f"--{name.replace('_', '-')}")


def _shard_rows(model: Model, sites: list[str], dtype: str, shard_bytes: int) -> int:
    probe = model.collect(["a"], sites, positions=0, dtype=dtype, progress=False)
    row_bytes = sum(t[0].numel() * t.element_size() for t in probe.tensors.values())
    return max(256, shard_bytes // max(row_bytes, 1))


def collect(
    model: Model | str,
    corpus: Any,
    sites: str | Sequence[str],
    out: str | Path,
    *,
    positions: str | int = "last",
    dtype: str | torch.dtype = "float32",
    batch_size: int = 256,
    shard_rows: int | None = None,
    shard_bytes: int = 256 * 2**20,
    progress: bool = True,
    engine: str = "local",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    cpus_per_worker: int = 1,
    address: str | None = None,
) -> Store:
    """Capture ``sites`` at one position of every string of ``corpus`` into a store at ``out``.

    Args:
        corpus: a text file (one string per line), a list of strings, or
            :func:`substrings` (the text is kept, for next-token counts).
        positions: ``"last"``, ``"first"`` or an int (one position per string).
        dtype: storage dtype: float32, float16 or bfloat16.
        shard_rows: rows per shard (default: the store's own when resuming, else about
            ``shard_bytes`` per shard).
        engine: ``"local"`` (this process) or ``"ray"``: a Ray Data pipeline over the shards
            with one capture actor per worker (see :mod:`lamina.store.ray_collect`); the
            same shards and manifest, written by this process alone.
        workers: Ray workers (default: the cluster's CPUs / ``cpus_per_worker``, or its GPUs
            / ``gpus_per_worker``).
        gpus_per_worker: GPUs per Ray worker (0: CPU workers; a fraction shares a GPU).
        cpus_per_worker: CPUs per Ray worker, also its torch thread count.
        address: the Ray cluster to join when no Ray runtime is initialised (default: a
            local one).

    Running it again on the same ``out`` resumes after the last committed shard, if the model
    is the same (by a fingerprint of its weights and config, whatever path names it); a store
    of other settings at ``out`` is an error, never overwritten. One collect writes a store at
    a time: a second one is refused (:class:`~lamina.errors.StoreLockedError`) while the first
    runs.
    """
    dtype_name = _dtype(dtype)
    _check_args(positions, batch_size, shard_rows, shard_bytes)
    plan = check_engine_args(engine, workers, gpus_per_worker, cpus_per_worker, address)
    out = check_output_dir(out, option="out", marker=("manifest.json", LOCK))
    strings, sub = _corpus(corpus)
    spec = model
    # the driver of a Ray run only probes and fingerprints the model: on the CPU
    by_name = isinstance(model, (str, os.PathLike))
    model = load(model, device="cpu") if plan is not None and by_name else load(model)
    resolved = [s.name for s in model.resolve_sites(sites)]
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": model.name, "family": model.family,
        "revision": getattr(model.config, "_commit_hash", None), "sites": resolved,
        "positions": positions, "dtype": dtype_name, "n_rows": len(strings),
        "fingerprint": strings_fingerprint(strings),
        "substring_length": sub.n if sub else None,
        "model_fingerprint": model_fingerprint(model),
    }
    with writer_lock(out):
        if (out / "manifest.json").exists():
            manifest = _resume(out, settings, model)
        else:
            manifest = _create(out, settings, strings, sub, model)
        rows = shard_rows or manifest.get("shard_rows") or _shard_rows(
            model, resolved, dtype_name, shard_bytes)
        if manifest["shard_rows"] is None:
            manifest["shard_rows"] = rows
        todo = pending(manifest, len(strings), rows)
        if plan is None:
            shards = _local_shards(model, strings, todo, manifest, batch_size)
        else:
            shards = plan.shards(spec, model, strings, todo, manifest, batch_size)
        _fill(out, manifest, shards, len(strings), progress)
    return Store(out)


def _create(out: Path, settings: dict[str, Any], strings: list[str], sub: Substrings | None,
            model: Model) -> dict[str, Any]:
    if sub is not None:
        write_atomic(out / "text.txt", sub.text)
        write_atomic(out / "offsets.safetensors",
                     save({"offsets": torch.from_numpy(sub.offsets)}))
    else:
        write_atomic(out / "strings.jsonl",
                     "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in strings))
    described = model.describe()
    return {"format": FORMAT, "store_id": uuid.uuid4().hex, **settings, "shard_rows": None,
            "shapes": {}, "shards": [], "versions": described["versions"],
            "processing": described["processing"]}


def _resume(out: Path, settings: dict[str, Any], model: Model) -> dict[str, Any]:
    store = Store(out)  # the manifest's structure and the shard files are checked
    manifest = store.manifest
    if manifest["format"] != FORMAT:
        raise StoreError(f"{out} was collected by an older lamina ({manifest['format']}) and "
                         "cannot be resumed: collect into another directory.",
                         cli=f"{out} was collected by an older lamina ({manifest['format']}) and"
                             " cannot be resumed: collect into another --out.")
    if manifest["model_fingerprint"] != settings["model_fingerprint"]:
        raise StoreError(
            f"{out} holds activations of {manifest['model']!r} and {model.name!r} is another "
            "model (its weights or config differ, e.g. retrained into the same directory): "
            "resume with the model it was started with, or choose another out.",
            cli=f"{out} holds activations of {manifest['model']!r} and {model.name!r} is "
                "another model (its weights or config differ, e.g. retrained into the same "
                "directory): resume with the model it was started with, or choose another --out.")
    differs = [k for k in _SAME if manifest.get(k) != settings[k]]
    if differs:
        raise StoreError(f"{out} holds a store with other settings ({', '.join(differs)}): "
                         "choose another out, or delete it to start over.",
                         cli=f"{out} holds a store with other settings ({', '.join(differs)}): "
                             "choose another --out, or delete it to start over.")
    store.strings  # noqa: B018 - the strings on disk are checked against the manifest
    for tmp in (out / "shards").glob("*.tmp"):  # left by a killed writer; we hold the lock
        tmp.unlink()
    return manifest


def pending(manifest: dict[str, Any], n_rows: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the shards still to collect: every ``rows`` rows from
    the last committed shard (a function of the corpus and the shard size only)."""
    start = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
    return [(a, min(a + rows, n_rows)) for a in range(start, n_rows, rows)]


def _local_shards(model: Model, strings: list[str], todo: list[tuple[int, int]],
                  manifest: dict[str, Any], batch_size: int) -> Iterator[ShardData]:
    for start, stop in todo:
        data, shapes = capture_shard(model, strings[start:stop], start, stop, manifest,
                                     batch_size)
        yield start, stop, data, shapes


def _fill(out: Path, manifest: dict[str, Any], shards: Iterator[ShardData], n_rows: int,
          progress: bool) -> None:
    """Commit ``shards`` (in row order) until every string is stored; the manifest, rewritten
    atomically after each shard, is the commit record."""
    (out / "shards").mkdir(exist_ok=True)
    start = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
    bar = tqdm(total=n_rows, initial=start, unit="row", unit_scale=True,
               disable=not progress, desc="collect")
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    try:
        for first, stop, data, shapes in shards:
            if first != start:  # the engines yield the pending ranges in order
                raise StoreError(f"Internal error: shard rows {first}..{stop} arrived where "
                                 f"rows from {start} were expected; nothing of them was stored.")
            if manifest["shapes"] and shapes != manifest["shapes"]:
                raise StoreError(f"Rows {start}..{stop} have other shapes than the stored ones "
                                 f"({shapes} vs {manifest['shapes']}).")
            name = f"{len(manifest['shards']):05d}.safetensors"
            write_atomic(out / "shards" / name, data)
            manifest["shapes"] = shapes
            manifest["shards"].append({"file": name, "start": start, "stop": stop,
                                       "bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()})
            write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))  # the commit
            bar.update(stop - start)
            start = stop
    finally:
        bar.close()
        close = getattr(shards, "close", None)
        if close is not None:  # an engine's pipeline ends with the commits
            close()
