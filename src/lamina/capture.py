"""Batched capture of chosen sites at chosen positions, with hooks on the unmodified model.

Memory grows with what was asked, not with the model: each hook slices the requested positions
out of its tensor and copies them into a preallocated buffer on the output device, and the
forward pass stops right after the deepest block needed.

Two cases are handled so that nothing is silently wrong:

* a ``module:`` site whose output has no sequence axis (``[batch, d]``, e.g. BERT's pooler) is
  found by two tiny probe passes (inputs of 2 and 3 tokens) and kept whole, one row per input;
* a model whose ``forward`` takes no ``attention_mask`` (or whose signature cannot be read) is
  never given a padded batch: its batches hold inputs of one length only.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from lamina.errors import LaminaError
from lamina.inputs import Positions, check_batch_size, pick_positions
from lamina.sites import Site


@dataclass(frozen=True)
class CapturePlan:
    """Everything capture needs, decided by the model (:meth:`lamina.Model.plan`).

    Attributes:
        root: the module hook paths start from (``Model.hf_model``).
        runner: the module called on each batch (the base model, or T5's encoder).
        sites: the resolved sites, in forward order.
        positions: which positions to keep (checked).
        stop_at: ``(path, side)`` after which the forward pass may stop (``None``: run it all).
        pad_id, left_padding: how batches are padded.
        device: where input ids are sent.
        takes_mask, takes_position_ids, no_cache: the forward arguments ``runner`` accepts
            (a model without ``attention_mask`` gets batches of one length only).
        position_offset: added to the position ids passed (``0, 1, ...`` over each input's
            real tokens); RoBERTa numbers positions from ``padding_idx + 1``.
    """

    root: torch.nn.Module
    runner: torch.nn.Module
    sites: list[Site]
    positions: Positions
    stop_at: tuple[str, str] | None
    pad_id: int
    left_padding: bool
    device: torch.device
    takes_mask: bool
    takes_position_ids: bool
    no_cache: bool
    position_offset: int = 0


def forward_arguments(module: torch.nn.Module, causal: bool) -> dict[str, bool]:
    """Which of lamina's forward arguments ``module.forward`` declares (none when its
    signature cannot be read): ``takes_mask``, ``takes_position_ids``, ``no_cache``."""
    try:
        accepted = set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        accepted = set()
    return {"takes_mask": "attention_mask" in accepted,
            "takes_position_ids": "position_ids" in accepted,
            "no_cache": "use_cache" in accepted and causal}


class _StopForward(Exception):
    """Raised by a hook once every requested site has been captured."""


@dataclass
class _Batch:
    rows: torch.Tensor  # [B] original input indices
    lengths: torch.Tensor  # [B] real tokens
    offsets: torch.Tensor  # [B] index of the first real token in the padded layout
    picks: torch.Tensor | None  # [B] chosen real-token index, or None for all positions
    width: int  # padded sequence length S


class Captured(NamedTuple):
    """What :func:`run_capture` returns."""

    tensors: dict[str, torch.Tensor]  # site -> [n, ...]
    lengths: torch.Tensor  # [n] real tokens of each input
    picks: torch.Tensor | None  # [n] captured position, None for all positions
    whole: list[str]  # module: sites without a sequence axis, kept whole


def _pad(batch: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        sl = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq)
        mask[i, sl] = 1
    return ids, mask


def _batch_major(t: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Undo modules that flatten ``[B, S, ...]`` into ``[B*S, ...]`` (OPT's MLP)."""
    if t.ndim >= 1 and t.shape[0] == n * width and t.shape[0] != n:
        return t.unflatten(0, (n, width))
    return t


