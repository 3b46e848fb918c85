"""Every family in conftest's FAMILIES, from its one line: the residual identities, q/k/v/z
from the layer's own per-head weights, the loader, and the registry's facts. Hidden states
against Hugging Face's, both padding sides and logits are in test_capture.py, parametrized
over the same FAMILIES."""

from __future__ import annotations

import pytest
import torch

import lamina
from conftest import CAUSAL, FAMILIES, TEXTS, masked_close, randomise_1d, save_model, tiny
from lamina.families import FAMILIES as REGISTRY
from lamina.weights import head_weights

ATOL = 1e-5


def _norm(model: lamina.Model, layer: int, path: str | None, x: torch.Tensor) -> torch.Tensor:
    if path is None:
        return x
    with torch.no_grad():
        return model.block(layer).get_submodule(path)(x)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_is_registered_with_its_sites(name: str) -> None:
    model = tiny(name)
    assert model.architecture in REGISTRY and model.family == model.architecture.name
    assert model.config.model_type in model.architecture.model_types
    for L in range(model.n_layers):
        for suffix in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                       "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post"):
            assert f"blocks.{L}.{suffix}" in model.sites, (L, suffix)
    assert [s for s in model.sites if s.startswith("hidden.")] == [
        f"hidden.{i}" for i in range(model.n_layers + 1)]
    assert model.is_causal == model.architecture.causal


@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_identities(name: str) -> None:
    """Pre-norm: resid_mid = resid_pre + attn_out' and resid_post = resid_mid + mlp_out'
    (primes: through the family's post-sublayer norm, where it has one); parallel blocks:
    resid_post = resid_pre + attn_out' + mlp_out'. Post-LN encoders: resid_mid = resid_pre +
    attn_out, resid_post = LN(resid_mid) + mlp_out, normalized_resid_post = hidden.{L+1}."""
    model = randomise_1d(tiny(name))
    fam = model.architecture
    acts = model.collect(TEXTS, ["blocks.*", "hidden.*"], positions="all")
    mask = acts.mask
    for L in range(model.n_layers):
        p = f"blocks.{L}."
        pre, post = acts[p + "hook_resid_pre"], acts[p + "hook_resid_post"]
        attn = _norm(model, L, fam.post_attn_norm, acts[p + "hook_attn_out"])
        mlp = _norm(model, L, fam.post_mlp_norm, acts[p + "hook_mlp_out"])
        if fam.post_ln:
            mid = acts[p + "hook_resid_mid"]
            masked_close(mid, pre + attn, mask, p + "resid_mid")
            masked_close(post, _norm(model, L, fam.ln2, mid) + mlp, mask, p + "resid_post", 1e-4)
            masked_close(acts[p + "hook_normalized_resid_post"], acts[f"hidden.{L + 1}"], mask, p)
            continue
        if fam.parallel(model.config):
            assert p + "hook_resid_mid" not in model.sites
            masked_close(post, pre + attn + mlp, mask, p + "parallel resid_post", 1e-4)
        else:
            mid = acts[p + "hook_resid_mid"]
            masked_close(mid, pre + attn, mask, p + "resid_mid", 1e-4)
            masked_close(post, mid + mlp, mask, p + "resid_post", 1e-4)
        if L + 1 < model.n_layers:
            assert torch.equal(post, acts[f"blocks.{L + 1}.hook_resid_pre"])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_qkv_and_z_from_the_layers_own_weights(name: str) -> None:
    """q, k, v = ln1(resid_pre) @ W + b per head (the projections, before any q/k norm or
    rotary embedding); z, through W_O and b_O, is the attention output."""
    model = randomise_1d(tiny(name))
    acts = model.collect(TEXTS, ["resid_pre.*", "q.*", "k.*", "v.*", "z.*", "attn_out.*"],
                         positions="all")
    for L in range(model.n_layers):
        hw = head_weights(model, L)
        x = acts[f"blocks.{L}.hook_resid_pre"]
        with torch.no_grad():
            xn = hw.ln1(x) if hw.ln1 is not None else x
        for n, W, b in [("q", hw.W_Q, hw.b_Q), ("k", hw.W_K, hw.b_K), ("v", hw.W_V, hw.b_V)]:
            expected = torch.einsum("bsd,hde->bshe", xn, W) + b
            got = acts[f"blocks.{L}.attn.hook_{n}"]
            assert got.shape[2:] == (model.n_heads if n == "q" else model.n_kv_heads,
                                     model.d_head)
            masked_close(got, expected, acts.mask, f"{L} {n}", 1e-4)
        z = acts[f"blocks.{L}.attn.hook_z"]
        out = torch.einsum("bshe,hed->bsd", z, hw.W_O) + hw.b_O
        masked_close(out, acts[f"blocks.{L}.hook_attn_out"], acts.mask, f"{L} z @ W_O", 1e-4)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loads_from_a_directory_with_the_right_class(name: str, tmp_path) -> None:
    """``lamina.load(dir)`` builds the family's class and gives the same hidden states."""
    model = tiny(name)
    again = lamina.load(save_model(model, tmp_path / name), device="cpu")
    assert again.family == model.family and again.sites == model.sites
    # Token ids, not strings: for a saved BERT vocabulary transformers 5 may build the
    # family's own tokenizer class (Qwen2Tokenizer), which splits words differently.
    ids = model.to_tokens(TEXTS)
    a = model.collect(ids, "hidden.*", positions="last")
    b = again.collect(ids, "hidden.*", positions="last")
    for site in a:
        torch.testing.assert_close(a[site], b[site], atol=1e-5, rtol=1e-5)


