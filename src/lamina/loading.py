"""Checking what :func:`lamina.load` and :meth:`lamina.Model.collect` are given before any
work: devices, dtypes, local model directories and hub ids (which fail fast without a network).

Nothing here names a hub host: the hub's address is read from ``huggingface_hub`` itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from lamina.errors import LaminaError
from lamina.families import SUPPORTED_FAMILIES, family_for

#: Dtypes accepted for weights and captured activations.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FLOAT_NAMES = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
_TRUE = {"1", "ON", "YES", "TRUE"}
_BUILTIN_NAMES = "minilm, shakespeare-char"  # lamina.models.BUILTINS (tested to agree)


def parse_dtype(value: str | torch.dtype, *, allow_auto: bool = False,
                option: str = "--dtype") -> torch.dtype | str:
    """``value`` as one of :data:`FLOAT_DTYPES` (``"auto"`` too when ``allow_auto``), or a
    :class:`LaminaError`; ``option`` is the CLI's name for it."""
    if allow_auto and value == "auto":
        return "auto"
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
    if dtype not in FLOAT_DTYPES:
        choices = _FLOAT_NAMES + (" or auto" if allow_auto else "")
        shown = value if isinstance(value, str) else str(value).removeprefix("torch.")
        raise LaminaError(f"dtype={value!r} is not a float dtype: use one of {choices}.",
                          cli=f"{option} {shown} is not a float dtype: use one of {choices}.")
    return dtype


def parse_device(value: str | torch.device | None, *, option: str = "--device") -> torch.device:
    """``value`` as a device this machine has (``None``: CUDA when available, else CPU), or a
    :class:`LaminaError` saying which devices there are."""
    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    have = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else []) + (
        ["mps"] if mps else [])

    def refuse(why: str) -> LaminaError:
        return LaminaError(f"device={str(value)!r}: {why}. This machine has: {', '.join(have)}.",
                           cli=f"{option} {value}: {why}. This machine has: {', '.join(have)}.")

    if not isinstance(value, (str, torch.device)):
        raise refuse(f"a device is a string such as 'cpu' or 'cuda', not {type(value).__name__}")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise refuse("not a device name") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not n_cuda:
            raise refuse("CUDA is not available (no GPU, or torch was built without CUDA)")
        if device.index is not None and device.index >= n_cuda:
            raise refuse(f"there are only {n_cuda} CUDA device(s)")
        return device
    if device.type == "mps" and mps:
        return device
    raise refuse(f"{device.type} devices are not available or not supported")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path, never a hub id (``org/name``)."""
    return (name.startswith((".", "/", "~", "\\")) or "\\" in name or name.endswith("/")
            or name.count("/") >= 2 or Path(name).is_absolute())


def _config_of(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LaminaError(f"{path / 'config.json'} is not valid JSON ({err}).") from None
    if not isinstance(config, dict):
        raise LaminaError(f"{path / 'config.json'} is not a JSON object.")
    return config


def remote_code_error(name: str, detail: str = "") -> LaminaError:
    """The refusal of a model that needs its repository's own Python code."""
    why = f"{name} needs its own Python code to load{detail}, and running a model's code is off."
    return LaminaError(f"{why} If you trust its author, pass trust_remote_code=True to "
                       "lamina.load.",
                       cli=f"{why} The command line never runs it: if you trust its author, "
                       "load it in Python with lamina.load(..., trust_remote_code=True).")


def unknown_type_error(name: str, model_type: object) -> LaminaError:
    """The refusal of a config whose ``model_type`` transformers does not know."""
    import transformers

    what = (f"its config.json has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know" if model_type is not None
            else f"its config.json has no model_type that transformers {transformers.__version__} "
            "knows")
    tail = (f"lamina's named sites cover {SUPPORTED_FAMILIES}; any other architecture that "
            "transformers loads works with 'module:<path>' sites, and so does any nn.Module")
    return LaminaError(f"Cannot load {name}: {what}. {tail}: build it yourself and pass "
                       "lamina.load((module, tokenizer)).",
                       cli=f"Cannot load {name}: {what}. {tail}, built in Python and passed "
                       "as lamina.load((module, tokenizer)).")


