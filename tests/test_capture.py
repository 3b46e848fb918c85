"""Capture is exact: every site equals an independent computation from Hugging Face's own
outputs or from the layer's own weights."""

from __future__ import annotations

import pytest
import torch

import lamina
from conftest import CAUSAL, FAMILIES, HAND_WRITTEN, TEXTS, tiny
from lamina.errors import ContextLengthError, LaminaError, UnknownSiteError

ATOL = 1e-5


def hf_hidden_states(model: lamina.Model, texts: list[str]) -> tuple[torch.Tensor, ...]:
    """Hugging Face's own output_hidden_states, right-padded, only ids and mask passed."""
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.hf_model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        )
    return out.hidden_states


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    width = min(a.shape[1], b.shape[1])
    m = mask[:, :width].reshape(*mask[:, :width].shape, *([1] * (a.ndim - 2)))
    return float(((a[:, :width] - b[:, :width]) * m).abs().max())


@pytest.mark.parametrize("name", [*FAMILIES, "minilm"])
def test_hidden_equals_hf_output_hidden_states(name: str, minilm: lamina.Model) -> None:
    model = minilm if name == "minilm" else tiny(name)
    acts = model.collect(TEXTS, "hidden.*", positions="all")
    reference = hf_hidden_states(model, TEXTS)
    assert len(acts) == len(TEXTS)
    assert acts.sites == [f"hidden.{i}" for i in range(len(reference))]
    for i, expected in enumerate(reference):
        assert masked_max_diff(acts[f"hidden.{i}"], expected, acts.mask) < ATOL, i
    # padding beyond each input's length is zero, never garbage
    assert float(acts["hidden.1"][~acts.mask].abs().sum()) == 0.0


