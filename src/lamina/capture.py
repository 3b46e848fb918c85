"""Batched capture of chosen sites at chosen positions, with hooks on the unmodified model.

Memory grows with what was asked, not with the model: each hook slices the requested positions
out of its tensor and copies them into a preallocated buffer on the output device, and the
forward pass stops right after the deepest block needed.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lamina.errors import ContextLengthError, LaminaError, TokenizationError
from lamina.sites import Site

if TYPE_CHECKING:
    from lamina.models import Model

Positions = str | int | Sequence[int]


class _StopForward(Exception):
    """Raised by a hook once every requested site has been captured."""


@dataclass
class _Batch:
    rows: torch.Tensor  # [B] original input indices
    lengths: torch.Tensor  # [B] real tokens
    offsets: torch.Tensor  # [B] index of the first real token in the padded layout
    picks: torch.Tensor | None  # [B] chosen real-token index, or None for all positions
    width: int  # padded sequence length S


def tokenize(model: Model, inputs: Any, *, truncate: bool = False) -> list[list[int]]:
    """Token ids of each input: strings go through the tokenizer as it does by default
    (special tokens included); token-id sequences pass through unchanged."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.tolist() if inputs.ndim == 2 else [inputs.tolist()]
    inputs = list(inputs)
    if not inputs:
        raise LaminaError("No inputs were given: pass a non-empty list of strings or token ids.")
    if all(isinstance(x, str) for x in inputs):
        if model.tokenizer is None:
            raise LaminaError("This model has no tokenizer: pass token ids instead of strings.")
        try:
            encoded = model.tokenizer(inputs, add_special_tokens=True)["input_ids"]
        except Exception as err:  # a character tokenizer meeting an unknown character
            unknown = sorted(set("".join(inputs)) - set(model.tokenizer.get_vocab()))
            raise TokenizationError(
                f"The tokenizer cannot encode these inputs ({err}). Characters not in its "
                f"vocabulary: {unknown[:20]}. Remove or replace them."
            ) from None
        ids = [list(x) for x in encoded]
    elif all(not isinstance(x, str) for x in inputs):
        ids = [[int(t) for t in x] for x in inputs]
    else:
        raise LaminaError("Inputs mix strings and token ids: pass one kind only.")
    vocab = model.vocab_size
    for i, seq in enumerate(ids):
        if not seq:
            raise LaminaError(f"Input {i} has no tokens: remove empty inputs.")
        if vocab > 0 and (min(seq) < 0 or max(seq) >= vocab):
            raise LaminaError(
                f"Input {i} has a token id outside the vocabulary [0, {vocab}): {seq[:10]}..."
            )
    limit = model.max_length
    too_long = [i for i, seq in enumerate(ids) if limit and len(seq) > limit]
    if too_long:
        i = too_long[0]
        if not truncate:
            raise ContextLengthError(
                f"{len(too_long)} input(s) are longer than the model's context of {limit} tokens "
                f"(input {i} has {len(ids[i])}). Shorten them, or pass truncate=True to keep "
                f"the first {limit} tokens."
            )
        warnings.warn(
            f"Truncated {len(too_long)} input(s) to the model's context of {limit} tokens.",
            stacklevel=3,
        )
        ids = [seq[:limit] for seq in ids]
    return ids


