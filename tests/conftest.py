"""Shared fixtures: tiny randomly initialised models of every supported family, built in code
(no hub access), with the real BERT tokenizer that ships with the ``minilm`` model."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
import transformers

import lamina

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.manual_seed(0)

VOCAB = 30522  # the minilm (BERT uncased) tokenizer's vocabulary
SMALL = dict(vocab_size=VOCAB, bos_token_id=101, eos_token_id=102)


def _gpt2() -> transformers.PreTrainedModel:
    cfg = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, **SMALL)
    return transformers.GPT2LMHeadModel(cfg)


def _neox(parallel: bool) -> Callable[[], transformers.PreTrainedModel]:
    def make() -> transformers.PreTrainedModel:
        cfg = transformers.GPTNeoXConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, use_parallel_residual=parallel, rotary_pct=0.25,
            **SMALL,
        )
        return transformers.GPTNeoXForCausalLM(cfg)

    return make


def _llama_like(kind: str) -> Callable[[], transformers.PreTrainedModel]:
    """Decoders of the Llama layout, all with grouped-query attention: Llama, Mistral, Qwen2;
    Qwen3 with head_dim 16 != hidden / heads (as in Qwen3-0.6B), Phi-3 with rotary on half of
    each head, OLMo-2."""
    def make() -> transformers.PreTrainedModel:
        config_cls, model_cls, extra = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
            "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                      dict(head_dim=16)),
            "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM,
                     dict(partial_rotary_factor=0.5, pad_token_id=0)),
            "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, {}),
        }[kind]
        cfg = config_cls(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False,
            **extra, **SMALL,
        )
        return model_cls(cfg)

    return make


def _bert() -> transformers.PreTrainedModel:
    cfg = transformers.BertConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, **SMALL,
    )
    return transformers.BertModel(cfg)


def _gemma(version: str) -> Callable[[], transformers.PreTrainedModel]:
    """Gemma / Gemma-2 / Gemma-3 (text): head_dim 8 given explicitly (Gemma's default is 256),
    a sliding window of 4 on layers 0 and 2 (shorter than TEXTS' longest input), and, for
    Gemma-2, soft-caps small enough that tanh is far from linear on these random weights."""

    def make() -> transformers.PreTrainedModel:
        common = dict(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, intermediate_size=64, max_position_embeddings=64, **SMALL,
        )
        window = dict(sliding_window=4, query_pre_attn_scalar=8,
                      layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        if version == "gemma":
            return transformers.GemmaForCausalLM(transformers.GemmaConfig(**common))
        if version == "gemma2":
            cfg = transformers.Gemma2Config(**common, **window, attn_logit_softcapping=0.5,
                                            final_logit_softcapping=0.5)
            return transformers.Gemma2ForCausalLM(cfg)
        return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**common, **window))

    return make


def _encoder_or_gptj(kind: str) -> Callable[[], transformers.PreTrainedModel]:
    """GPT-J (rotary on 4 of each head's 8 dims), RoBERTa / XLM-R (pad id 0, the BERT
    tokenizer's: positions from 1), DistilBERT, T5's encoder (d_kv 6, so n_heads * d_head is
    24, not d_model)."""
    def make() -> transformers.PreTrainedModel:
        t = transformers
        bert_like = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
        config_cls, model_cls, args = {
            "gptj": (t.GPTJConfig, t.GPTJForCausalLM, dict(
                n_layer=3, n_embd=32, n_head=4, n_inner=64, n_positions=64, rotary_dim=4)),
            "roberta": (t.RobertaConfig, t.RobertaModel, bert_like),
            "xlm_roberta": (t.XLMRobertaConfig, t.XLMRobertaModel, bert_like),
            "distilbert": (t.DistilBertConfig, t.DistilBertModel, dict(
                n_layers=3, dim=32, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                pad_token_id=0)),
            "t5_encoder": (t.T5Config, t.T5EncoderModel, dict(
                num_layers=3, d_model=32, num_heads=4, d_kv=6, d_ff=64, pad_token_id=0,
                decoder_start_token_id=0)),
        }[kind]
        return model_cls(config_cls(**args, **SMALL))

    return make


def _opt() -> transformers.PreTrainedModel:
    cfg = transformers.OPTConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64,
        max_position_embeddings=64, word_embed_proj_dim=32, **SMALL,
    )
    return transformers.OPTForCausalLM(cfg)


#: One line per architecture family (or variant): a tiny random model built in code. Every
#: family gets the invariants of tests/test_families.py and tests/test_capture.py from its line.
FAMILIES: dict[str, Callable[[], transformers.PreTrainedModel]] = {
    "gpt2": _gpt2,
    "neox_parallel": _neox(True),
    "neox_sequential": _neox(False),
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "bert": _bert,
    "gptj": _encoder_or_gptj("gptj"),
    "roberta": _encoder_or_gptj("roberta"),
    "xlm_roberta": _encoder_or_gptj("xlm_roberta"),
    "distilbert": _encoder_or_gptj("distilbert"),
    "t5_encoder": _encoder_or_gptj("t5_encoder"),
    "qwen3": _llama_like("qwen3"),
    "phi3": _llama_like("phi3"),
    "olmo2": _llama_like("olmo2"),
    "gemma": _gemma("gemma"),
    "gemma2": _gemma("gemma2"),
    "gemma3": _gemma("gemma3"),
}
#: Encoder families (names of FAMILIES entries); every other entry is a causal LM.
ENCODERS = {"bert", "roberta", "xlm_roberta", "distilbert", "t5_encoder"}
CAUSAL = [name for name in FAMILIES if name not in ENCODERS]
#: The families whose tests in test_capture.py spell out each layer's weights by hand.
HAND_WRITTEN = ("gpt2", "neox_parallel", "neox_sequential", "llama", "mistral", "qwen2", "bert")

TEXTS = [
    "the cat sat on the mat",
    "hello world",
    "a much longer sentence about galaxies, comets and the orbit of the moon",
    "pear",
]


def bert_tokenizer(padding_side: str = "right") -> transformers.PreTrainedTokenizerBase:
    tok = transformers.AutoTokenizer.from_pretrained(str(lamina.BUILTINS["minilm"]()))
    tok.padding_side = padding_side
    return tok


def tiny(name: str, padding_side: str = "right", seed: int = 0) -> lamina.Model:
    """A tiny random model of family ``name`` wrapped by lamina."""
    torch.manual_seed(seed)
    hf = FAMILIES[name]() if name in FAMILIES else _opt()
    return lamina.load((hf.eval(), bert_tokenizer(padding_side)))


def randomise_1d(model: lamina.Model, *, scale: float = 0.3, shift: float = 0.2) -> lamina.Model:
    """Random init leaves biases at zero and norms at identity: give every 1-d parameter
    (biases, norm scales) values drawn from N(shift, scale^2) (seed 0), so that a bias or a
    norm scale read from the wrong place shows. Changes ``model`` in place; returns it."""
    gen = torch.Generator().manual_seed(0)
    for p in model.hf_model.parameters():
        if p.ndim == 1:
            p.data = torch.randn(p.shape, generator=gen) * scale + shift
    return model


def masked_close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor, what: str,
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """``ours == theirs`` (same shape) at the real tokens of ``mask`` ``[n, seq]``; padding
    positions are ignored. ``what`` names the comparison in the failure message."""
    assert ours.shape == theirs.shape, f"{what}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    m = mask.reshape(*mask.shape, *([1] * (ours.ndim - 2))).to(ours.dtype)
    torch.testing.assert_close(ours * m, theirs * m, atol=atol, rtol=rtol,
                               msg=lambda s: f"{what}: {s}")


def save_model(model: lamina.Model, path) -> str:
    """Save a wrapped model (weights and tokenizer) as a Hugging Face directory; its path."""
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random GPT-2 saved to disk, as ``lamina --model DIR`` loads it."""
    return save_model(tiny("gpt2"), tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def minilm() -> lamina.Model:
    return lamina.load("minilm", device="cpu")


@pytest.fixture(params=list(FAMILIES))
def family_model(request: pytest.FixtureRequest) -> lamina.Model:
    return tiny(request.param)


@pytest.fixture(scope="module", params=["numba", "torch"])
def epilogue(request):
    """The CPU backend a test passes as ``backend=`` to its float32 scans and threshold sums:
    "numba" (the compiled CPU kernels) and "torch" (the torch passes, what CUDA uses), so
    both stay tested against brute force on a CPU-only machine."""
    yield request.param
