"""Fixtures and helpers shared by the store's reliability tests: a tiny GPT-2 saved as a
model directory, a healthy 4-shard store of it, and a fresh copy of that store per test
(import the ``fixture_*`` functions; the fixtures are named without the prefix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import save_model, tiny
from lamina import store as lstore
from lamina.corpus import tinyshakespeare

SITES = ["hidden.1", "blocks.2.hook_resid_post"]
LINES = [ln for ln in tinyshakespeare().splitlines() if ln.strip()][:64]
ROWS = 16  # 4 shards


@pytest.fixture(scope="module", name="model_dir")
def fixture_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 saved as a model directory (so subprocesses can load it)."""
    path = tmp_path_factory.mktemp("model") / "gpt2"
    m = tiny("gpt2")
    save_model(m, path)
    return path


@pytest.fixture(scope="module", name="healthy")
def fixture_healthy(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("healthy") / "store"
    lstore.collect(str(model_dir), LINES, SITES, out, shard_rows=ROWS, batch_size=8,
                   progress=False)
    return out


@pytest.fixture(name="copy")
def fixture_copy(healthy: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(healthy, out)
    return out


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def cut(path: Path, keep: int) -> None:
    """Make a complete store look like a killed one with ``keep`` shards committed."""
    m = manifest(path)
    m["shards"] = m["shards"][:keep]
    (path / "manifest.json").write_text(json.dumps(m))


def write_lines(tmp_path: Path, lines: list[str], name: str = "lines.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path
