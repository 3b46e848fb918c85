"""Damaged stores (issue 14, item 3) are detected and named, on open, on the first read of a
shard or by ``verify`` / ``lamina verify``; index arrays follow numpy (item 5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from badinput import api_fails, cli_fails, cli_ok
from lamina import store as lstore
from lamina.errors import StoreCorruptError
from store_cases import (  # noqa: F401
    ROWS,
    fixture_copy,
    fixture_healthy,
    fixture_model_dir,
    manifest,
)


def _edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        m = manifest(path)
        fn(m)
        (path / "manifest.json").write_text(json.dumps(m))
    return damage


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        (path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return damage


def _shard(i: int) -> Path:
    return Path("shards") / f"{i:05d}.safetensors"


def _flip_byte(path: Path) -> None:
    f = path / _shard(1)
    data = bytearray(f.read_bytes())
    data[-7] ^= 0x01  # a low mantissa bit of the last value: still finite
    f.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    f = path / _shard(2)
    data = bytearray(f.read_bytes())
    data[-4:] = np.array([np.nan], np.float32).tobytes()
    f.write_bytes(bytes(data))


def _stop_past_file(path: Path) -> None:
    def fn(m: dict[str, Any]) -> None:
        m["shards"][0]["stop"] += 4
        m["shards"][1]["start"] += 4
    _edit(fn)(path)


def _swap_files(m: dict[str, Any]) -> None:
    a, b = m["shards"][0], m["shards"][1]
    a["file"], b["file"] = b["file"], a["file"]


def _other_store(path: Path) -> None:
    f = path / _shard(0)
    tensors = load_file(str(f))
    save_file(tensors, str(f), metadata={"lamina.store_id": "0" * 32, "lamina.start": "0",
                                         "lamina.stop": str(ROWS)})


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        f = path / name
        f.write_bytes(f.read_bytes()[:keep])
    return damage


def _lines(fn: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        f = path / "strings.jsonl"
        f.write_text("".join(ln + "\n" for ln in fn(f.read_text().splitlines())))
    return damage


def _set(key: str, value: Any) -> Callable[[Path], None]:
    return _edit(lambda m: m.__setitem__(key, value))


# name, damage, regexes the message must match, caught by reading (else only by verify)
DAMAGE = [
    ("flipped data byte", _flip_byte, [r"shard 1 \(shards/00001", "checksum"], False),
    ("NaN in a shard", _nan, [r"shard 2 \(shards/00002", "checksum|NaN"], True),
    ("stop past its file", _stop_past_file, [r"shard 0 ", "holds rows 0..16", "0..20"], True),
    ("entry removed", _edit(lambda m: m["shards"].pop(1)), [r"shard 1 ", "rows 32..48",
                                                            "removed"], True),
    ("entry duplicated", _edit(lambda m: m["shards"].insert(1, m["shards"][1])),
     [r"shard 2 \(shards/00001", "listed twice"], True),
    ("entries swapped", _edit(lambda m: m["shards"].reverse()),
     [r"shard 0 \(shards/00003", "rows 48..64"], True),
    ("files swapped", _edit(_swap_files),
     [r"shard 0 \(shards/00001", "holds rows 16..32|bytes where"], True),
    ("shard of another store", _other_store, [r"shard 0 ", "another store"], True),
    ("wrong shape", _edit(lambda m: m["shapes"].__setitem__("hidden.1", [33])),
     [r"shard 0 ", r"hidden\.1 is F32 \[16, 32\] in the file, F32 \[16, 33\]"], True),
    ("wrong dtype", _set("dtype", "float16"), [r"shard 0 ", "F32 .* F16"], True),
    ("truncated shard", _truncate(str(_shard(3)), 500), [r"shard 3 ", "500 bytes where"], True),
    ("missing shard", lambda p: (p / _shard(2)).unlink(), [r"shard 2 ", "missing"], True),
    ("truncated strings.jsonl", _lines(lambda ls: ls[:-1]),
     ["strings.jsonl", "63 strings where 64"], True),
    ("strings.jsonl cut mid-line", _truncate("strings.jsonl", 100),
     ["strings.jsonl", "not JSON"], True),
    ("strings.jsonl not JSON", _lines(lambda ls: [*ls[:5], "{oops", *ls[6:]]),
     ["strings.jsonl", "not JSON"], True),
    ("strings.jsonl reordered", _lines(lambda ls: [ls[1], ls[0], *ls[2:]]),
     ["strings.jsonl", "other strings"], True),
    ("strings.jsonl missing", lambda p: (p / "strings.jsonl").unlink(),
     ["strings.jsonl", "missing"], True),
    ("manifest not JSON", _write("manifest.json", '{"format": "lamina.store/2", '),
     ["manifest.json", "not valid JSON"], True),
    ("manifest empty", _write("manifest.json", ""), ["manifest.json", "not valid JSON"], True),
    ("manifest a list", _write("manifest.json", "[1, 2]"), ["manifest.json", "a JSON list"],
     True),
    ("manifest not UTF-8", _write("manifest.json", b"\xff\xfe{}"), ["manifest.json", "JSON"],
     True),
    ("manifest without shards", _edit(lambda m: m.pop("shards")),
     ["manifest.json", "missing or mistyped keys: shards"], True),
    ("manifest without sites", _edit(lambda m: m.pop("sites")),
     ["manifest.json", "keys: sites"], True),
    ("n_rows a string", _set("n_rows", "64"), ["manifest.json", "n_rows"], True),
    ("shard start mistyped", _edit(lambda m: m["shards"][2].__setitem__("start", "32")),
     [r"shard 2 ", "keys: start"], True),
    ("shard entry not an object", _edit(lambda m: m["shards"].__setitem__(1, 7)),
     ["shard 1", "not an object"], True),
    ("unknown format", _set("format", "lamina.store/9"), ["manifest.json", "unknown format"],
     True),
    ("shard path escapes", _edit(lambda m: m["shards"][0].__setitem__("file", "../x")),
     [r"shard 0 ", "invalid"], True),
]


def _read_everything(path: Path) -> None:
    store = lstore.open(path)
    for site in store.sites:
        store[site][:]
    assert len(store.strings) == len(store)


@pytest.mark.parametrize("name,damage,needles,on_read", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_detected_and_named(copy: Path, name: str, damage: Callable[[Path], None],
                                      needles: list[str], on_read: bool) -> None:
    _read_everything(copy)  # healthy before
    lstore.open(copy).verify()
    damage(copy)
    api_fails(lambda: lstore.open(copy).verify(), "is damaged", *needles, exc=StoreCorruptError)
    cli_fails(["verify", copy], "is damaged", *needles)
    if on_read:
        api_fails(lambda: _read_everything(copy), "is damaged", *needles,
                  exc=StoreCorruptError)
    else:
        _read_everything(copy)  # the data still parse: only the checksum can tell


def test_verify_reports_every_damaged_shard(copy: Path) -> None:
    _flip_byte(copy)
    _nan(copy)
    message = api_fails(lambda: lstore.open(copy).verify(), exc=StoreCorruptError)
    assert "shard 1 " in message and "shard 2 " in message and "shard 0 " not in message


def test_healthy_store_verifies(healthy: Path) -> None:
    report = lstore.open(healthy).verify()
    assert report == {"shards": 4, "n_committed": 64, "n_rows": 64, "complete": True,
                      "checksums": True}
    assert "ok:" in cli_ok(["verify", healthy]) and "checksums match" in cli_ok(["verify",
                                                                                healthy])
    cli_fails(["verify", healthy.parent / "nothing"], "not an activation store")


# -- item 5: index arrays follow numpy ------------------------------------------------------
INDEXES = [
    np.array([-1]), np.array([0, -64, 63, -1, 17]), [3, 3, 40], np.array([[1, 2], [60, -2]]),
    np.array([], dtype=np.int64), [], slice(None, None, -3), slice(10, 50, 7), slice(70, 80),
    np.arange(64) % 3 == 0, torch.tensor([5, -5]), np.int64(-3), -64,
    (np.array([2, 9]), 0), (5, slice(0, 4)), (slice(60, None), -1), (),
]
BAD_INDEXES = [np.array([64]), np.array([-65]), [0, 100], 64, -65, np.array([1.0]),
               np.array([]), np.array([True, False]), "3", 1.5]


@pytest.mark.parametrize("index", INDEXES, ids=repr)
def test_index_arrays_follow_numpy(healthy: Path, index: Any) -> None:
    arr = lstore.open(healthy)["hidden.1"]
    data = np.asarray(arr)
    assert data.shape == (64, 32)
    ref_index = index.numpy() if isinstance(index, torch.Tensor) else index
    np.testing.assert_array_equal(arr[index].numpy(), data[ref_index])


@pytest.mark.parametrize("index", BAD_INDEXES, ids=repr)
def test_bad_indexes_raise_like_numpy(healthy: Path, index: Any) -> None:
    arr = lstore.open(healthy)["hidden.1"]
    with pytest.raises(IndexError):
        np.asarray(arr)[index]
    with pytest.raises(IndexError):
        arr[index]
