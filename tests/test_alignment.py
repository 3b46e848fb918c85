"""Per-head weights, folded bias, effective embedding, projections and the query-key
alignment analysis, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from conftest import TEXTS, randomise_1d, tiny
from lamina.analyses.alignment import alignment
from lamina.geometry import cosine, project
from lamina.weights import effective_embedding, folded_query_bias, head_weights


def _ln_input(model: lamina.Model, layer: int, x: torch.Tensor) -> torch.Tensor:
    hw = head_weights(model, layer)
    with torch.no_grad():
        return hw.ln1(x) if hw.ln1 is not None else x


@pytest.mark.parametrize("name", ["gpt2", "neox_parallel", "llama", "qwen2", "bert", "minilm"])
def test_captured_qkv_equal_per_head_weights(name: str, minilm: lamina.Model) -> None:
    model = minilm if name == "minilm" else randomise_1d(tiny(name), scale=0.5, shift=0.3)
    layer = 1
    acts = model.collect(TEXTS, [f"resid_pre.{layer}", f"q.{layer}", f"k.{layer}",
                                 f"v.{layer}"], positions="last")
    x = _ln_input(model, layer, acts[f"blocks.{layer}.hook_resid_pre"])
    hw = head_weights(model, layer)
    for n, W, b in [("q", hw.W_Q, hw.b_Q), ("k", hw.W_K, hw.b_K), ("v", hw.W_V, hw.b_V)]:
        expected = torch.einsum("nd,hde->nhe", x, W) + b
        torch.testing.assert_close(acts[f"blocks.{layer}.attn.hook_{n}"], expected,
                                   atol=1e-5, rtol=1e-5)
    assert hw.W_K.shape[0] == model.n_kv_heads
    assert hw.kv_head(model.n_heads - 1) == model.n_kv_heads - 1


@pytest.mark.parametrize("name", ["gpt2", "neox_sequential"])
def test_folded_bias_gives_raw_queries_on_normalised_input(name: str) -> None:
    model = randomise_1d(tiny(name), scale=0.5, shift=0.3)
    acts = model.collect(TEXTS, ["resid_pre.1", "q.1"], positions="all")
    x = acts["blocks.1.hook_resid_pre"][acts.mask].double()
    ln = head_weights(model, 1).ln1
    normalised = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    W_Q = head_weights(model, 1).W_Q.double() * ln.weight.detach().double()[None, :, None]
    q = torch.einsum("nd,hde->nhe", normalised, W_Q) + folded_query_bias(model, 1).double()
    torch.testing.assert_close(q.float(), acts["blocks.1.attn.hook_q"][acts.mask], atol=1e-4,
                               rtol=1e-4)
    # and the folded bias differs from the raw one exactly by ln1.bias @ W_Q
    hw = head_weights(model, 1)
    diff = folded_query_bias(model, 1) - hw.b_Q
    torch.testing.assert_close(diff, torch.einsum("d,hde->he", ln.bias.detach(), hw.W_Q))


@pytest.mark.parametrize("name", ["gpt2", "neox_parallel", "llama"])
def test_effective_embedding_by_hand(name: str) -> None:
    model = randomise_1d(tiny(name), scale=0.5, shift=0.3)
    ee = effective_embedding(model)
    hf = model.hf_model
    with torch.no_grad():
        W_E = hf.get_input_embeddings().weight[:500]
        if name == "gpt2":
            blk = hf.transformer.h[0]
            d = model.d_model
            v = blk.ln_1(W_E) @ blk.attn.c_attn.weight[:, 2 * d :]
            mid = W_E + v @ blk.attn.c_proj.weight
            mlp = blk.mlp(blk.ln_2(mid))
        elif name == "neox_parallel":
            blk = hf.gpt_neox.layers[0]
            h, dh = model.n_heads, model.d_head
            w = blk.attention.query_key_value.weight.reshape(h, 3, dh, -1)[:, 2]  # value rows
            v = blk.input_layernorm(W_E) @ w.reshape(h * dh, -1).T
            mid = W_E + v @ blk.attention.dense.weight.T
            mlp = blk.mlp(blk.post_attention_layernorm(W_E))  # parallel: MLP reads the input
        else:
            blk = hf.model.layers[0]
            v = blk.input_layernorm(W_E) @ blk.self_attn.v_proj.weight.T  # [n, kv*dh]
            groups = model.n_heads // model.n_kv_heads
            v = v.unflatten(-1, (model.n_kv_heads, model.d_head)).repeat_interleave(
                groups, dim=1).flatten(1)
            mid = W_E + v @ blk.self_attn.o_proj.weight.T
            mlp = blk.mlp(blk.post_attention_layernorm(mid))
    torch.testing.assert_close(ee["W_EE"][:500], mid + mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["mlp"][:500], mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["attn_mlp"], ee["W_EE"] - ee["W_E"])


def test_project_splits_into_span_and_rest() -> None:
    rng = np.random.default_rng(0)
    v, dirs = rng.normal(size=(20, 16)), rng.normal(size=(3, 16))
    par, perp = project(v, dirs)
    np.testing.assert_allclose(par + perp, v, atol=1e-12)
    np.testing.assert_allclose(perp @ dirs.T, 0, atol=1e-10)
    coef, *_ = np.linalg.lstsq(dirs.T, v.T, rcond=None)  # least squares = projection
    np.testing.assert_allclose(par, (dirs.T @ coef).T, atol=1e-10)
    par1, _ = project(torch.tensor(v[0]), torch.tensor(dirs[0]))
    d0 = dirs[0] / np.linalg.norm(dirs[0])
    np.testing.assert_allclose(par1.numpy(), (v[0] @ d0) * d0, atol=1e-10)
    with pytest.raises(lamina.LaminaError, match="dimension"):
        project(v, dirs[:, :5])
    with pytest.raises(lamina.LaminaError, match="zero"):
        cosine(np.zeros(4), np.ones(4))


def test_alignment_numbers_match_numpy() -> None:
    model = randomise_1d(tiny("gpt2"), scale=0.5, shift=0.3)
    layer, head = 0, 1
    result = alignment(model, layer, head, positions=(0, 3, 7), n_sequences=40, seq_len=8)
    hw = head_weights(model, layer)
    q = hw.b_Q[head].double().numpy()
    tr = model.hf_model.transformer
    with torch.no_grad():  # key of each token alone at position 0, by hand
        x = tr.h[0].ln_1(tr.wte.weight + tr.wpe.weight[0])
        keys = (x @ hw.W_K[head] + hw.b_K[head]).double().numpy()
    expected = keys @ q / np.linalg.norm(keys, axis=1) / np.linalg.norm(q)
    np.testing.assert_allclose(result.vocab_cosines, expected, atol=1e-6)
    frame = result.to_frame()
    for row in result.by_position().itertuples():
        values = frame[frame["position"] == row.position]["cosine"].to_numpy()
        assert len(values) == 40
        np.testing.assert_allclose([row.mean, row.std, row.min, row.max],
                                   [values.mean(), values.std(ddof=1), values.min(),
                                    values.max()], rtol=1e-12)
        assert result.summary["mean_by_position"][row.position] == pytest.approx(
            values.mean(), rel=1e-12)
    assert result.summary["vocab_mean"] == pytest.approx(expected.mean(), abs=1e-6)
    # position 0 in a random sequence is the token alone at position 0 (causal attention)
    first = frame[frame["position"] == 0]["cosine"].to_numpy()
    assert np.isin(np.round(first, 6), np.round(expected, 6)).all()
    we = (tr.wte.weight.detach().double() @ hw.W_K[head].double()).numpy()
    np.testing.assert_allclose(result.key_side["W_E"],
                               we @ q / np.linalg.norm(we, axis=1) / np.linalg.norm(q), atol=1e-8)


def test_alignment_query_options_and_errors(minilm: lamina.Model, tmp_path) -> None:
    model = randomise_1d(tiny("gpt2"), scale=0.5, shift=0.3)
    folded = alignment(model, 1, 0, query="bias_folded", n_sequences=10, seq_len=8,
                       positions=(0, 5))
    assert "bias_folded" in folded.meta["query"]
    vec = np.random.default_rng(1).normal(size=model.d_model)
    user = alignment(model, 1, 0, query=vec, n_sequences=10, seq_len=8, positions=(0, 5))
    assert user.meta["query"] == "user direction through W_Q"
    tok = alignment(model, 1, 0, query="token:the", n_sequences=10, seq_len=8, positions=(0,))
    assert "unembedding" in tok.meta["query"]
    with pytest.raises(lamina.LaminaError, match="zero"):
        alignment(tiny("llama"), 0, 0, query="bias")  # Llama has no query bias
    with pytest.raises(lamina.LaminaError, match="head must be"):
        alignment(model, 0, 99)
    enc = alignment(minilm, 2, 0, n_sequences=20, seq_len=10, positions=(0, 9))
    assert len(enc.vocab_cosines) == 30522 and enc.bos["token"] == "[CLS]"
    assert "W_EE" not in enc.key_side  # post-LN: no effective embedding
    saved = enc.save(tmp_path / "align")
    assert (saved / "alignment.png").exists() and (saved / "alignment_vocab.csv").exists()
