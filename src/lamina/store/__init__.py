"""On-disk activation store: chosen sites at one position per string, for corpora of millions
of strings, written as safetensors shards plus a JSON manifest.

Layout of a store directory::

    manifest.json          model (name and fingerprint), sites, shapes, positions, dtype,
                           rows, versions, and per shard its rows, size and sha256
    strings.jsonl          one JSON string per row (or text.txt + offsets for substrings)
    shards/00000.safetensors ...  rows [start, stop) of every site (plus the store id and
                           the row range in the file's metadata)
    collect.lock           while a collect writes the store (pid, host, start time)

Writing appends shard by shard; each shard is written under a temporary name and renamed, and
the manifest (rewritten the same way) is the commit record, so a run killed at any moment and
started again finishes with every row exactly once, bit-identical to an uninterrupted run. One
writer at a time: ``collect`` holds the lock. Reading is lazy: ``store[site]`` is an
array-like whose slices read only the shards they touch (memory-mapped by safetensors).

Reading trusts nothing unchecked: opening checks the manifest's structure and the shard files'
sizes, the first read of a shard checks its header against the manifest, every block read is
checked to be finite, and :meth:`Store.verify` (``lamina verify STORE``) checks every byte
against the recorded checksums.
"""

from __future__ import annotations

from pathlib import Path

from lamina.store.manifest import FORMAT
from lamina.store.reader import FlatRows, Store, StoreArray
from lamina.store.text import Substrings, substrings
from lamina.store.writer import collect


def open(path: str | Path) -> Store:  # noqa: A001 - the documented entry point name
    """Open a store written by :func:`collect` (its structure is checked; see
    :meth:`Store.verify` for the checksums)."""
    return Store(path)


__all__ = ["FORMAT", "FlatRows", "Store", "StoreArray", "Substrings", "collect", "open",
           "substrings"]
