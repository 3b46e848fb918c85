"""The atlas of a model whose tokenizer's tokens are HTML, quotes, right-to-left and control
characters: every token string lands escaped, through the real sections."""

from __future__ import annotations

import tokenizers
import torch
import transformers

import lamina

EVIL_TOKENS = ['<script>alert("t")</script>', "&amp;", "'q'", '"dq"', "\u202eevil", "bell\x07",
               "<img src=x onerror=alert(1)>"]


def evil_model() -> lamina.Model:
    vocab = {"[UNK]": 0, **{t: i + 1 for i, t in enumerate(EVIL_TOKENS)},
             **{f"w{i}": len(EVIL_TOKENS) + 1 + i for i in range(40)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[UNK]")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=32,
                                  vocab_size=len(vocab))
    return lamina.load((transformers.GPT2LMHeadModel(cfg).eval(), fast))


def test_evil_token_strings_are_escaped_on_the_page(tmp_path) -> None:
    model = evil_model()
    texts = [" ".join(EVIL_TOKENS + [f"w{i}" for i in range(5)]), "w1 w2 w3 &amp; w4 w5"]
    rep = lamina.report(model, tmp_path / "atlas", texts=texts, progress=False, quick=True,
                        sections=["embeddings", "lens", "pathlength"])
    page = (tmp_path / "atlas" / "index.html").read_text()
    computed = [s.key for s in next(iter(rep.sections.values())) if s.skipped is None]
    assert "embeddings" in computed and "lens" in computed
    assert page.count("<script>") == 1  # the page's own
    for raw in ("<script>alert", "<img src=x", "\u202e", "\x07"):
        assert raw not in page, raw
    assert "onerror=" not in page.replace("onerror=alert(1)&gt;", "")  # only as escaped text
    # the tokens are on the page, escaped (the lens table and the neighbours list them)
    assert "&lt;script&gt;alert(" in page and "&lt;img src=x" in page