def _select(t: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """``[B, S, ...]`` in padded layout -> ``[B, ...]`` at the picks, or ``[B, S, ...]``
    with real tokens first and padding after (zeros beyond each input's length)."""
    n = len(batch.rows)
    t = _batch_major(t, n, batch.width)
    if t.ndim < 2 or t.shape[0] != n or t.shape[1] != batch.width:
        raise LaminaError(
            f"A captured tensor has shape {tuple(t.shape)}, not [batch, seq, ...] = "
            f"[{n}, {batch.width}, ...]: lamina can only capture per-token activations here."
        )
    b = torch.arange(n, device=t.device)
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

    def __init__(self, sites: list[Site], n: int, width: int, device: Any, dtype: Any,
                 whole: list[str]) -> None:
        self.sites, self.n, self.width = sites, n, width
        self.device, self.dtype = torch.device(device), dtype
        self.whole = set(whole)
        self.buffers: dict[str, torch.Tensor] = {}
        self.batch: _Batch | None = None

    def record(self, site: Site, raw: torch.Tensor) -> None:
        assert self.batch is not None
        t = site.point.transform(raw) if site.point.transform else raw
        rows = self.batch.rows.to(self.device)
        if site.name in self.whole:  # no sequence axis: one row per input, as it is
            if t.ndim < 1 or t.shape[0] != len(rows):
                raise LaminaError(f"{site.name} has shape {tuple(t.shape)}, not [batch, ...].")
            self._buffer(site.name, (self.n, *t.shape[1:]))[rows] = t.detach().to(
                device=self.device, dtype=self.dtype)
            return
        sel = _select(t, self.batch).detach()
        if self.batch.picks is not None:
            self._buffer(site.name, (self.n, *sel.shape[1:]))[rows] = sel.to(
                device=self.device, dtype=self.dtype)
            return
        buf = self._buffer(site.name, (self.n, self.width, *sel.shape[2:]))
        buf[rows, : sel.shape[1]] = sel.to(device=self.device, dtype=self.dtype)
        for row, length in zip(rows.tolist(), self.batch.lengths.tolist(), strict=True):
            if length < sel.shape[1]:
                buf[row, length : sel.shape[1]] = 0  # padding holds no activation

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None:
            buf = self.buffers[name] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return buf

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


def _run(plan: CapturePlan, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
    """One forward pass of ``plan.runner`` with the arguments it declares."""
    kwargs: dict[str, Any] = {}
    if plan.takes_mask:
        kwargs["attention_mask"] = mask.to(plan.device)
    if plan.takes_position_ids:
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + plan.position_offset
        kwargs["position_ids"] = positions.to(plan.device)
    if plan.no_cache:
        kwargs["use_cache"] = False
    try:
        plan.runner(input_ids.to(plan.device), **kwargs)
    except _StopForward:
        pass


def _whole_sites(plan: CapturePlan, token: int) -> list[str]:
    """The ``module:`` sites whose output has no sequence axis: their shape does not follow
    the input's length over two probe passes (2 and 3 tokens)."""
    probed = [s for s in plan.sites if s.name.startswith("module:")]
    if not probed:
        return []
    shapes: dict[str, dict[int, tuple[int, ...]]] = {s.name: {} for s in probed}
    width = 0

    def hook(name: str) -> Any:
        def record(_m: Any, _args: Any, out: Any) -> None:  # returns None: output unchanged
            t = _batch_major(_first_tensor(out), 1, width)
            shapes[name].setdefault(width, tuple(t.shape))
        return record

    handles = [plan.root.get_submodule(s.point.module).register_forward_hook(hook(s.name))
               for s in probed]
    try:
        with torch.inference_mode():
            for width in (2, 3):
                _run(plan, torch.full((1, width), token), torch.ones((1, width), dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    whole = []
    for name, seen in shapes.items():
        a, b = seen.get(2), seen.get(3)
        if a is None or b is None or (len(a) >= 2 and (a[1], b[1]) == (2, 3)):
            continue  # per-token (a module that never runs is reported by the capture)
        if a != b:
            raise LaminaError(
                f"{name} has output shapes {a} and {b} for inputs of 2 and 3 tokens: neither "
                "[batch, seq, ...] nor [batch, ...]. Capture a submodule with a plainer output.")
        whole.append(name)
    return whole


def _batches(order: torch.Tensor, lengths: torch.Tensor, size: int,
             one_length: bool) -> Iterator[torch.Tensor]:
    """Rows of each forward pass (``order`` is sorted by length), at most ``size`` per pass,
    and all of one length when ``one_length``."""
    start = 0
    while start < len(order):
        stop = min(start + size, len(order))
        if one_length:
            same = (lengths[order[start:stop]] == lengths[order[start]]).nonzero().flatten()
            stop = start + int(same.max()) + 1  # sorted by length: the equal ones come first
        yield order[start:stop]
        start = stop


def run_capture(
    plan: CapturePlan,
    ids: list[list[int]],
    batch_size: int,
    dtype: torch.dtype,
    device: Any,
    progress: bool,
) -> Captured:
    """Run ``plan`` over token ids ``ids`` in batches of at most ``batch_size`` inputs and keep
    its sites at its positions, as ``dtype`` on ``device``."""
    check_batch_size(batch_size)
    sites, positions = plan.sites, plan.positions
    lengths = torch.tensor([len(s) for s in ids])
    picks = pick_positions(positions, lengths)
    width = int(lengths.max())
    whole = _whole_sites(plan, ids[0][0])
    if whole:
        warnings.warn(
            f"{', '.join(whole)}: no sequence axis (output [batch, ...]), so captured whole, "
            f"one row per input; positions={positions!r} does not apply there "
            "(acts.meta['no_sequence_axis'] lists them).", stacklevel=3)
    recorder = _Recorder(sites, len(ids), width, device, dtype, whole)
    left = plan.left_padding
    order = torch.argsort(lengths, descending=True, stable=True)
    handles = recorder.attach(plan.root, plan.stop_at)
    try:
        with torch.inference_mode():
            bar = tqdm(total=len(ids), unit="input", disable=not progress, desc="collect")
            for rows in _batches(order, lengths, batch_size, not plan.takes_mask):
                input_ids, mask = _pad([ids[i] for i in rows.tolist()], plan.pad_id, left)
                recorder.batch = _Batch(
                    rows,
                    lengths[rows],
                    (input_ids.shape[1] - lengths[rows]) if left else torch.zeros_like(rows),
                    None if picks is None else picks[rows],
                    input_ids.shape[1],
                )
                _run(plan, input_ids, mask)
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
    return Captured({s.name: recorder.buffers[s.name] for s in sites}, lengths, picks, whole)
