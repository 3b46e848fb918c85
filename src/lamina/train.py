"""Train a character-level GPT-2 on a text, as the first seed notebook's model was trained.

Vocabulary = the text's unique characters, first 90% of the text trains and the last 10%
validates. Seeded and reproducible: the batch and dropout noise of step ``s`` depend only on
``(seed, s)``, so a run killed at any moment resumes from its last checkpoint and finishes
with the same weights. Checkpoints and the exported model are safetensors, never pickles; the
output directory is a standard Hugging Face model directory (``GPT2LMHeadModel`` + a character
tokenizer that ``AutoTokenizer`` loads), so ``lamina.load(DIR)`` and plain ``transformers`` both
read it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lamina.corpus import text_of
from lamina.errors import LaminaError


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


PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(),
    # CPU-sized: about 0.6 s a step on 2 cores with bfloat16 autocast
    "small": TrainConfig(n_layer=4, n_embd=256, n_head=4, block_size=128, batch_size=64,
                         steps=5000, lr=1e-3, lr_drop_step=4000, dropout=0.1, eval_every=250),
    "tiny": TrainConfig(n_layer=2, n_embd=32, n_head=2, block_size=32, batch_size=8, steps=20,
                        lr=3e-3, lr_drop_step=1000, eval_every=10, eval_batches=2,
                        checkpoint_every=5, dropout=0.0),
}


def char_tokenizer(chars: list[str]) -> Any:
    """A fast character tokenizer (one token per character, no special tokens) that
    ``AutoTokenizer.from_pretrained`` reloads with no custom code. Unknown characters raise."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def _model_config(cfg: TrainConfig, vocab_size: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
        activation_function="relu", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, architectures=["GPT2LMHeadModel"],
    )


def split_text(text: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(characters, train ids, validation ids): first 90% trains, last 10% validates."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return chars, ids[:n], ids[n:]


def _batch(data: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
    x = torch.stack([data[s : s + cfg.block_size] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + cfg.block_size + 1] for s in starts.tolist()])
    return x, y


def _loss(model: Any, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def estimate_loss(model: Any, data: torch.Tensor, cfg: TrainConfig, *, batches: int,
                  seed: int, device: str, autocast: bool = False) -> float:
    """Mean cross-entropy (nats/char) over ``batches`` random windows of ``data``."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(batches):
        x, y = _batch(data, cfg, gen)
        losses.append(float(_loss(model, x.to(device), y.to(device), autocast)))
    model.train(was_training)
    return sum(losses) / len(losses)


def _save_checkpoint(ckpt: Path, model: Any, opt: torch.optim.Optimizer, step: int,
                     log: list[dict[str, Any]]) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in state["state"].items()
               for k, v in s.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(
        {"step": step, "param_groups": state["param_groups"], "log": log}))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)  # the rename is the commit: a checkpoint is complete or absent


def _load_checkpoint(ckpt: Path, model: Any, opt: torch.optim.Optimizer
                     ) -> tuple[int, list[dict[str, Any]]]:
    meta = json.loads((ckpt / "state.json").read_text())
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    flat = load_file(str(ckpt / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["log"])


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


def train_char_lm(
    corpus: str | Path,
    out: str | Path,
    *,
    preset: str = "seed",
    steps: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    autocast: bool | None = None,
    progress: bool = True,
    command: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train (or resume training) a character-level GPT-2 on ``corpus`` and export it to ``out``.

    Args:
        corpus: a text file path, or the text itself.
        out: output directory; ``out/checkpoint`` holds the resumable state.
        preset: ``"seed"`` (the notebook's 10.8M-parameter model), ``"small"`` or ``"tiny"``.
        steps: override the preset's number of steps.
        device: ``"cuda"`` or ``"cpu"`` (default: CUDA when available).
        seed: override the preset's seed (1337, as the study).
        autocast: bfloat16 autocast (default: on for CPU, where it is ~3x faster).
        command: the command line recorded in the model card.
        overrides: any other :class:`TrainConfig` field.
    """
    if preset not in PRESETS:
        raise LaminaError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    cfg = replace(PRESETS[preset], **overrides)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    text = text_of(corpus)
    chars, train, val = split_text(text)
    if len(val) <= cfg.block_size + 1:
        raise LaminaError(
            f"The text is too short for a context of {cfg.block_size}: its last 10% has "
            f"{len(val)} characters. Use a longer text or a smaller block_size.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    autocast = (device == "cpu") if autocast is None else autocast
    from transformers import GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(_model_config(cfg, len(chars))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    out = Path(out)
    ckpt = out / "checkpoint"
    step, log = 0, []
    if (ckpt / "state.json").exists():
        saved = json.loads((ckpt / "state.json").read_text()).get("log", [])
        same = {k: v for k, v in asdict(cfg).items() if k != "steps"}
        previous = {k: v for k, v in (saved[0].get("config") or {}).items() if k != "steps"}
        if saved and previous and previous != same:
            raise LaminaError(f"{ckpt} belongs to a run with other settings: use another --out.")
        step, log = _load_checkpoint(ckpt, model, opt)
    if not log:
        log = [{"config": asdict(cfg), "chars": "".join(chars), "device": device}]
    if command:
        log[0].setdefault("commands", []).append(command)
    started = time.time() - sum(r.get("seconds", 0.0) for r in log[1:])
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", unit="step")
    train_loss = val_loss = math.nan
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (cfg.lr_drop_factor if step >= cfg.lr_drop_step else 1.0)
        torch.manual_seed(cfg.seed * 100_003 + step)  # dropout noise of this step
        x, y = _batch(train, cfg, torch.Generator().manual_seed(cfg.seed + 7919 * step))
        t0 = time.time()
        loss = _loss(model, x.to(device), y.to(device), autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        train_loss = float(loss.detach())
        record: dict[str, Any] = {"step": step, "train_loss": train_loss,
                                  "seconds": time.time() - t0}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_loss = estimate_loss(model, val, cfg, batches=cfg.eval_batches, seed=cfg.seed,
                                     device=device, autocast=autocast)
            record["val_loss"] = val_loss
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        log.append(record)
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(ckpt, model, opt, step, log)
    bar.close()
    from lamina.modelcard import export_model

    evals = [r["val_loss"] for r in log[1:] if "val_loss" in r]
    result = TrainResult(out, step, train_loss if not math.isnan(train_loss) else
                         log[-1].get("train_loss", math.nan), evals[-1] if evals else val_loss,
                         sum(p.numel() for p in model.parameters()), time.time() - started, log)
    export_model(model, char_tokenizer(chars), result, cfg, command, text)
    return result
