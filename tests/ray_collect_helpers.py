"""Helpers of tests/test_ray_collect.py: a slowed model (so a collection can be interrupted
mid-run), the comparison of two stores, and a driver run as a subprocess
(``python ray_collect_helpers.py ADDRESS OUT``) that a test SIGKILLs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

import lamina
from lamina.corpus import tinyshakespeare

MODEL = "shakespeare-char"
SITES = ["hidden.1", "hidden.4"]
LINES = [ln for ln in tinyshakespeare().splitlines() if ln.strip()][:240]
ROWS = 20  # 12 shards
BATCH = 8


class Sleep:
    """A forward hook that sleeps ``seconds`` per forward pass (one per batch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        time.sleep(self.seconds)


class Poison:
    """A forward hook that makes a block's output NaN."""

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        poisoned = torch.full_like(hidden, float("nan"))
        return (poisoned, *output[1:]) if isinstance(output, tuple) else poisoned


def slowed(seconds: float = 0.15) -> lamina.Model:
    """shakespeare-char (the same weights, so the same fingerprint) sleeping per batch; its
    hook travels to Ray workers with the pickled model."""
    import ray.cloudpickle

    if __name__ != "__main__":  # __main__ is pickled by value anyway
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    model = lamina.load(MODEL, device="cpu")
    model.hf_model.register_forward_hook(Sleep(seconds))
    return model


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def assert_same_store(a: Path, b: Path) -> None:
    """Stores ``a`` and ``b`` are bit-identical: every shard's tensors byte-equal, the same
    row ranges in files and headers, the same manifest but for the store id and the shards'
    checksums and sizes (which depend on it)."""
    ma, mb = manifest(a), manifest(b)

    def strip(m: dict[str, Any]) -> dict[str, Any]:
        m = dict(m, store_id=None)
        m["shards"] = [{k: v for k, v in s.items() if k not in ("sha256", "bytes")}
                       for s in m["shards"]]
        return m

    assert strip(ma) == strip(mb)
    assert ma["store_id"] != mb["store_id"]
    for sa, sb in zip(ma["shards"], mb["shards"], strict=True):
        with safe_open(Path(a) / "shards" / sa["file"], "pt") as fa, \
                safe_open(Path(b) / "shards" / sb["file"], "pt") as fb:
            assert fa.metadata()["lamina.start"] == fb.metadata()["lamina.start"] \
                == str(sa["start"])
            assert fa.metadata()["lamina.stop"] == fb.metadata()["lamina.stop"] \
                == str(sa["stop"])
            assert sorted(fa.keys()) == sorted(fb.keys()) == sorted(ma["sites"])
            for key in fa.keys():
                ta, tb = fa.get_tensor(key), fb.get_tensor(key)
                assert ta.dtype == tb.dtype and ta.shape == tb.shape
                assert torch.equal(ta.view(torch.uint8), tb.view(torch.uint8)), \
                    f"{sa['file']} {key} differs"


def main(address: str, out: str) -> None:
    """A driver joining the cluster at ``address``, collecting slowly into ``out``."""
    from lamina import store

    store.collect(slowed(), LINES, SITES, out, shard_rows=ROWS, batch_size=BATCH,
                  progress=False, engine="ray", workers=2, address=address)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
