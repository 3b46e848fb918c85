"""RoBERTa and XLM-RoBERTa: BERT's post-LN encoder under the same module paths
(:mod:`lamina.families.bert`), with position ids numbered from ``padding_idx + 1``.

Hugging Face builds RoBERTa's position ids from the input ids and the pad id (pads get
``padding_idx``, the real tokens ``padding_idx + 1, padding_idx + 2, ...``), so of its
``max_position_embeddings`` rows only ``max_position_embeddings - padding_idx - 1`` are usable
(514 - 2 = 512 for ``roberta-base``): that is ``Model.max_length``, and longer inputs are refused
or truncated. lamina passes the same position ids explicitly (``position_offset``), counted over
the attention mask, so they are right on either padding side even when the tokenizer pads with
an id other than ``config.pad_token_id``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lamina.families import bert
from lamina.families.base import Dims, config_int, dims_from_config


def padding_idx(config: Any) -> int:
    """The position-embedding row of padding, ``config.pad_token_id`` (RoBERTa's default 1)."""
    return config_int(config, "pad_token_id", default=1)


def dims(config: Any) -> Dims:
    """BERT's dims, with the usable context ``max_position_embeddings - padding_idx - 1``."""
    d = dims_from_config(config)
    usable = None if d.max_length is None else d.max_length - padding_idx(config) - 1
    return dataclasses.replace(d, max_length=usable if usable and usable > 0 else None)


FAMILY = dataclasses.replace(
    bert.FAMILY, name="roberta", model_types=("roberta", "xlm-roberta"), dims=dims,
    position_offset=lambda config: padding_idx(config) + 1,
    notes="As BERT (post-LN: hook_resid_mid/hook_resid_post are before their LayerNorms, the "
          "block output is hook_normalized_resid_post). Position ids start at padding_idx + 1; "
          "max_length = max_position_embeddings - padding_idx - 1.",
)
