"""A model's identity by content: a hash of its config and every weight, so that a store knows
which model it was collected from whatever path spelled it (and a model retrained into the same
directory is another model)."""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

import torch

#: Config keys that say where or how a model was loaded, not what it computes (the tensors'
#: dtypes are hashed with the tensors).
_PROVENANCE = ("_name_or_path", "transformers_version", "_commit_hash", "dtype", "torch_dtype")

_cache: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, str]] = (
    weakref.WeakKeyDictionary())


def _config_json(config: Any) -> str:
    if config is None:
        return "null"
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    for key in _PROVENANCE:
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, default=str)


def model_fingerprint(model: Any) -> str:
    """``"sha256:<hex>"`` over the config (as JSON, without load-path and version keys) and
    every tensor of the ``state_dict`` (name, dtype, shape, bytes) in ``state_dict`` order.

    ``model`` is a :class:`lamina.Model` or an ``nn.Module``. The cost is one pass over the
    weights' bytes, linear in the model's size at sha256 speed (roughly 1 GB/s: ~10 ms for
    the 13 MB shakespeare-char, ~0.1 s for MiniLM, ~15 s for a 7B model in bfloat16, plus the
    copy to the CPU for weights on a GPU). The result is cached per module while no tensor is
    replaced or modified in place (torch's version counters), so repeated checks are free.
    """
    module: torch.nn.Module = getattr(model, "hf_model", model)
    config_json = _config_json(getattr(module, "config", None))
    state = module.state_dict()
    key = (config_json, tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype)
                              for name, t in state.items()))
    cached = _cache.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(config_json.encode())
    for name, t in state.items():
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            h.update(memoryview(data.view(torch.uint8).numpy()))
    digest = "sha256:" + h.hexdigest()
    _cache[module] = (key, digest)
    return digest
