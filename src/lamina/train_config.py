"""The settings and the outcome of training a character model: plain records that
:mod:`lamina.train` fills and :mod:`lamina.modelcard` writes out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation settings (``seed`` preset = the notebook's model)."""

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    block_size: int = 256
    dropout: float = 0.2
    batch_size: int = 64
    steps: int = 4500
    lr: float = 3e-4
    lr_drop_step: int = 3500  # then lr * lr_drop_factor, as the study did
    lr_drop_factor: float = 0.1
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 100
    seed: int = 1337


@dataclass
class TrainResult:
    """Where the model was written and how training went."""

    path: Path
    steps: int
    train_loss: float
    val_loss: float
    n_params: int
    wall_time_s: float
    log: list[dict[str, Any]]
