"""Sampling text from a causal LM, cropping the context to the model's window (so a
character model can write far beyond its 256-character context)."""

from __future__ import annotations

import torch

from lamina.errors import LaminaError
from lamina.models import Model, load


@torch.inference_mode()
def generate(model: Model | str, prompt: str, n: int = 500, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0) -> str:
    """Continue ``prompt`` by ``n`` sampled tokens; returns prompt + continuation.

    ``temperature`` 0 picks the most likely token (greedy); ``seed`` makes sampling repeatable.
    """
    model = load(model)
    if not model.is_causal:
        raise LaminaError(f"{model.name} is not a causal language model: it cannot generate.")
    if temperature < 0:
        raise LaminaError("temperature must be >= 0.")
    ids = model.to_tokens(prompt, truncate=True)[0] if prompt else []
    if not ids:
        raise LaminaError("The prompt has no tokens: give at least one character or word.")
    window = model.max_length or len(ids) + n
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(n):
        context = torch.tensor([ids[-window:]], device=model.device)
        logits = model.hf_model(input_ids=context).logits[0, -1].float().cpu()
        if temperature == 0:
            ids.append(int(logits.argmax()))
            continue
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return model.decode(ids)
