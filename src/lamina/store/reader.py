"""Reading a store: :class:`Store` checks the manifest's structure and the shard files' sizes
when it opens, each shard's header before its first read, the values of every block read
(finite), and everything, checksums included, in :meth:`Store.verify`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lamina.errors import (
    IncompleteStoreError,
    LaminaError,
    StoreCorruptError,
    StoreError,
    StoreIndexError,
    UnknownSiteError,
    suggest,
)
from lamina.store.manifest import (
    FORMAT,
    check_files,
    check_header,
    corrupt,
    damaged,
    read_manifest,
    sha256_file,
    where,
)
from lamina.store.text import Substrings, strings_fingerprint


def _rows(index: Any, n: int) -> np.ndarray:
    """Row numbers of an index array by numpy's rules: negative rows count from the end,
    rows outside the store, and arrays that are neither integer nor boolean, raise."""
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    if isinstance(index, list) and not index:
        return np.empty(0, np.int64)
    rows = np.asarray(index)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise StoreIndexError(f"a boolean index of shape {rows.shape} for a store of {n} "
                                  "rows: it needs one value per row")
        return np.flatnonzero(rows)
    if not np.issubdtype(rows.dtype, np.integer):
        raise StoreIndexError("index a store with an int, a slice, or an integer or boolean "
                              f"array, not {type(index).__name__} of {rows.dtype}")
    outside = (rows < -n) | (rows >= n)
    if outside.any():
        raise StoreIndexError(f"row {rows[outside].flat[0]} is outside a store of {n} rows")
    return np.where(rows < 0, rows + n, rows).astype(np.int64)


def _all_finite(block: torch.Tensor) -> bool:
    """Whether every value is finite: one float32 sum (NaN and infinities propagate into it),
    and the element-wise check only when the sum is not finite (a NaN, or a sum that overflowed),
    so a healthy block costs one pass without a mask."""
    total = block.sum(dtype=torch.float64 if block.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(block).all())


class StoreArray:
    """Lazily read ``[n_rows, ...]`` view of one site of a store. Index it with an int, a
    slice or an index array (numpy's rules); only the shards touched are read."""

    def __init__(self, store: Store, site: str) -> None:
        self.store, self.site = store, site
        self.shape = (len(store), *store.manifest["shapes"][site])
        self.dtype = getattr(torch, store.manifest["dtype"])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, i: int, lo: int, hi: int) -> torch.Tensor:
        shard = self.store.shards[i]
        self.store._check_shard(i)
        path = self.store.path / "shards" / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                block = f.get_slice(self.site)[lo - shard["start"] : hi - shard["start"]]
        except (SafetensorError, OSError) as err:
            raise corrupt(self.store.path, where(i, shard), f"unreadable ({err})") from None
        if not _all_finite(block):
            raise corrupt(self.store.path, where(i, shard),
                          f"NaN or infinite values in {self.site}, rows {lo}..{hi}")
        return block

    def _span(self, start: int, stop: int) -> torch.Tensor:
        parts = [self._read(i, max(start, s["start"]), min(stop, s["stop"]))
                 for i, s in enumerate(self.store.shards)
                 if s["start"] < stop and s["stop"] > start]
        if not parts:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        flat = rows.reshape(-1)
        out = torch.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        for i, s in enumerate(self.store.shards):
            lo, hi = np.searchsorted(ordered, [s["start"], s["stop"]])
            if hi > lo:
                first, last = int(ordered[lo]), int(ordered[hi - 1]) + 1
                block = self._read(i, first, last)
                out[torch.as_tensor(order[lo:hi])] = block[torch.as_tensor(ordered[lo:hi] - first)]
        return out.reshape(*rows.shape, *self.shape[1:])

    def __getitem__(self, index: Any) -> torch.Tensor:
        n = len(self)
        if isinstance(index, tuple):  # rows first, then the rest of the axes
            if not index:
                return self[:]
            rows, rest = self[index[0]], index[1:]
            return rows[rest] if isinstance(index[0], (int, np.integer)) else \
                rows[(slice(None), *rest)]
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise StoreIndexError(f"row {index} is outside a store of {n} rows")
            return self._span(i, i + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return self._gather(np.arange(start, stop, step))
            return self._span(start, max(start, stop))
        return self._gather(_rows(index, n))

    def iter_blocks(self, block_rows: int = 8192) -> Iterator[torch.Tensor]:
        """The rows in consecutive blocks of ``block_rows``."""
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
    """A committed activation store (see :mod:`lamina.store`). ``store[site]`` is a
    :class:`StoreArray`; ``strings`` are the rows' strings. Opening checks the manifest and
    the shard files' sizes; :meth:`verify` checks every byte."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise StoreError(f"{self.path} is not an activation store (no manifest.json).")
        self.manifest: dict[str, Any] = read_manifest(self.path)
        check_files(self.path, self.manifest)
        self._checked: set[int] = set()
        self._strings: list[str] | None = None

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_rows(self) -> int:
        """Rows of the corpus (committed or not)."""
        return self.manifest["n_rows"]

    @property
    def n_committed(self) -> int:
        """Rows written so far."""
        return self.shards[-1]["stop"] if self.shards else 0

    @property
    def complete(self) -> bool:
        return self.n_committed == self.n_rows

    def __len__(self) -> int:
        return self.n_committed

    def __getitem__(self, site: str) -> StoreArray:
        if site not in self.manifest["sites"]:
            raise UnknownSiteError(f"Site {site!r} is not in this store.{suggest(site, self.sites)}"
                                   f" Stored: {', '.join(self.sites)}.")
        if not self.shards:
            raise IncompleteStoreError(f"Store {self.path} holds no rows yet (0 of "
                                       f"{self.n_rows:,} committed): run the same collect again.")
        return StoreArray(self, site)

    def require_complete(self, allow_partial: bool = False) -> dict[str, Any]:
        """Raise :class:`IncompleteStoreError` unless the store is complete (or, with
        ``allow_partial``, holds some rows); return ``partial``, ``n_committed``, ``n_rows``
        for a result's metadata."""
        state = {"partial": not self.complete, "n_committed": self.n_committed,
                 "n_rows": self.n_rows}
        if not self.shards:
            raise IncompleteStoreError(
                f"Store {self.path} holds no rows yet (0 of {self.n_rows:,} committed): run "
                "the same collect to fill it.")
        if not self.complete and not allow_partial:
            stopped = (f"The collect of {self.path} stopped at {self.n_committed:,} of "
                       f"{self.n_rows:,} rows: run the same collect again to finish, or pass")
            raise IncompleteStoreError(
                f"{stopped} allow_partial=True to analyse the rows committed so far.",
                cli=f"{stopped} --partial to analyse the rows committed so far.")
        return state

    def _check_shard(self, i: int) -> None:
        if i not in self._checked:
            check_header(self.path, self.manifest, i)
            self._checked.add(i)

    def _all_strings(self) -> list[str]:
        if self._strings is None:
            if self.manifest.get("substring_length"):
                strings = self.substrings().strings
            else:
                strings = self._read_jsonl()
            if len(strings) != self.n_rows or \
                    strings_fingerprint(strings) != self.manifest["fingerprint"]:
                name = "text.txt / offsets" if self.manifest.get("substring_length") else \
                    "strings.jsonl"
                raise corrupt(self.path, name, f"{len(strings):,} strings where "
                              f"{self.n_rows:,} were stored, or other strings (checksum)")
            self._strings = strings
        return self._strings

    def _read_jsonl(self) -> list[str]:
        path = self.path / "strings.jsonl"
        try:
            with path.open(encoding="utf-8") as f:
                strings = [json.loads(line) for line in f]
        except FileNotFoundError:
            raise corrupt(self.path, "strings.jsonl", "the file is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise corrupt(self.path, "strings.jsonl", f"not JSON lines ({err})") from None
        if not all(isinstance(s, str) for s in strings):
            raise corrupt(self.path, "strings.jsonl", "a line that is not a JSON string")
        return strings

    @property
    def strings(self) -> list[str]:
        """The committed rows' strings (checked against the manifest on first use)."""
        return self._all_strings()[: len(self)]

    def substrings(self) -> Substrings:
        """The :class:`Substrings` a substring store was built from (text kept on disk)."""
        n = self.manifest.get("substring_length")
        if not n:
            raise LaminaError(f"{self.path} was not built from lamina.store.substrings(...).")
        try:
            text = (self.path / "text.txt").read_text("utf-8")
            with safe_open(str(self.path / "offsets.safetensors"), framework="np") as f:
                offsets = f.get_tensor("offsets")
        except (OSError, UnicodeDecodeError, SafetensorError) as err:
            raise corrupt(self.path, "text.txt / offsets.safetensors",
                          f"missing or unreadable ({err})") from None
        if offsets.ndim != 1 or len(offsets) and (offsets.min() < 0
                                                  or offsets.max() > len(text) - n):
            raise corrupt(self.path, "offsets.safetensors", "offsets outside text.txt")
        return Substrings(text, n, [text[o : o + n] for o in offsets.tolist()], offsets)

    def verify(self) -> dict[str, Any]:
        """Check everything: each shard's checksum (format 2), header and values, and the
        strings. Raises :class:`StoreCorruptError` naming every damaged shard and what is
        wrong; returns ``{"shards", "n_committed", "n_rows", "complete", "checksums"}``."""
        problems = []
        for i, shard in enumerate(self.shards):
            at = where(i, shard)
            try:
                self._check_shard(i)
                if "sha256" in shard and \
                        sha256_file(self.path / "shards" / shard["file"]) != shard["sha256"]:
                    raise corrupt(self.path, at, "its checksum does not match the one recorded "
                                                 "(the file changed after it was written)")
                for site in self.sites:
                    StoreArray(self, site)._read(i, shard["start"], shard["stop"])
            except StoreCorruptError as err:
                problems += err.details
        try:
            self._all_strings()
        except StoreCorruptError as err:
            problems += err.details
        if problems:
            raise damaged(self.path, problems)
        return {"shards": len(self.shards), "n_committed": self.n_committed,
                "n_rows": self.n_rows, "complete": self.complete,
                "checksums": self.manifest["format"] == FORMAT}

    def check_model(self, model: Any) -> None:
        """Raise if the store was captured from another model (by fingerprint of weights and
        config; by name for format 1 stores, which have none)."""
        from lamina.fingerprint import model_fingerprint

        recorded = self.manifest.get("model_fingerprint")
        same = (recorded == model_fingerprint(model) if recorded
                else self.manifest["model"] == model.name)
        if not same:
            raise StoreError(
                f"This store holds activations of {self.manifest['model']!r}, not of "
                f"{model.name!r} (other weights or config): open a store collected from the "
                "same model.")

    def iter_blocks(self, site: str, block_rows: int = 8192) -> Iterator[torch.Tensor]:
        """``store[site]`` in consecutive blocks of ``block_rows`` rows."""
        return self[site].iter_blocks(block_rows)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self)}/{self.n_rows} rows"
        return f"Store({str(self.path)!r}, model={self.manifest['model']!r}, {state}, " \
               f"sites={self.sites})"