def test_registry_names_are_unique_and_model_types_disjoint() -> None:
    names = [f.name for f in REGISTRY]
    types = [t for f in REGISTRY for t in f.model_types]
    assert len(set(names)) == len(names) and len(set(types)) == len(types)


def test_unknown_architecture_names_families_and_the_module_escape() -> None:
    model = tiny("opt")
    with pytest.raises(lamina.errors.UnsupportedArchitectureError) as err:
        model.collect(TEXTS, "resid_post.0")
    message = str(err.value)
    assert "module:" in message
    for family in REGISTRY:
        assert family.name in message


def test_plan_says_what_capture_runs() -> None:
    """``Model.plan``: the resolved sites, the module to call, where the pass stops, padding
    and the forward arguments; ``run_capture`` needs nothing else."""
    from lamina.capture import run_capture

    model = tiny("llama", padding_side="left")
    plan = model.plan("resid_post.1", positions="last")
    assert [s.name for s in plan.sites] == ["blocks.1.hook_resid_post"]
    assert plan.runner is model.hf_model.model  # the base model, not the LM head
    assert plan.stop_at == ("model.layers.1", "output")
    assert plan.left_padding and plan.pad_id == model.pad_id and plan.takes_mask
    assert model.plan("hook_embed").stop_at == ("model.layers.0", "input")
    assert model.plan("hidden.*").stop_at is None  # the last hidden state is after the norm
    ids = model.to_tokens(TEXTS)
    captured = run_capture(plan, ids, 2, torch.float32, "cpu", False)
    expected = model.collect(TEXTS, "resid_post.1", batch_size=2)["blocks.1.hook_resid_post"]
    assert torch.equal(captured.tensors["blocks.1.hook_resid_post"], expected)


@pytest.mark.parametrize("name", CAUSAL)
def test_readout_of_the_last_residual_is_the_models_logits(name: str) -> None:
    """``logits_from_resid`` (the logit lens) on the last block's output gives Hugging Face's
    own logits, soft-cap included (Gemma-2)."""
    from lamina.readout import logits_from_resid

    model = randomise_1d(tiny(name))
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    resid = model.collect(TEXTS, last)[last]
    got = logits_from_resid(model, resid)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.to_tokens(text)[0]])
        with torch.no_grad():
            expected = model.hf_model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(got[i], expected.float(), atol=1e-4, rtol=1e-4)
