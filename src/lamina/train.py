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

import contextlib
import hashlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lamina.checks import check_int
from lamina.corpus import text_of
from lamina.errors import LaminaError
from lamina.outputs import check_output_dir
from lamina.train_config import TrainConfig, TrainResult

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


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint at ``step``; running
    the same call (or command) again resumes from it."""

    def __init__(self, step: int, steps: int, checkpoint: Path, signum: int) -> None:
        super().__init__(f"interrupted at step {step} of {steps} (checkpoint saved in "
                         f"{checkpoint}); run the same command again to resume.")
        self.step, self.signum = step, signum


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM instead of dying, so the loop can save a checkpoint and stop at
    the end of its step (a second signal interrupts at once). Main thread only: elsewhere
    signals cannot be caught and the list stays empty."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _device(device: str | None) -> str:
    """``device``, checked: a torch device this machine has (default: CUDA when available)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LaminaError(f"Unknown device {device!r}: use 'cpu' or 'cuda'.",
                          cli=f"Unknown --device {device!r}: use cpu or cuda.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LaminaError("CUDA is not available on this machine: pass device='cpu', or leave "
                          "device unset to choose automatically.",
                          cli="CUDA is not available on this machine: pass --device cpu, or "
                          "leave --device out to choose automatically.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LaminaError(f"No GPU {device!r}: this machine has {torch.cuda.device_count()}.")
    if dev.type not in ("cpu", "cuda"):
        raise LaminaError(f"Training runs on 'cpu' or 'cuda', not {device!r}.",
                          cli=f"Training runs on --device cpu or cuda, not {device!r}.")
    return str(dev)


def _config(preset: str, steps: Any, seed: Any, overrides: dict[str, Any]) -> TrainConfig:
    """The preset's settings with the overrides, each checked."""
    if preset not in PRESETS:
        raise LaminaError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}.",
                          cli=f"Unknown --preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    names = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise LaminaError(f"Unknown training setting(s) {unknown}: TrainConfig has {names}.")
    for name, value, low in (("steps", steps, 1), ("seed", seed, 0)):
        if value is not None:
            check_int(value, name, low, most=2**32 - 1, option=f"--{name}")
    cfg = replace(PRESETS[preset], **overrides)
    return replace(cfg, steps=cfg.steps if steps is None else steps,
                   seed=cfg.seed if seed is None else seed)


def _resume(ckpt: Path, model: Any, opt: torch.optim.Optimizer, cfg: TrainConfig,
            chars: list[str], digest: str) -> tuple[int, list[dict[str, Any]]]:
    """Load ``ckpt`` after checking that it belongs to this run (same settings, same text)."""
    try:
        first = (json.loads((ckpt / "state.json").read_text()).get("log") or [{}])[0]
        previous = {k: v for k, v in (first.get("config") or {}).items() if k != "steps"}
    except (OSError, ValueError, AttributeError, IndexError, TypeError) as err:
        raise LaminaError(f"The checkpoint {ckpt} is damaged ({err}): delete it to start "
                          "over.") from None
    same = {k: v for k, v in asdict(cfg).items() if k != "steps"}
    if ((previous and previous != same) or first.get("chars", "".join(chars)) != "".join(chars)
            or first.get("corpus_sha256", digest) != digest):
        raise LaminaError(f"{ckpt} belongs to a run with other settings or another text: use "
                          "another out, or delete it to start over.",
                          cli=f"{ckpt} belongs to a run with other settings or another "
                          "--text-file: use another --out, or delete it to start over.")
    try:
        step, log = _load_checkpoint(ckpt, model, opt)
    except Exception as err:  # safetensors/torch errors on a damaged file
        raise LaminaError(f"The checkpoint {ckpt} is damaged ({type(err).__name__}): delete "
                          "it to start over.") from None
    if step > cfg.steps:
        raise LaminaError(f"{ckpt} is already at step {step}, past steps={cfg.steps}: ask for "
                          f"at least {step} steps, or use another out.",
                          cli=f"{ckpt} is already at step {step}, past --steps {cfg.steps}: "
                          f"pass --steps {step} or more, or use another --out.")
    return step, log


