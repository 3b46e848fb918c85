"""On-disk activation store: chosen sites at one position per string, for corpora of millions
of strings, written as safetensors shards plus a JSON manifest.

Layout of a store directory::

    manifest.json          model, sites, shapes, positions, dtype, rows, versions, shards
    strings.jsonl          one JSON string per row (or text.txt + offsets for substrings)
    shards/00000.safetensors ...  rows [start, stop) of every site

Writing appends shard by shard; each shard is written under a temporary name and renamed, and
the manifest (rewritten the same way) is the commit record, so a run killed at any moment and
started again finishes with every row exactly once. Reading is lazy: ``store[site]`` is an
array-like whose slices read only the shards they touch (memory-mapped by safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lamina.errors import LaminaError, UnknownSiteError, suggest
from lamina.models import Model, load

FORMAT = "lamina.store/1"


@dataclass
class Substrings:
    """All unique length-``n`` substrings of ``text`` in order of first occurrence, with the
    offset of that occurrence (so next-token statistics can be computed from the text)."""

    text: str
    n: int
    strings: list[str]
    offsets: np.ndarray  # [n_strings] int64, first occurrence

    def __len__(self) -> int:
        return len(self.strings)


def substrings(text: str, n: int) -> Substrings:
    """All unique substrings of length ``n`` of ``text`` (TinyShakespeare, n=10: 858,923)."""
    if n < 1 or n > len(text):
        raise LaminaError(f"n must be between 1 and the text's length ({len(text)}), not {n}.")
    first: dict[str, int] = {}
    for i in range(len(text) - n + 1):
        first.setdefault(text[i : i + n], i)
    return Substrings(text, n, list(first), np.fromiter(first.values(), dtype=np.int64))


def _fingerprint(strings: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in strings:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


class StoreArray:
    """Lazily read ``[n_rows, ...]`` view of one site of a store. Index it with an int, a
    slice or an index array; only the shards touched are read."""

    def __init__(self, store: Store, site: str) -> None:
        self.store, self.site = store, site
        self.shape = (len(store), *store.manifest["shapes"][site])
        self.dtype = getattr(torch, store.manifest["dtype"])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, shard: dict[str, Any], lo: int, hi: int) -> torch.Tensor:
        path = self.store.path / "shards" / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_slice(self.site)[lo - shard["start"] : hi - shard["start"]]
        except (SafetensorError, OSError, KeyError) as err:
            raise LaminaError(
                f"Shard {path} of store {self.store.path} is missing or corrupt ({err}). "
                "Delete it and its entry is rewritten by running the same `lamina collect` "
                "again (the manifest lists it: remove that entry, or the whole store)."
            ) from None

    def __getitem__(self, index: Any) -> torch.Tensor:
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {index} is outside a store of {n} rows")
            return self[i : i + 1][0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            parts = [self._read(s, max(start, s["start"]), min(stop, s["stop"]))
                     for s in self.store.shards if s["start"] < stop and s["stop"] > start]
            return torch.cat(parts) if parts else torch.empty((0, *self.shape[1:]),
                                                                dtype=self.dtype)
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        order = np.argsort(rows, kind="stable")
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        sorted_rows = rows[order]
        for s in self.store.shards:
            lo, hi = np.searchsorted(sorted_rows, [s["start"], s["stop"]])
            if hi > lo:
                block = self._read(s, s["start"], s["stop"])
                out[torch.as_tensor(order[lo:hi])] = block[
                    torch.as_tensor(sorted_rows[lo:hi] - s["start"])]
        return out

    def iter_blocks(self, block_rows: int = 8192) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), block_rows):
            yield self[start : start + block_rows]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        t = self[:]
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        return arr.astype(dtype) if dtype is not None else arr

    def flat(self) -> StoreArray | FlatRows:
        """A lazily read 2-D view ``[n_rows, prod(shape[1:])]`` (e.g. ``hook_z``'s heads
        concatenated), as the similarity engine takes it; the array itself when already 2-D."""
        return self if self.ndim == 2 else FlatRows(self)

    def __repr__(self) -> str:
        return f"StoreArray({self.site!r}, shape={self.shape}, dtype={self.dtype})"


class FlatRows:
    """Rows of a store site flattened to vectors (see :meth:`StoreArray.flat`)."""

    def __init__(self, base: StoreArray) -> None:
        self.base = base
        self.shape = (base.shape[0], int(np.prod(base.shape[1:])))
        self.dtype = base.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows = self.base[index]
        return rows.reshape(-1) if isinstance(index, (int, np.integer)) else rows.flatten(1)


class Store:
    """A committed activation store (see module docstring). ``store[site]`` is a
    :class:`StoreArray`; ``strings`` are the rows' strings."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise LaminaError(f"{self.path} is not an activation store (no manifest.json).")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise LaminaError(f"{manifest} is not a {FORMAT} manifest.")
        self._strings: list[str] | None = None

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        return self.n_committed == self.manifest["n_rows"]

    @property
    def n_committed(self) -> int:
        return self.shards[-1]["stop"] if self.shards else 0

    def __len__(self) -> int:
        return self.n_committed

    def __getitem__(self, site: str) -> StoreArray:
        if site not in self.manifest["sites"]:
            raise UnknownSiteError(f"Site {site!r} is not in this store.{suggest(site, self.sites)}"
                                   f" Stored: {', '.join(self.sites)}.")
        return StoreArray(self, site)

    @property
    def strings(self) -> list[str]:
        if self._strings is None:
            if (self.path / "text.txt").exists():
                sub = self.substrings()
                self._strings = sub.strings
            else:
                with (self.path / "strings.jsonl").open(encoding="utf-8") as f:
                    self._strings = [json.loads(line) for line in f]
        return self._strings[: len(self)]

    def substrings(self) -> Substrings:
        """The :class:`Substrings` a substring store was built from (text kept on disk)."""
        if not (self.path / "text.txt").exists():
            raise LaminaError(f"{self.path} was not built from lamina.store.substrings(...).")
        text = (self.path / "text.txt").read_text("utf-8")
        n = int(self.manifest["substring_length"])
        with safe_open(str(self.path / "offsets.safetensors"), framework="np") as f:
            offsets = f.get_tensor("offsets")
        return Substrings(text, n, [text[o : o + n] for o in offsets.tolist()], offsets)

    def check_model(self, model: Model) -> None:
        """Raise if the store was captured from another model."""
        if self.manifest["model"] != model.name:
            raise LaminaError(
                f"This store holds activations of {self.manifest['model']!r}, not of "
                f"{model.name!r}: open a store collected from the same model.")

    def iter_blocks(self, site: str, block_rows: int = 8192) -> Iterator[torch.Tensor]:
        return self[site].iter_blocks(block_rows)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self)}/{self.manifest['n_rows']} rows"
        return f"Store({str(self.path)!r}, model={self.manifest['model']!r}, {state}, " \
               f"sites={self.sites})"


