"""Export a trained character model as a Hugging Face directory with its model card, loss log
and loss-curve figure; and the held-out loss the card reports (recomputable by anyone)."""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lamina.outputs import atomic_dir
from lamina.results import write_csv
from lamina.train_config import TrainConfig, TrainResult

HELDOUT_WINDOWS = 32


@torch.no_grad()
def heldout_loss(model: Any, tokenizer: Any, text: str, *, windows: int | None = None,
                 batch: int = 32, device: str | None = None) -> float:
    """Mean next-character cross-entropy (nats/char) over consecutive context-length windows
    of the last 10% of ``text`` (the first ``windows`` of them, or all), deterministic."""
    hf = model.hf_model if hasattr(model, "hf_model") else model
    tok = tokenizer if tokenizer is not None else model.tokenizer
    ctx = hf.config.n_positions
    val = text[int(0.9 * len(text)) :]
    n = (len(val) - 1) // ctx if windows is None else min(windows, (len(val) - 1) // ctx)
    ids = torch.tensor(tok(val[: n * ctx + 1])["input_ids"])
    device = device or str(next(hf.parameters()).device)
    x = ids[: n * ctx].reshape(n, ctx)
    y = ids[1 : n * ctx + 1].reshape(n, ctx)
    total = 0.0
    for start in range(0, n, batch):
        logits = hf(input_ids=x[start : start + batch].to(device)).logits.float()
        total += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y[start : start + batch].flatten().to(device), reduction="sum"))
    return total / (n * ctx)


def _hardware(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def code_cell(text: str) -> str:
    """``text`` as a Markdown inline code span that is safe in a table cell: a backtick fence
    longer than any run of backticks inside (so nothing ends it early, and HTML inside stays
    text), ``|`` escaped (GFM splits cells on it even inside code), line breaks as spaces."""
    text = " ".join(str(text).splitlines()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) the files of ``src`` into ``dst``."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_dir():
            _link_tree(item, dst / item.name)
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)


def _loss_figure(log: pd.DataFrame, path: Path) -> None:
    """The loss curve, drawn on a bare :class:`~matplotlib.figure.Figure` (no pyplot, so the
    caller's backend is left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(log["step"], log["train_loss"], alpha=0.4, linewidth=0.8, label="train (batch)")
    if "val_loss" in log:
        v = log.dropna(subset=["val_loss"])
        ax.plot(v["step"], v["val_loss"], "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def export_model(model: Any, tokenizer: Any, result: TrainResult, cfg: TrainConfig,
                 command: str | None = None, text: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors``, tokenizer files, ``training_log.csv``,
    ``loss_curve.png`` and ``MODEL_CARD.md`` into ``result.path``, atomically: the directory
    is replaced as a whole (keeping its ``checkpoint/``), so an interrupted export leaves the
    previous one."""
    out = result.path
    with atomic_dir(out) as tmp:
        _write_export(tmp, model, tokenizer, result, cfg, command, text)
        if (out / "checkpoint").is_dir():
            _link_tree(out / "checkpoint", tmp / "checkpoint")
    return out


def _write_export(out: Path, model: Any, tokenizer: Any, result: TrainResult, cfg: TrainConfig,
                  command: str | None, text: str | None) -> None:
    """The export's files and model card, written into ``out``."""
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log = pd.DataFrame(result.log[1:])
    write_csv(log, out / "training_log.csv")
    _loss_figure(log, out / "loss_curve.png")
    device = result.log[0].get("device", "cpu")
    heldout = heldout_loss(model, tokenizer, text) if text else None
    heldout_slice = heldout_loss(model, tokenizer, text, windows=HELDOUT_WINDOWS) if text else None
    commands = result.log[0].get("commands") or [command or "lamina.train.train_char_lm(...)"]
    rows = [
        ("command" if len(commands) == 1 else "commands (first run, then resumes)",
         "<br>".join(code_cell(c) for c in commands)),
        ("architecture", f"GPT-2 (`GPT2LMHeadModel`), {cfg.n_layer} layers, d_model {cfg.n_embd}, "
         f"{cfg.n_head} heads, context {cfg.block_size}, ReLU feed-forward ({4 * cfg.n_embd}), "
         f"dropout {cfg.dropout}, untied unembedding"),
        ("vocabulary", f"{len(result.log[0]['chars'])} characters (the corpus's unique ones)"),
        ("parameters", f"{result.n_params:,}"),
        ("steps", f"{result.steps} (batch {cfg.batch_size} x {cfg.block_size}, AdamW lr "
         f"{cfg.lr}, x{cfg.lr_drop_factor} from step {cfg.lr_drop_step}, seed {cfg.seed})"),
        ("wall time", f"{result.wall_time_s / 60:.1f} min"),
        ("hardware", f"{_hardware(device)}, torch {torch.__version__}"),
        ("final training loss (last batch)", f"{result.train_loss:.4f} nats/char"),
        (f"last validation estimate during training ({cfg.eval_batches} random windows)",
         f"{result.val_loss:.4f} nats/char"),
        ("**final validation loss** (every consecutive window of the last 10%)",
         f"**{heldout:.4f} nats/char**" if heldout is not None else "n/a"),
        (f"validation loss on its first {HELDOUT_WINDOWS} windows (what the tests recompute)",
         f"{heldout_slice:.4f} nats/char" if heldout_slice is not None else "n/a"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    card = f"""# Character-level GPT-2 trained by `lamina train`

| | |
|---|---|
{table}

Data split: first 90% of the characters train, last 10% validate (as in the seed notebook).
Settings: `{asdict(cfg)}`.

![loss curve](loss_curve.png)

Load it with `lamina.load("<this directory>")` or with plain `transformers`
(`AutoModelForCausalLM.from_pretrained`, `AutoTokenizer.from_pretrained`).
"""
    (out / "MODEL_CARD.md").write_text(card)
