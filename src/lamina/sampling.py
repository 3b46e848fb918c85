"""Sampling text from a causal LM, cropping the context to the model's window (so a
character model can write far beyond its 128-character context)."""

from __future__ import annotations

import inspect

import torch

from lamina.checks import check_int, check_number
from lamina.errors import ContextLengthError, LaminaError
from lamina.models import Model, load

#: When the text outgrows the model's window, the model goes on reading this fraction of it.
KEEP = 0.75


def _check(n: object, temperature: object, top_k: object, seed: object) -> None:
    """Refuse settings that would crash, or sample something other than what was asked."""
    check_int(n, "n (tokens to generate)", 0, option="-n (tokens to generate)")
    check_number(temperature, "temperature", 0, option="--temperature", why=" (0 = greedy)")
    if top_k is not None:
        check_int(top_k, "top_k", 1, option="--top-k", why=" (or None: no cut-off)",
                  cli_why=" (leave it out for no cut-off)")
    check_int(seed, "seed", 0, most=2**63 - 1, option="--seed")


def _prompt_ids(model: Model, prompt: str) -> list[int]:
    """All the prompt's tokens (a prompt longer than the context is kept whole: the loop reads
    its last window)."""
    if not isinstance(prompt, str) or not prompt:
        raise LaminaError("The prompt is empty: give at least one character or word.",
                          cli="The --prompt is empty: give at least one character or word.")
    try:
        ids = model.to_tokens(prompt)[0]
    except ContextLengthError:
        ids = list(model.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        raise LaminaError("The prompt has no tokens: give at least one character or word.",
                          cli="The --prompt has no tokens: give at least one character or word.")
    return ids


def _cache_argument(hf_model: torch.nn.Module) -> str:
    """The name of the key/value cache in ``forward`` and its output: ``cache`` in
    transformers 5.x, ``past_key_values`` before."""
    params = inspect.signature(hf_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                gen: torch.Generator) -> int:
    """Pick the next token from the last position's logits."""
    if temperature == 0:
        return int(logits.argmax())
    logits = (logits - logits.max()) / temperature  # max 0: no overflow at small t
    if top_k is not None:
        kth = torch.topk(logits, min(int(top_k), logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))


@torch.inference_mode()
def generate(model: Model | str, prompt: str, n: int = 500, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, progress: bool = True) -> str:
    """Continue ``prompt`` by ``n`` sampled tokens; returns prompt + continuation.

    ``temperature`` 0 picks the most likely token (greedy); ``top_k`` keeps only the k most
    likely tokens; ``seed`` makes sampling repeatable. Settings that cannot be honoured (a
    negative ``n``, a temperature that is NaN, infinite or negative, ``top_k < 1``) raise a
    :class:`LaminaError`. ``progress`` shows a progress bar (on stderr).

    The model reads the text from a start token on, reusing the key/value cache so that each
    new token costs one position. When the text from the start would exceed the model's
    window (``max_length``), the start moves to the last :data:`KEEP` of the window, which is
    encoded afresh, and the cache grows again from there. The tokens are exactly those of
    encoding ``ids[start:]`` anew at every step (tested).
    """
    from tqdm.auto import tqdm

    _check(n, temperature, top_k, seed)
    model = load(model)
    if not model.is_causal:
        raise LaminaError(f"{model.name} is not a causal language model: it cannot generate.")
    ids = _prompt_ids(model, prompt)
    window = model.max_length or len(ids) + n
    keep = max(1, int(window * KEEP))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    key = _cache_argument(model.hf_model)
    past = None  # the cache of ids[start:fed]
    start = fed = max(0, len(ids) - window)
    for _ in tqdm(range(n), desc="generate", unit="token", disable=not progress, leave=False):
        if len(ids) - start > window:
            start = fed = len(ids) - keep
            past = None
        out = model.hf_model(input_ids=torch.tensor([ids[fed:]], device=model.device),
                             **{key: past}, use_cache=True)
        past, fed = getattr(out, key), len(ids)
        ids.append(_next_token(out.logits[0, -1].float().cpu(), temperature, top_k, gen))
    return model.decode(ids)
