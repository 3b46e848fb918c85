"""One shard of a store: the capture of rows ``[start, stop)`` into safetensors bytes, the one
code path of the local and the Ray engine (so the same floats come out wherever it runs)."""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save

from lamina.errors import StoreError
from lamina.models import Model


def capture_shard(model: Model, strings: list[str], start: int, stop: int,
                  manifest: dict[str, Any], batch_size: int) -> tuple[bytes, dict[str, list]]:
    """Capture rows ``[start, stop)`` (``strings`` are those rows) as one shard: its
    safetensors bytes (each site ``[stop - start, ...]``, with the store id and row range in
    the metadata) and the per-row shapes. The one code path of every engine, so the same
    floats come out wherever it runs. Raises :class:`StoreError` on non-finite values."""
    acts = model.collect(strings, manifest["sites"], positions=manifest["positions"],
                         dtype=manifest["dtype"], batch_size=batch_size, progress=False)
    tensors = {k: v.contiguous() for k, v in acts.tensors.items()}
    _check_values(tensors, start, stop, manifest["dtype"])
    shapes = {k: list(v.shape[1:]) for k, v in tensors.items()}
    data = save(tensors, metadata={"lamina.store_id": manifest["store_id"],
                                   "lamina.start": str(start), "lamina.stop": str(stop)})
    return data, shapes


def _check_values(tensors: dict[str, torch.Tensor], start: int, stop: int, dtype: str) -> None:
    for site, t in tensors.items():
        if not torch.isfinite(t).all():
            hint = (" (float16 overflows above 65,504: collect with dtype='float32')"
                    if dtype == "float16" else "")
            raise StoreError(
                f"The model gives NaN or infinite values at {site} for rows {start}..{stop} "
                f"in {dtype}{hint}; nothing of these rows was stored.",
                cli=f"The model gives NaN or infinite values at {site} for rows {start}..{stop} "
                    f"in {dtype}" + (" (float16 overflows above 65,504: use --dtype float32)"
                                     if dtype == "float16" else "")
                    + "; nothing of these rows was stored.")
