"""GPT-J (``lamina.families.gptj``): parity with TransformerLens 4.3 on the same module, the
parallel block's one norm, queries and keys before rotary (rotary by hand on the first
``rotary_dim`` dims reproduces ``hook_z``), and block 0's effective embedding by hand."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import conftest
from conftest import TEXTS, bert_tokenizer, randomise_1d, tiny
from lamina.weights import effective_embedding, head_weights
from test_parity_transformerlens import TL_VOCABULARY

TransformerBridge = pytest.importorskip("transformer_lens.model_bridge").TransformerBridge
masked_close = functools.partial(conftest.masked_close, rtol=1e-5)  # this file's tolerance


def test_gptj_every_site_equals_transformerlens() -> None:
    """Every lamina site equals the TransformerLens 4.3 hook of the same name (hidden.{i}:
    blocks.{i}.hook_resid_pre, the last one ln_final.hook_normalized), and every hook TL
    records under a lamina name is a lamina site; neither has hook_resid_mid."""
    model = randomise_1d(tiny("gptj"))
    model.hf_model.set_attn_implementation("eager")
    acts = model.collect(TEXTS, model.sites, positions="all")
    bridge = TransformerBridge.boot_transformers(
        "lamina-parity-gptj", hf_model=model.hf_model, tokenizer=bert_tokenizer(), device="cpu")
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(acts.token_ids, attention_mask=acts.mask.long())
    n = model.n_layers
    for site in model.sites:
        theirs = site
        if site.startswith("hidden."):
            i = int(site.split(".")[1])
            theirs = f"blocks.{i}.hook_resid_pre" if i < n else "ln_final.hook_out"
        elif site == "ln_final.hook_normalized":
            theirs = "ln_final.hook_out"  # TL's hook_normalized is before ln_f's affine part
        assert theirs in cache, theirs
        masked_close(acts[site], cache[theirs], acts.mask, f"{site} vs TL {theirs}")
    ln_f = model.hf_model.transformer.ln_f
    with torch.no_grad():
        affine = cache["ln_final.hook_normalized"] * ln_f.weight + ln_f.bias
    masked_close(acts["ln_final.hook_normalized"], affine, acts.mask, "ln_f affine", 1e-4)
    missing = [k for k in cache if TL_VOCABULARY.match(k) and k not in model.sites]
    assert not missing, missing
    assert not any("resid_mid" in k for k in cache)


def test_gptj_parallel_block_mlp_reads_ln1() -> None:
    """One LayerNorm per block: the MLP reads ln_1(resid_pre), like attention (fc_in, gelu_new,
    fc_out by hand), and resid_post = resid_pre + attn_out + mlp_out."""
    model = randomise_1d(tiny("gptj"))
    assert model.architecture.parallel(model.config) and model.architecture.ln2 == "ln_1"
    acts = model.collect(TEXTS, ["blocks.*"], positions="all")
    for L in range(model.n_layers):
        blk = model.block(L)
        p = f"blocks.{L}."
        assert p + "hook_resid_mid" not in model.sites
        x = acts[p + "hook_resid_pre"].double()
        xn = torch.nn.functional.layer_norm(x, (model.d_model,), blk.ln_1.weight.double(),
                                            blk.ln_1.bias.double(), blk.ln_1.eps)
        h = xn @ blk.mlp.fc_in.weight.double().T + blk.mlp.fc_in.bias.double()
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        mlp = h @ blk.mlp.fc_out.weight.double().T + blk.mlp.fc_out.bias.double()
        masked_close(acts[p + "hook_mlp_out"].double(), mlp, acts.mask, p + "mlp", 1e-5)
        masked_close(acts[p + "hook_resid_post"], acts[p + "hook_resid_pre"]
                     + acts[p + "hook_attn_out"] + acts[p + "hook_mlp_out"], acts.mask, p, 1e-4)


def _rotary(x: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """GPT-J's rotary embedding by hand, ``x`` ``[batch, seq, heads, d_head]`` at positions
    0, 1, ...: consecutive pairs of the first ``rotary_dim`` dims are complex numbers turned
    by ``pos * 10000 ** (-2j / rotary_dim)``; the other dims pass."""
    seq = x.shape[1]
    inv_freq = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [seq, r/2]
    turn = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
    pairs = torch.view_as_complex(x[..., :rotary_dim].double().unflatten(-1, (-1, 2)).contiguous())
    rotated = torch.view_as_real(pairs * turn).flatten(-2)
    return torch.cat([rotated, x[..., rotary_dim:].double()], dim=-1)


def test_gptj_queries_keys_are_before_rotary() -> None:
    """hook_q/hook_k are the projections; rotary by hand on their first ``rotary_dim`` dims,
    causal softmax attention with hook_v gives hook_z (right padding: positions 0, 1, ...)."""
    model = randomise_1d(tiny("gptj"))
    for L in range(model.n_layers):  # sharp attention, so that positions matter
        for proj in (model.block(L).attn.q_proj, model.block(L).attn.k_proj):
            proj.weight.data *= 30
    r = model.config.rotary_dim
    assert 0 < r < model.d_head  # partial rotary: both parts are exercised
    acts = model.collect(TEXTS, ["q.*", "k.*", "v.*", "z.*"], positions="all")
    seq = acts.mask.shape[1]
    allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool))[None] & acts.mask[:, None, :]
    for L in range(model.n_layers):
        p = f"blocks.{L}.attn."
        q, k = _rotary(acts[p + "hook_q"], r), _rotary(acts[p + "hook_k"], r)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(model.d_head)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), acts[p + "hook_v"].double())
        masked_close(acts[p + "hook_z"].double(), z, acts.mask, p + "hook_z", 1e-5)
        # without rotary the same computation does not reproduce z: the test can tell
        plain = torch.einsum("bqhd,bkhd->bhqk", acts[p + "hook_q"], acts[p + "hook_k"]).double()
        plain = (plain / math.sqrt(model.d_head)).masked_fill(~allowed[:, None], float("-inf"))
        wrong = torch.einsum("bhqk,bkhd->bqhd", plain.softmax(-1), acts[p + "hook_v"].double())
        assert float((wrong - z)[acts.mask].abs().max()) > 1e-4


def test_gptj_effective_embedding_by_hand() -> None:
    """W_EE = W_E + ln_1(W_E) @ W_V @ W_O + mlp(ln_1(W_E)): the parallel block's MLP reads
    the normalised embedding, not the attention's output (no biases in GPT-J's attention)."""
    model = randomise_1d(tiny("gptj"))
    ee = effective_embedding(model)
    blk = model.block(0)
    with torch.no_grad():
        W_E = model.hf_model.get_input_embeddings().weight[:500]
        x = blk.ln_1(W_E)
        attn = x @ blk.attn.v_proj.weight.T @ blk.attn.out_proj.weight.T
        mlp = blk.mlp(x)
    torch.testing.assert_close(ee["W_EE"][:500], W_E + attn + mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["mlp"][:500], mlp, atol=1e-5, rtol=1e-5)
    hw = head_weights(model, 0)
    assert float(hw.b_Q.abs().max()) == 0.0 and float(hw.b_O.abs().max()) == 0.0