def _corpus(corpus: Any) -> tuple[list[str], Substrings | None]:
    if isinstance(corpus, Substrings):
        return corpus.strings, corpus
    if isinstance(corpus, (str, Path)) and Path(corpus).is_file():
        from lamina.corpus import read_lines

        return read_lines(corpus), None
    if isinstance(corpus, str):
        raise LaminaError(f"No such corpus file: {corpus}. Pass a file, a list of strings, or "
                          "lamina.store.substrings(text, n).")
    strings = list(corpus)
    if not strings or not all(isinstance(s, str) for s in strings):
        raise LaminaError("The corpus must be a non-empty list of strings.")
    return strings, None


def _shard_rows(model: Model, sites: list[str], dtype: torch.dtype, shard_bytes: int) -> int:
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
) -> Store:
    """Capture ``sites`` at one position of every string of ``corpus`` into a store at ``out``.

    Args:
        corpus: a text file (one string per line), a list of strings, or
            :func:`substrings` (the text is kept, for next-token counts).
        positions: ``"last"``, ``"first"`` or an int (one position per string).
        dtype: storage dtype: float32, float16 or bfloat16.
        shard_rows: rows per shard (default: about ``shard_bytes`` per shard).

    Running it again on the same ``out`` resumes after the last committed shard; a store of
    other settings at ``out`` is an error, never overwritten.
    """
    model = load(model)
    if positions == "all":
        raise LaminaError("A store keeps one position per string: use 'last', 'first' or an "
                          "int (substrings give every prefix its own row).")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise LaminaError(f"Storage dtype must be float32, float16 or bfloat16, not {dtype}.")
    strings, sub = _corpus(corpus)
    resolved = [s.name for s in model.resolve_sites(sites)]
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    settings = {
        "format": FORMAT, "model": model.name, "family": model.family,
        "revision": getattr(model.config, "_commit_hash", None), "sites": resolved,
        "positions": positions, "dtype": str(dtype).removeprefix("torch."),
        "n_rows": len(strings), "fingerprint": _fingerprint(strings),
        "substring_length": sub.n if sub else None,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        differs = [k for k, v in settings.items() if manifest.get(k) != v]
        if differs:
            raise LaminaError(f"{out} holds a store with other settings ({', '.join(differs)}):"
                              " choose another --out, or delete it to start over.")
    else:
        if sub is not None:
            _atomic_write(out / "text.txt", sub.text)
            save_file({"offsets": torch.from_numpy(sub.offsets)}, str(out / "offsets.safetensors"))
        else:
            _atomic_write(out / "strings.jsonl",
                          "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in strings))
        manifest = {**settings, "shapes": {}, "shards": [],
                    "versions": model.describe()["versions"],
                    "processing": model.describe()["processing"]}
        _atomic_write(manifest_path, json.dumps(manifest, indent=1))
    rows = shard_rows or _shard_rows(model, resolved, dtype, shard_bytes)
    start = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
    bar = tqdm(total=len(strings), initial=start, unit="row", unit_scale=True,
               disable=not progress, desc="collect")
    while start < len(strings):
        stop = min(start + rows, len(strings))
        acts = model.collect(strings[start:stop], resolved, positions=positions, dtype=dtype,
                             batch_size=batch_size, progress=False)
        name = f"{len(manifest['shards']):05d}.safetensors"
        tmp = out / "shards" / (name + ".tmp")
        save_file({k: v.contiguous() for k, v in acts.tensors.items()}, str(tmp))
        os.replace(tmp, out / "shards" / name)
        manifest["shapes"] = {k: list(v.shape[1:]) for k, v in acts.tensors.items()}
        manifest["shards"].append({"file": name, "start": start, "stop": stop})
        _atomic_write(manifest_path, json.dumps(manifest, indent=1))  # the commit
        bar.update(stop - start)
        start = stop
    bar.close()
    return Store(out)


def open(path: str | Path) -> Store:  # noqa: A001 - the documented entry point name
    """Open a store written by :func:`collect`."""
    return Store(path)
