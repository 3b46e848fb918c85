"""The store's manifest and shard headers: what was committed, checked before it is trusted.

Format 2 (this version) records a store id, the model's fingerprint, and per shard its row
range, byte size and sha256; every shard also carries the store id and its row range in its
safetensors metadata. Format 1 stores (no checksums) still open for reading; they cannot be
resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

from lamina.errors import StoreCorruptError

FORMAT = "lamina.store/2"
FORMATS = ("lamina.store/1", FORMAT)
#: Storage dtypes: name -> (safetensors code, bytes per element).
DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}

_SHARD_NAME = re.compile(r"^[0-9]{5,}\.safetensors$")
_V1_KEYS = {"format": str, "model": str, "sites": list, "positions": (str, int), "dtype": str,
            "n_rows": int, "fingerprint": str, "shapes": dict, "shards": list}
_V2_KEYS = {**_V1_KEYS, "store_id": str, "model_fingerprint": str, "shard_rows": int}
_SHARD_KEYS = {"file": str, "start": int, "stop": int}
_V2_SHARD_KEYS = {**_SHARD_KEYS, "bytes": int, "sha256": str}


def damaged(store: Path, details: list[str]) -> StoreCorruptError:
    """The error for the damage ``details`` (each ``"where: what"``) of the store at ``store``;
    ``err.details`` keeps the list."""
    err = StoreCorruptError(
        f"Store {store} is damaged: {'; '.join(details)}. Its rows cannot be trusted: collect "
        "the store again into a new directory (or restore it from a copy).")
    err.details = details
    return err


def corrupt(store: Path, where: str, problem: str) -> StoreCorruptError:
    """The error for damage at ``where`` (a shard, a file) of the store at ``store``."""
    return damaged(store, [f"{where}: {problem}"])


def where(index: int, shard: dict[str, Any]) -> str:
    """How a message names shard ``index``."""
    return f"shard {index} (shards/{shard.get('file')})"


def _typed(value: Any, kind: Any) -> bool:
    if kind is int or kind == (str, int):
        if isinstance(value, bool):
            return False
    return isinstance(value, kind)


def read_manifest(store: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``: a JSON object of a known format with every key of
    the right type, shapes for every site, and shards contiguous from row 0 within
    ``n_rows``. Raises :class:`StoreCorruptError` saying what is wrong."""
    path = store / "manifest.json"
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise corrupt(store, "manifest.json", f"not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise corrupt(store, "manifest.json",
                      f"a JSON {type(manifest).__name__}, not an object")
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise corrupt(store, "manifest.json", f"unknown format {fmt!r} (this lamina reads "
                                              f"{', '.join(FORMATS)})")
    keys = _V2_KEYS if fmt == FORMAT else _V1_KEYS
    bad = [k for k, kind in keys.items() if not _typed(manifest.get(k), kind)]
    if bad:
        raise corrupt(store, "manifest.json", f"missing or mistyped keys: {', '.join(bad)}")
    sites, n_rows = manifest["sites"], manifest["n_rows"]
    if not sites or not all(isinstance(s, str) for s in sites) or len(set(sites)) != len(sites):
        raise corrupt(store, "manifest.json", "'sites' must be distinct site names")
    if manifest["dtype"] not in DTYPES:
        raise corrupt(store, "manifest.json", f"unknown dtype {manifest['dtype']!r}")
    if n_rows < 1:
        raise corrupt(store, "manifest.json", f"n_rows is {n_rows}")
    _check_shapes(store, manifest)
    _check_shards(store, manifest, _V2_SHARD_KEYS if fmt == FORMAT else _SHARD_KEYS)
    return manifest


def _check_shapes(store: Path, manifest: dict[str, Any]) -> None:
    shapes = manifest["shapes"]
    if not manifest["shards"]:
        return
    if set(shapes) != set(manifest["sites"]):
        raise corrupt(store, "manifest.json", "'shapes' does not list exactly the stored sites")
    for site, shape in shapes.items():
        if not isinstance(shape, list) or not all(_typed(d, int) and d >= 0 for d in shape):
            raise corrupt(store, "manifest.json", f"shape of {site} is {shape!r}")


