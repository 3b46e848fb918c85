"""``Activations``: what :meth:`lamina.Model.collect` returns, in memory.

``acts[site]`` is a tensor ``[n_inputs, ...]``: ``[n_inputs, d]`` (or ``[n_inputs, n_heads,
d_head]`` for per-head sites) when one position per input was captured, ``[n_inputs, seq, ...]``
for all positions, real tokens first and padding after (whatever the tokenizer's padding side),
with ``acts.mask`` marking real tokens and zeros at the padding. A ``module:`` site without a
sequence axis (listed in ``acts.meta["no_sequence_axis"]``) is ``[n_inputs, ...]`` whatever the
positions.

The same read interface (``sites``, ``acts[site]`` with ``.shape`` and row slicing, ``strings``,
``len``, :meth:`iter_blocks`) is what an on-disk activation store offers, so analyses accept
either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lamina.errors import LaminaError, UnknownSiteError, suggest
from lamina.outputs import atomic_file, check_output_file

_META_KEY = "lamina.activations"


def safetensors_path(path: str | Path) -> Path:
    """Where :meth:`Activations.save` writes ``path``: its suffix becomes ``.safetensors``."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")


@dataclass
class Activations(Mapping[str, torch.Tensor]):
    """Captured activations plus the inputs that produced them.

    Attributes:
        tensors: site name -> tensor ``[n_inputs, ...]``.
        token_ids: ``[n_inputs, max_len]`` int64, right-padded with 0.
        lengths: ``[n_inputs]`` number of real tokens of each input.
        positions: ``[n_inputs]`` index of the captured token within each input's real tokens,
            or ``None`` when every position was captured.
        strings: the input texts (decoded from the ids when ids were given).
        token_strings: each input's tokens as strings.
        meta: model, sites, positions request, dtype, any processing, library versions.
    """

    tensors: dict[str, torch.Tensor]
    token_ids: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor | None
    strings: list[str]
    token_strings: list[list[str]]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- mapping interface -------------------------------------------------------------
    def __getitem__(self, site: str) -> torch.Tensor:
        try:
            return self.tensors[site]
        except KeyError:
            raise UnknownSiteError(
                f"Site {site!r} was not captured.{suggest(site, self.tensors)} "
                f"Captured: {', '.join(self.tensors)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.strings)

    @property
    def sites(self) -> list[str]:
        return list(self.tensors)

    @property
    def mask(self) -> torch.Tensor:
        """``[n_inputs, max_len]`` bool, True at real tokens."""
        width = self.token_ids.shape[1]
        return torch.arange(width)[None, :] < self.lengths[:, None]

    @property
    def all_positions(self) -> bool:
        return self.positions is None

    def iter_blocks(self, site: str, block_rows: int = 4096) -> Iterator[torch.Tensor]:
        """Yield ``self[site]`` in blocks of at most ``block_rows`` rows."""
        t = self[site]
        for start in range(0, t.shape[0], block_rows):
            yield t[start : start + block_rows]

    # -- conversion ----------------------------------------------------------------------
    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Activations:
        """A copy with every site tensor moved to ``device`` and/or cast to ``dtype``."""
        tensors = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        meta = dict(self.meta)
        if dtype is not None:
            meta["dtype"] = str(dtype).removeprefix("torch.")
        return Activations(
            tensors, self.token_ids, self.lengths, self.positions, self.strings,
            self.token_strings, meta,
        )

    def numpy(self) -> dict[str, np.ndarray]:
        """Site -> numpy array on the CPU (bfloat16, which numpy lacks, becomes float32)."""
        out = {}
        for k, v in self.tensors.items():
            v = v.detach().cpu()
            out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return out

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (tensors + JSON metadata; nothing is pickled) at
        :func:`safetensors_path` of ``path``. Checked writable first, and written to a
        temporary name renamed at the end, so an interrupted save never leaves a file that
        looks complete."""
        path = check_output_file(safetensors_path(path), option="path")
        tensors = {f"site/{k}": v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        tensors["token_ids"] = self.token_ids.contiguous()
        tensors["lengths"] = self.lengths.contiguous()
        if self.positions is not None:
            tensors["positions"] = self.positions.contiguous()
        header = {
            "strings": self.strings,
            "token_strings": self.token_strings,
            "meta": self.meta,
            "order": list(self.tensors),
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise LaminaError(f"No activations file at {path}.")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            if _META_KEY not in metadata:
                raise LaminaError(
                    f"{path} is a safetensors file but not one written by Activations.save "
                    "(its lamina metadata is missing)."
                )
            header = json.loads(metadata[_META_KEY])
            raw = load_file(str(path))
            return cls(
                {k: raw[f"site/{k}"] for k in header["order"]},
                raw["token_ids"],
                raw["lengths"],
                raw.get("positions"),
                header["strings"],
                header["token_strings"],
                header["meta"],
            )
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise LaminaError(f"{path} is not a readable activations file written by "
                              f"Activations.save ({type(err).__name__}: {err}).") from None

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self.tensors.items())[:4])
        more = f", ... ({len(self.tensors)} sites)" if len(self.tensors) > 4 else ""
        return f"Activations({len(self)} inputs; {shapes}{more})"