def pick_positions(positions: Positions, lengths: torch.Tensor) -> torch.Tensor | None:
    """Real-token index to capture for each input (``None`` = all positions)."""
    n = len(lengths)
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions == "last":
            return lengths - 1
        if positions == "first":
            return torch.zeros(n, dtype=torch.long)
        raise LaminaError(
            f"Unknown positions {positions!r}: use 'all', 'last', 'first', an int, "
            "or one int per input."
        )
    if isinstance(positions, int):
        picks = torch.full((n,), positions, dtype=torch.long)
    else:
        picks = torch.as_tensor(list(positions), dtype=torch.long)
        if picks.shape != (n,):
            raise LaminaError(
                f"positions has {picks.numel()} entries for {n} inputs: give one int per input."
            )
    picks = torch.where(picks < 0, picks + lengths, picks)
    bad = ((picks < 0) | (picks >= lengths)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise LaminaError(
            f"Position {int(picks[i]) if picks[i] >= 0 else positions} is outside input {i}, "
            f"which has {int(lengths[i])} tokens."
        )
    return picks


def _pad(batch: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        sl = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq)
        mask[i, sl] = 1
    return ids, mask


def _select(t: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """``[B, S, ...]`` in padded layout -> ``[B, ...]`` at the picks, or ``[B, S, ...]``
    right-aligned with zeros beyond each input's length."""
    n = len(batch.rows)
    if t.ndim >= 1 and t.shape[0] == n * batch.width and t.shape[0] != n:
        t = t.unflatten(0, (n, batch.width))  # modules that flatten [B*S, ...] (OPT's MLP)
    if t.ndim < 2 or t.shape[0] != n:
        raise LaminaError(
            f"A captured tensor has shape {tuple(t.shape)}, not [batch, seq, ...]: "
            "lamina can only capture per-token activations."
        )
    b = torch.arange(len(batch.rows), device=t.device)
    if batch.picks is not None:
        return t[b, (batch.offsets + batch.picks).to(t.device)]
    if not bool(batch.offsets.any()):  # right padding: already aligned, pads zeroed by record()
        return t
    seq = torch.arange(t.shape[1], device=t.device)
    index = (batch.offsets.to(t.device)[:, None] + seq[None, :]).clamp(max=t.shape[1] - 1)
    out = t[b[:, None], index]
    valid = seq[None, :] < batch.lengths.to(t.device)[:, None]
    return out * valid.reshape(*valid.shape, *([1] * (t.ndim - 2))).to(out.dtype)


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    for attr in ("last_hidden_state", "hidden_states"):
        inner = getattr(value, attr, None)
        if isinstance(inner, torch.Tensor):
            return inner
    raise LaminaError(f"Cannot capture a module output of type {type(value).__name__}.")


class _Recorder:
    """Hooks that copy the requested sites of each batch into preallocated buffers."""

    def __init__(self, sites: list[Site], n: int, width: int, device: Any, dtype: Any) -> None:
        self.sites, self.n, self.width = sites, n, width
        self.device, self.dtype = torch.device(device), dtype
        self.buffers: dict[str, torch.Tensor] = {}
        self.batch: _Batch | None = None

    def record(self, site: Site, raw: torch.Tensor) -> None:
        assert self.batch is not None
        t = site.point.transform(raw) if site.point.transform else raw
        sel = _select(t, self.batch).detach()
        buf = self.buffers.get(site.name)
        if buf is None:
            shape = (self.n, *sel.shape[1:]) if self.batch.picks is not None else (
                self.n, self.width, *sel.shape[2:])
            buf = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.buffers[site.name] = buf
        rows = self.batch.rows.to(self.device)
        if self.batch.picks is not None:
            buf[rows] = sel.to(device=self.device, dtype=self.dtype)
        else:
            buf[rows, : sel.shape[1]] = sel.to(device=self.device, dtype=self.dtype)
            for row, length in zip(rows.tolist(), self.batch.lengths.tolist(), strict=True):
                if length < sel.shape[1]:
                    buf[row, length : sel.shape[1]] = 0  # padding holds no activation

    def attach(self, root: torch.nn.Module, stop_at: tuple[str, str] | None) -> list[Any]:
        by_module: dict[tuple[str, str], list[Site]] = {}
        for site in self.sites:
            by_module.setdefault((site.point.module, site.point.side), []).append(site)
        handles = []
        for (path, side), group in by_module.items():
            module = root.get_submodule(path)
            if side == "output":
                def hook(_m, _args, output, group=group):
                    raw = _first_tensor(output)
                    for site in group:
                        self.record(site, raw)
                handles.append(module.register_forward_hook(hook))
            else:
                def pre_hook(_m, args, kwargs, group=group):
                    raw = _first_tensor(args[0] if args else kwargs.get("hidden_states"))
                    for site in group:
                        self.record(site, raw)
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if stop_at is not None:  # registered last, so it runs after the captures there
            def stop(*_):
                raise _StopForward
            path, side = stop_at
            module = root.get_submodule(path)
            handles.append(
                module.register_forward_hook(stop)
                if side == "output"
                else module.register_forward_pre_hook(stop)
            )
        return handles


def _forward_kwargs(module: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def run_capture(
    model: Model,
    ids: list[list[int]],
    sites: list[Site],
    positions: Positions,
    batch_size: int,
    dtype: torch.dtype,
    device: Any,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Run the model over ``ids`` in batches; returns (buffers, lengths, picks)."""
    if batch_size < 1:
        raise LaminaError(f"batch_size must be at least 1, not {batch_size}.")
    lengths = torch.tensor([len(s) for s in ids])
    picks = pick_positions(positions, lengths)
    width = int(lengths.max())
    recorder = _Recorder(sites, len(ids), width, device, dtype)
    runner, stop_at = model.forward_plan(sites)
    accepted = _forward_kwargs(runner)
    left = model.padding_side == "left"
    order = torch.argsort(lengths, descending=True, stable=True)
    handles = recorder.attach(model.hf_model, stop_at)
    run_device = model.device
    try:
        with torch.inference_mode():
            bar = tqdm(total=len(ids), unit="input", disable=not progress, desc="collect")
            for start in range(0, len(ids), batch_size):
                rows = order[start : start + batch_size]
                chunk = [ids[i] for i in rows.tolist()]
                input_ids, mask = _pad(chunk, model.pad_id, left)
                recorder.batch = _Batch(
                    rows,
                    lengths[rows],
                    (input_ids.shape[1] - lengths[rows]) if left else torch.zeros_like(rows),
                    None if picks is None else picks[rows],
                    input_ids.shape[1],
                )
                kwargs: dict[str, Any] = {}
                if "attention_mask" in accepted:
                    kwargs["attention_mask"] = mask.to(run_device)
                if "position_ids" in accepted:
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(run_device)
                if "use_cache" in accepted and model.is_causal:
                    kwargs["use_cache"] = False
                try:
                    runner(input_ids.to(run_device), **kwargs)
                except _StopForward:
                    pass
                bar.update(len(rows))
            bar.close()
    finally:
        for h in handles:
            h.remove()
    missing = [s.name for s in sites if s.name not in recorder.buffers]
    if missing:
        raise LaminaError(
            f"The forward pass never reached {missing}: the module did not run for these inputs."
            " If another library replaced the model's modules in place after loading (e.g. a"
            " TransformerLens bridge booted on the same model), load it again with lamina.load."
        )
    return {s.name: recorder.buffers[s.name] for s in sites}, lengths, picks