EXPORT_MARKERS = ("checkpoint", "MODEL_CARD.md")  # an ``out`` holding one is ours to replace


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
        corpus: the text itself (a ``str``), or a ``pathlib.Path`` to a UTF-8 text file.
        out: output directory; ``out/checkpoint`` holds the resumable state. It is checked
            before the work; the final export replaces it atomically (keeping the checkpoint).
        preset: ``"seed"`` (the notebook's 10.8M-parameter model), ``"small"`` or ``"tiny"``.
        steps: override the preset's number of steps.
        device: ``"cuda"`` or ``"cpu"`` (default: CUDA when available).
        seed: override the preset's seed (1337, as the study).
        autocast: bfloat16 autocast (default: on for CPU, where it is ~3x faster).
        command: the command line recorded in the model card.
        overrides: any other :class:`TrainConfig` field.

    A checkpoint is saved every ``checkpoint_every`` steps and at the last step. On SIGINT or
    SIGTERM the step in progress finishes, a checkpoint is saved and
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised: the same call resumes.
    """
    cfg = _config(preset, steps, seed, overrides)
    device = _device(device)
    out = check_output_dir(out, option="out", marker=EXPORT_MARKERS)
    text = text_of(corpus)
    chars, train, val = split_text(text)
    if len(val) <= cfg.block_size + 1:
        need = 10 * (cfg.block_size + 2)
        tiny = PRESETS["tiny"].block_size
        shorter = (f", or preset='tiny' (context {tiny})", f", or --preset tiny (context {tiny})"
                   ) if cfg.block_size > tiny else ("", "")
        raise LaminaError(
            f"The text is too short for a context of {cfg.block_size}: its last 10% (the "
            f"validation part) has {len(val)} characters. Give at least {need} "
            f"characters{shorter[0]}.",
            cli=f"The --text-file is too short for a context of {cfg.block_size}: give at least "
            f"{need} characters{shorter[1]}.")
    autocast = (device == "cpu") if autocast is None else autocast
    from transformers import GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(_model_config(cfg, len(chars))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    ckpt = out / "checkpoint"
    digest = hashlib.sha256(text.encode()).hexdigest()
    step, log = 0, []
    if ckpt.exists():
        step, log = _resume(ckpt, model, opt, cfg, chars, digest)
    if not log:
        log = [{"config": asdict(cfg), "chars": "".join(chars), "corpus_sha256": digest,
                "device": device}]
    if command:
        log[0].setdefault("commands", []).append(command)
    started = time.time() - sum(r.get("seconds", 0.0) for r in log[1:])
    with _stop_requests() as stop:
        step, train_loss, val_loss = _loop(model, opt, train, val, cfg, step, log, ckpt,
                                           device, autocast, progress, stop)
        from lamina.modelcard import export_model

        evals = [r["val_loss"] for r in log[1:] if "val_loss" in r]
        result = TrainResult(out, step, train_loss if not math.isnan(train_loss) else
                             log[-1].get("train_loss", math.nan),
                             evals[-1] if evals else val_loss,
                             sum(p.numel() for p in model.parameters()),
                             time.time() - started, log)
        export_model(model, char_tokenizer(chars), result, cfg, command, text)
    return result


def _loop(model: Any, opt: torch.optim.Optimizer, train: torch.Tensor, val: torch.Tensor,
          cfg: TrainConfig, step: int, log: list[dict[str, Any]], ckpt: Path, device: str,
          autocast: bool, progress: bool, stop: list[int]) -> tuple[int, float, float]:
    """Train from ``step`` to ``cfg.steps``, checkpointing every ``checkpoint_every`` steps,
    at the end, and when a stop was requested (then :class:`TrainingInterrupted`)."""
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
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
            _save_checkpoint(ckpt, model, opt, step, log)
        if stop and step < cfg.steps:
            bar.close()
            raise TrainingInterrupted(step, cfg.steps, ckpt, stop[0])
    bar.close()
    return step, train_loss, val_loss