def _check_shards(store: Path, manifest: dict[str, Any], keys: dict[str, type]) -> None:
    expected, files = 0, set()
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise corrupt(store, f"shard {i}", "its manifest entry is not an object")
        bad = [k for k, kind in keys.items() if not _typed(shard.get(k), kind)]
        if bad:
            raise corrupt(store, where(i, shard), f"missing or mistyped keys: {', '.join(bad)}")
        if not _SHARD_NAME.match(shard["file"]) or shard["file"] in files:
            raise corrupt(store, where(i, shard), "a file name that is invalid or listed twice")
        files.add(shard["file"])
        start, stop = shard["start"], shard["stop"]
        if start != expected or stop <= start or stop > manifest["n_rows"]:
            raise corrupt(store, where(i, shard),
                          f"rows {start}..{stop} where rows from {expected} (at most to "
                          f"{manifest['n_rows']}) were expected: entries removed, duplicated "
                          "or reordered")
        expected = stop


def check_files(store: Path, manifest: dict[str, Any]) -> None:
    """Every listed shard file exists (and has the size recorded, in format 2)."""
    for i, shard in enumerate(manifest["shards"]):
        path = store / "shards" / shard["file"]
        if not path.is_file():
            raise corrupt(store, where(i, shard), "the file is missing")
        if "bytes" in shard and path.stat().st_size != shard["bytes"]:
            raise corrupt(store, where(i, shard), f"{path.stat().st_size:,} bytes where "
                                                  f"{shard['bytes']:,} were written")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and the size its data should have in bytes
    (``ValueError`` if it is not a safetensors file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 * 2**20):
            raise ValueError("its header length is past the end of the file")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header, size - 8 - n


def check_header(store: Path, manifest: dict[str, Any], index: int) -> None:
    """The cheap check of a shard before its first read: the header's store id and row range
    (format 2), and every site's dtype, shape and byte range, against the manifest."""
    shard = manifest["shards"][index]
    at = where(index, shard)
    try:
        header, data_bytes = read_header(store / "shards" / shard["file"])
    except (OSError, ValueError) as err:
        raise corrupt(store, at, f"not a readable safetensors file ({err})") from None
    meta = header.get("__metadata__") or {}
    if manifest["format"] == FORMAT:
        if meta.get("lamina.store_id") != manifest["store_id"]:
            raise corrupt(store, at, "the file belongs to another store (its store id is "
                                     f"{meta.get('lamina.store_id')!r})")
        rows = (meta.get("lamina.start"), meta.get("lamina.stop"))
        if rows != (str(shard["start"]), str(shard["stop"])):
            raise corrupt(store, at, f"the file holds rows {rows[0]}..{rows[1]}, the manifest "
                                     f"says {shard['start']}..{shard['stop']}")
    code, itemsize = DTYPES[manifest["dtype"]]
    end = 0
    for site in manifest["sites"]:
        info = header.get(site)
        shape = [shard["stop"] - shard["start"], *manifest["shapes"][site]]
        if not isinstance(info, dict):
            raise corrupt(store, at, f"site {site} is not in the file")
        if info.get("dtype") != code or info.get("shape") != shape:
            raise corrupt(store, at, f"site {site} is {info.get('dtype')} {info.get('shape')} "
                                     f"in the file, {code} {shape} in the manifest")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise corrupt(store, at, f"site {site} has no valid byte range in the header")
        lo, hi = offsets
        if hi - lo != math.prod(shape) * itemsize:
            raise corrupt(store, at, f"site {site}'s byte range does not match its shape")
        end = max(end, hi)
    if end != data_bytes:
        raise corrupt(store, at, f"{data_bytes:,} data bytes where the header describes "
                                 f"{end:,} (truncated or extended)")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` under a temporary name, flush it to disk, and rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
