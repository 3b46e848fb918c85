"""The registry of architecture families: one module per family, one line per family here.

To add a family, write ``lamina/families/<name>.py`` holding a :class:`Family` named
``FAMILY`` (see ``docs/families.md``), list it in :data:`FAMILIES`, and add a tiny random
config to ``tests/conftest.py``'s ``FAMILIES``.
"""

from __future__ import annotations

from typing import Any

from lamina.families import (
    bert,
    distilbert,
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gptj,
    llama,
    neox,
    olmo2,
    phi3,
    qwen3,
    roberta,
    t5,
)
from lamina.families.base import Dims, Family, HeadWeights, HookPoint, dims_from_config

FAMILIES: tuple[Family, ...] = (
    gpt2.FAMILY,
    neox.FAMILY,
    llama.FAMILY,
    bert.FAMILY,
    gptj.FAMILY,
    roberta.FAMILY,
    distilbert.FAMILY,
    t5.FAMILY,
    qwen3.FAMILY,
    phi3.FAMILY,
    olmo2.FAMILY,
    gemma.FAMILY,
    gemma2.FAMILY,
    gemma3.FAMILY,
)

SUPPORTED_FAMILIES = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_for(config: Any) -> Family | None:
    """The family serving ``config.model_type``, or ``None``."""
    model_type = getattr(config, "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "Dims", "Family", "HeadWeights", "HookPoint",
           "dims_from_config", "family_for"]