def _ln(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("name", [n for n in HAND_WRITTEN if n != "bert"])
def test_residual_decomposition_pre_ln(name: str) -> None:
    model = tiny(name)
    acts = model.collect(TEXTS, "blocks.*", positions="all")
    for L in range(model.n_layers):
        pre, post = acts[f"blocks.{L}.hook_resid_pre"], acts[f"blocks.{L}.hook_resid_post"]
        attn, mlp = acts[f"blocks.{L}.hook_attn_out"], acts[f"blocks.{L}.hook_mlp_out"]
        assert masked_max_diff(post - pre, attn + mlp, acts.mask) < ATOL
        if name == "neox_parallel":
            assert f"blocks.{L}.hook_resid_mid" not in model.sites
        else:
            assert masked_max_diff(acts[f"blocks.{L}.hook_resid_mid"], pre + attn, acts.mask) < ATOL
        if L + 1 < model.n_layers:
            assert torch.equal(post, acts[f"blocks.{L + 1}.hook_resid_pre"])


@pytest.mark.parametrize("name", ["bert", "minilm"])
def test_residual_decomposition_post_ln_bert(name: str, minilm: lamina.Model) -> None:
    model = minilm if name == "minilm" else tiny(name)
    acts = model.collect(TEXTS, ["blocks.*", "hidden.*"], positions="all")
    for L in range(model.n_layers):
        layer = model.hf_model.encoder.layer[L]
        p = f"blocks.{L}."
        pre, mid = acts[p + "hook_resid_pre"], acts[p + "hook_resid_mid"]
        attn, mlp = acts[p + "hook_attn_out"], acts[p + "hook_mlp_out"]
        assert masked_max_diff(mid, pre + attn, acts.mask) < ATOL
        ln1 = _ln(layer.attention.output.LayerNorm, mid)
        assert masked_max_diff(acts[p + "hook_resid_post"], ln1 + mlp, acts.mask) < ATOL
        ln2 = _ln(layer.output.LayerNorm, acts[p + "hook_resid_post"])
        assert masked_max_diff(acts[p + "hook_normalized_resid_post"], ln2, acts.mask) < 1e-4
        assert masked_max_diff(acts[f"hidden.{L + 1}"], ln2, acts.mask) < 1e-4


def _qkv_reference(model: lamina.Model, L: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """q, k, v from the layer's own weights applied to its (normalised) input, by hand."""
    hf, h, dh, kv = model.hf_model, model.n_heads, model.d_head, model.n_kv_heads
    with torch.no_grad():
        if model.family == "gpt2":
            blk = hf.transformer.h[L]
            y = blk.ln_1(x) @ blk.attn.c_attn.weight + blk.attn.c_attn.bias
            d = model.d_model
            return {n: y[..., i * d : (i + 1) * d].unflatten(-1, (h, dh)) for i, n in
                    enumerate("qkv")}
        if model.family == "gpt_neox":
            blk = hf.gpt_neox.layers[L]
            lin = blk.attention.query_key_value
            y = (blk.input_layernorm(x) @ lin.weight.T + lin.bias).unflatten(-1, (h, 3 * dh))
            return {n: y[..., i * dh : (i + 1) * dh] for i, n in enumerate("qkv")}
        if model.family == "llama":
            blk = hf.model.layers[L]
            xn = blk.input_layernorm(x)
            out = {}
            for n, lin, heads in [("q", blk.self_attn.q_proj, h), ("k", blk.self_attn.k_proj, kv),
                                  ("v", blk.self_attn.v_proj, kv)]:
                y = xn @ lin.weight.T + (lin.bias if lin.bias is not None else 0)
                out[n] = y.unflatten(-1, (heads, dh))
            return out
        blk = hf.encoder.layer[L].attention.self  # BERT: post-LN, attention sees resid_pre
        return {n: (x @ getattr(blk, m).weight.T + getattr(blk, m).bias).unflatten(-1, (h, dh))
                for n, m in [("q", "query"), ("k", "key"), ("v", "value")]}


def _output_projection(model: lamina.Model, L: int) -> torch.nn.Module:
    hf = model.hf_model
    return {
        "gpt2": lambda: hf.transformer.h[L].attn.c_proj,
        "gpt_neox": lambda: hf.gpt_neox.layers[L].attention.dense,
        "llama": lambda: hf.model.layers[L].self_attn.o_proj,
        "bert": lambda: hf.encoder.layer[L].attention.output.dense,
    }[model.family]()


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_qkv_equal_matmul_of_layer_weights(name: str) -> None:
    model = tiny(name)
    acts = model.collect(TEXTS, ["resid_pre.*", "q.*", "k.*", "v.*", "z.*", "attn_out.*"],
                         positions="all")
    for L in range(model.n_layers):
        expected = _qkv_reference(model, L, acts[f"blocks.{L}.hook_resid_pre"])
        for n in "qkv":
            got = acts[f"blocks.{L}.attn.hook_{n}"]
            heads = model.n_heads if n == "q" else model.n_kv_heads
            assert got.shape[2:] == (heads, model.d_head)
            assert masked_max_diff(got, expected[n], acts.mask) < ATOL, (L, n)
        # z, concatenated over heads, through the output projection is the attention output
        z = acts[f"blocks.{L}.attn.hook_z"]
        with torch.no_grad():
            projected = _output_projection(model, L)(z.flatten(-2))
        assert masked_max_diff(projected, acts[f"blocks.{L}.hook_attn_out"], acts.mask) < ATOL


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_last_position_under_both_padding_sides(name: str, side: str) -> None:
    model = tiny(name, padding_side=side)
    sites = ["hidden.*", "k.1"]
    batched = model.collect(TEXTS, sites, positions="last", batch_size=4)
    for i, text in enumerate(TEXTS):
        alone = model.collect([text], sites, positions="all")
        n = int(alone.lengths[0])
        for site in sites[:1] + ["blocks.1.attn.hook_k"]:
            names = [s for s in batched.sites if s.startswith(site.rstrip("*"))] or [site]
            for s in names:
                torch.testing.assert_close(batched[s][i], alone[s][0, n - 1], atol=1e-5, rtol=0)
    assert batched.positions.tolist() == [int(n) - 1 for n in batched.lengths]


def test_first_int_and_per_input_positions() -> None:
    model = tiny("gpt2", padding_side="left")
    every = model.collect(TEXTS, "resid_post.2", positions="all")
    full = every["blocks.2.hook_resid_post"]
    first = model.collect(TEXTS, "resid_post.2", positions="first")["blocks.2.hook_resid_post"]
    torch.testing.assert_close(first, full[:, 0])
    second = model.collect(TEXTS, "resid_post.2", positions=1)["blocks.2.hook_resid_post"]
    torch.testing.assert_close(second, full[:, 1])
    chosen = [0, -1, 2, -2]
    picked = model.collect(TEXTS, "resid_post.2", positions=chosen)["blocks.2.hook_resid_post"]
    for i, p in enumerate(chosen):
        idx = p if p >= 0 else int(every.lengths[i]) + p
        torch.testing.assert_close(picked[i], full[i, idx])


@pytest.mark.parametrize("name", CAUSAL)
def test_last_residual_reproduces_logits(name: str) -> None:
    model = tiny(name)
    acts = model.collect(TEXTS, f"resid_post.{model.n_layers - 1}")
    resid = acts[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    hf = model.hf_model
    with torch.no_grad():
        final_norm = hf.get_submodule(f"{model._base_prefix}.{model.architecture.final_norm}")
        logits = hf.get_output_embeddings()(final_norm(resid))
        cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2
        if cap:
            logits = torch.tanh(logits / cap) * cap
        for i, text in enumerate(TEXTS):
            ids = torch.tensor([model.to_tokens(text)[0]])
            expected = hf(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=1e-4)


def test_module_site_on_architecture_without_adapter() -> None:
    model = tiny("opt")
    assert model.family is None and model.sites == []
    path = "model.decoder.layers.1.fc2"
    acts = model.collect(TEXTS[:2], f"module:{path}", positions="all")
    seen = {}
    handle = model.hf_model.get_submodule(path).register_forward_hook(
        lambda m, i, o: seen.setdefault("out", o)
    )
    ids = model.to_tokens(TEXTS[0])[0]
    with torch.no_grad():
        model.hf_model(input_ids=torch.tensor([ids]))
    handle.remove()
    n = len(ids)
    torch.testing.assert_close(acts[f"module:{path}"][0, :n], seen["out"].reshape(1, n, -1)[0])
    with pytest.raises(lamina.LaminaError, match="module:"):
        model.collect(TEXTS, "resid_post.0")


def test_module_site_works_on_any_family() -> None:
    model = tiny("llama")
    acts = model.collect(TEXTS, ["module:model.layers.0.mlp", "mlp_out.0"])
    torch.testing.assert_close(acts["module:model.layers.0.mlp"], acts["blocks.0.hook_mlp_out"])


def test_site_resolution_globs_short_forms_and_order(minilm: lamina.Model) -> None:
    names = [s.name for s in minilm.resolve_sites(["resid_post.4", "hidden.0", "q.1"])]
    assert names == ["hidden.0", "blocks.1.attn.hook_q", "blocks.4.hook_resid_post"]
    glob = [s.name for s in minilm.resolve_sites("blocks.*.hook_resid_post")]
    assert glob == [f"blocks.{L}.hook_resid_post" for L in range(6)]
    assert [s.name for s in minilm.resolve_sites("resid_post")] == glob


def test_unknown_site_suggests_closest(minilm: lamina.Model) -> None:
    with pytest.raises(UnknownSiteError, match="blocks.2.hook_resid_post"):
        minilm.collect(["x"], "blocks.2.hook_resid_pots")
    with pytest.raises(UnknownSiteError, match="No site matches"):
        minilm.collect(["x"], "blocks.*.hook_nothing")
    with pytest.raises(UnknownSiteError, match="no submodule"):
        minilm.collect(["x"], "module:encoder.layer.99")


def test_bad_inputs_get_clear_errors(minilm: lamina.Model) -> None:
    with pytest.raises(LaminaError, match="No inputs"):
        minilm.collect([], "hidden.1")
    with pytest.raises(LaminaError, match="mix"):
        minilm.collect(["a", [1, 2]], "hidden.1")
    with pytest.raises(LaminaError, match="outside input 0"):
        minilm.collect(["a b"], "hidden.1", positions=10)
    with pytest.raises(LaminaError, match="positions"):
        minilm.collect(["a b"], "hidden.1", positions="middle")
    with pytest.raises(LaminaError, match="vocabulary"):
        minilm.collect([[101, 10**7]], "hidden.1")
    with pytest.raises(lamina.errors.TokenizationError, match="pineapple"):
        minilm.single_token("pineapplesauce")
    assert minilm.single_token("hello") == minilm.tokenizer.convert_tokens_to_ids("hello")


def test_context_length_error_and_truncation() -> None:
    model = tiny("gpt2")  # context of 64 tokens
    long_text = " ".join(["word"] * 100)
    with pytest.raises(ContextLengthError, match="context of 64"):
        model.collect([long_text], "hidden.1")
    with pytest.warns(UserWarning, match="Truncated"):
        acts = model.collect([long_text], "hidden.1", truncate=True)
    assert int(acts.lengths[0]) == 64


def test_forward_stops_after_deepest_block() -> None:
    model = tiny("gpt2")
    ran: list[int] = []
    handles = [blk.register_forward_hook(lambda m, i, o, L=L: ran.append(L))
               for L, blk in enumerate(model.hf_model.transformer.h)]
    model.collect(TEXTS, "resid_post.0")
    assert ran == [0]
    ran.clear()
    model.collect(TEXTS, "hook_embed")
    assert ran == []
    ran.clear()
    model.collect(TEXTS, "ln_final.hook_normalized")
    assert ran == [0, 1, 2]
    for h in handles:
        h.remove()


def test_activations_save_load_roundtrip(tmp_path, minilm: lamina.Model) -> None:
    acts = minilm.collect(TEXTS, ["hidden.*", "q.0"], positions="all", dtype="bfloat16")
    path = acts.save(tmp_path / "acts")
    assert path.suffix == ".safetensors" and not list(tmp_path.glob("*.tmp"))
    back = lamina.Activations.load(path)
    assert back.sites == acts.sites and back.strings == TEXTS
    assert back.token_strings == acts.token_strings
    assert back.meta["dtype"] == "bfloat16" and back.meta["model"] == "minilm"
    for site in acts:
        assert torch.equal(back[site], acts[site])
    assert torch.equal(back.mask, acts.mask)
    arrays = back.numpy()
    assert arrays["hidden.1"].dtype.name == "float32"
    assert back.to(dtype=torch.float32)["q.0" if "q.0" in back else "blocks.0.attn.hook_q"].dtype \
        == torch.float32


def test_raw_weights_are_never_rewritten(minilm: lamina.Model) -> None:
    from safetensors.torch import load_file

    raw = load_file(str(lamina.BUILTINS["minilm"]() / "model.safetensors"))
    key = next(k for k in raw if k.endswith("word_embeddings.weight"))
    assert torch.equal(minilm.hf_model.embeddings.word_embeddings.weight, raw[key])
    assert minilm.processing == []
    acts = minilm.collect(["x"], "hidden.1")
    assert acts.meta["processing"] == ["none (raw weights)"]


def test_a_module_that_never_runs_is_a_clear_error() -> None:
    model = tiny("gpt2")
    model.hf_model.transformer.unused = torch.nn.Linear(4, 4)  # registered, never called
    with pytest.raises(LaminaError, match="never reached .*load it again"):
        model.collect(["hello world"], "module:transformer.unused")