def check_local_dir(name: str, *, trust_remote_code: bool) -> Path:
    """The model directory ``name``, after checking it exists, has a readable config.json and
    needs no code that is not allowed to run."""
    path = Path(name).expanduser()
    if not path.exists():
        raise LaminaError(f"No such directory: {name}. Give a Hugging Face model directory, a "
                          f"built-in name ({_BUILTIN_NAMES}) or a hub id (org/name).")
    if not path.is_dir():
        raise LaminaError(f"{name} is a file, not a Hugging Face model directory.")
    if not (path / "config.json").is_file():
        raise LaminaError(f"{name} is not a Hugging Face model directory (no config.json in it).")
    config = _config_of(path)
    if "auto_map" in config and not trust_remote_code:
        raise remote_code_error(name, f" (config.json has auto_map: "
                                      f"{', '.join(map(str, config['auto_map']))})")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if "auto_map" not in config and config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise unknown_type_error(name, config.get("model_type"))
    return path


def offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    import huggingface_hub.constants as hub

    env = {os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return bool(hub.HF_HUB_OFFLINE) or bool(env & _TRUE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (or to the proxy configured for it) opens within
    ``timeout`` seconds; the address is ``huggingface_hub.constants.ENDPOINT``."""
    import huggingface_hub.constants as hub

    url = urlsplit(hub.ENDPOINT)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not url.hostname:
        return True  # an endpoint we cannot parse: let huggingface_hub try it
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    done: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            done.append(True)
        except OSError:
            done.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # name lookups ignore timeouts
    thread.start()
    thread.join(timeout + 0.5)
    return bool(done and done[0])


def offline_error(name: str, *, hub_off: bool) -> LaminaError:
    """A hub id that is not in the local cache and cannot be downloaded now."""
    why = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if hub_off
           else "the Hugging Face hub cannot be reached from here")
    fix = ("download it where the hub is reachable and pass its directory, or unset "
           "HF_HUB_OFFLINE where it is" if hub_off else "download it where the hub is "
           "reachable and pass its directory, or set HF_HUB_OFFLINE=1 to use a copy already "
           "in the cache")
    return LaminaError(f"Cannot load {name!r}: it is not in the local Hugging Face cache and "
                       f"{why}. To work offline, {fix}. Built-in models: {_BUILTIN_NAMES}.")


def from_pretrained(name: str, source: str, *, local: bool, dtype: Any, revision: str | None,
                    trust_remote_code: bool, hf_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)`` from a local directory or a hub id, with lamina's errors: a
    hub id is tried from the cache first and downloaded only when the hub answers."""
    import transformers
    from transformers.utils import logging as hf_logging

    def attempt(local_only: bool) -> tuple[Any, Any]:
        common = {"revision": revision, "trust_remote_code": trust_remote_code,
                  "local_files_only": local_only}
        config = transformers.AutoConfig.from_pretrained(source, **common)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        model = _auto_class(config).from_pretrained(source, dtype=dtype, **common, **hf_kwargs)
        return model, tokenizer

    hf_kwargs = dict(hf_kwargs)
    hf_kwargs.pop("local_files_only", None)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is only noise here
    try:
        try:
            return attempt(local_only=True)
        except OSError:
            if local:
                raise
        if offline():
            raise offline_error(name, hub_off=True) from None
        if not hub_reachable():
            raise offline_error(name, hub_off=False) from None
        return attempt(local_only=False)
    except LaminaError:
        raise
    except OSError as err:
        raise LaminaError(f"Could not load {name!r}: {_first_line(err)} A hub id needs the hub "
                          "(or its local cache); a local path must be a model directory.") from None
    except ValueError as err:
        text = str(err)
        if "trust_remote_code" in text:
            raise remote_code_error(name) from None
        if "model type" in text or "Unrecognized model" in text:
            found = re.search(r"model type `([^`]+)`", text)
            raise unknown_type_error(name, found.group(1) if found else None) from None
        raise LaminaError(f"Could not load {name!r}: {_first_line(err)}") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__).rstrip(".") + "."


def _auto_class(config: Any) -> Any:
    """The transformers class to build: the family's (T5: its encoder), else the LM head
    that ``config.architectures`` names, else the bare model."""
    import transformers

    family = family_for(config)
    if family is not None and family.loader == "t5_encoder":
        return transformers.T5EncoderModel
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return transformers.AutoModelForCausalLM
    if any(a.endswith("ForMaskedLM") for a in archs):
        return transformers.AutoModelForMaskedLM
    return transformers.AutoModel
