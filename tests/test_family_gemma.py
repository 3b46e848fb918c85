"""Gemma, Gemma-2 and Gemma-3 (text): what is special about them, checked by hand and against
TransformerLens 4.3.

* Parity: every lamina site equals TransformerLens's hook of the same name on the same module,
  except Gemma-2/3's ``hook_attn_out``/``hook_mlp_out``: lamina's are the sublayer outputs
  (TransformerLens's ``attn.hook_out``/``mlp.hook_out``); TransformerLens's are after the post
  norms, ``post_attention_layernorm(attn_out)`` / ``post_feedforward_layernorm(mlp_out)``.
  A model built in code has no ``config.architectures`` (a checkpoint does); TransformerLens
  needs it to pick the Gemma-3 adapter, so the test sets it as ``save_pretrained`` would.
* By hand: RMSNorm ``x / rms(x) * (1 + w)`` (norm_offset 1.0) in the folded query weight and
  the effective embedding; ``hook_embed = W_E[ids] * sqrt(d_model)``; the sandwich norms around
  each sublayer; attention from q/k/v with q/k norms, rotary, ``query_pre_attn_scalar``,
  score soft-capping and sliding windows.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

import lamina
from conftest import TEXTS, bert_tokenizer, masked_close, randomise_1d, tiny
from lamina.weights import effective_embedding, folded_query_bias, folded_query_weight, head_weights

GEMMAS = ["gemma", "gemma2", "gemma3"]
SANDWICH = ["gemma2", "gemma3"]  # norms after each sublayer, before the residual add
ATOL = 1e-5


def rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm by hand: ``x / sqrt(mean(x^2) + eps) * (1 + w)`` over the last dim."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * (1.0 + w)


def gated_mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``down(gelu_tanh(gate(x)) * up(x))`` from the MLP's weights."""
    gate = torch.nn.functional.gelu(x @ mlp.gate_proj.weight.T, approximate="tanh")
    return (gate * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T


def _layers(model: lamina.Model) -> torch.nn.ModuleList:
    return model.hf_model.model.layers


# -- (c) the embedding scale --------------------------------------------------------------


@pytest.mark.parametrize("name", GEMMAS)
def test_hook_embed_is_the_scaled_embedding(name: str) -> None:
    """transformers >= 5 scales inside the embedding module for all three versions, so
    ``hook_embed`` (the module's output) = ``W_E[ids] * sqrt(d_model)`` = ``hidden.0``, and the
    family's ``embed_scale`` is that same factor (used from the raw ``W_E``)."""
    model = tiny(name)
    assert model.architecture.embed_scale(model.config) == pytest.approx(math.sqrt(32))
    acts = model.collect(TEXTS, ["hook_embed", "hidden.0", "resid_pre.0"], positions="all")
    W_E = model.hf_model.get_input_embeddings().weight.detach()
    by_hand = W_E[acts.token_ids] * math.sqrt(model.d_model)
    masked_close(acts["hook_embed"], by_hand, acts.mask, "hook_embed")
    assert not torch.allclose(acts["hook_embed"], W_E[acts.token_ids])  # really scaled
    assert torch.equal(acts["hook_embed"] * acts.mask[..., None], acts["hidden.0"])
    assert torch.equal(acts["hidden.0"], acts["blocks.0.hook_resid_pre"])


# -- (b) norms with 1 + w: folded query weight / bias, effective embedding ------------------


def _with_query_bias(name: str) -> lamina.Model:
    """The tiny model of ``name`` rebuilt with ``attention_bias=True``, every 1-d parameter
    (norm weights, biases) random, so ``1 + w`` and the biases are far from trivial."""
    base = tiny(name)
    config = base.config
    config.attention_bias = True
    torch.manual_seed(1)
    hf = type(base.hf_model)(config).eval()
    return randomise_1d(lamina.load((hf, bert_tokenizer())))


@pytest.mark.parametrize("name", GEMMAS)
def test_folded_query_weight_and_bias_by_hand(name: str) -> None:
    """``folded_query_weight = (1 + w_ln1)[:, None] * W_Q`` per head and ``folded_query_bias =
    b_Q`` (RMSNorm has no bias); applied to the un-scaled normalised ``resid_pre`` they give
    ``hook_q``."""
    model = _with_query_bias(name)
    acts = model.collect(TEXTS, ["resid_pre.*", "q.*"], positions="all")
    h, dh = model.n_heads, model.d_head
    for L in range(model.n_layers):
        layer = _layers(model)[L]
        w_ln = layer.input_layernorm.weight.detach()
        W_Q = layer.self_attn.q_proj.weight.detach().T.reshape(-1, h, dh).permute(1, 0, 2)
        expected_w = (1.0 + w_ln)[None, :, None] * W_Q
        torch.testing.assert_close(folded_query_weight(model, L), expected_w)
        b_Q = layer.self_attn.q_proj.bias.detach().reshape(h, dh)
        torch.testing.assert_close(folded_query_bias(model, L), b_Q)
        assert float(b_Q.abs().max()) > 0.1
        torch.testing.assert_close(head_weights(model, L).ln1_scale, 1.0 + w_ln)
        x = rms(acts[f"blocks.{L}.hook_resid_pre"], None, layer.input_layernorm.eps)
        q = torch.einsum("bsd,hde->bshe", x, folded_query_weight(model, L)) + b_Q
        masked_close(acts[f"blocks.{L}.attn.hook_q"], q, acts.mask, f"{L} q", 1e-4)


@pytest.mark.parametrize("name", GEMMAS)
def test_effective_embedding_by_hand(name: str) -> None:
    """``W_EE = x + post_attn(attn0(x)) + post_mlp(MLP(ln2(mid)))`` with ``x = W_E * sqrt(32)``,
    every norm written out as ``x / rms(x) * (1 + w)`` (Gemma-1: no post norms)."""
    model = randomise_1d(tiny(name))
    ee = effective_embedding(model)
    layer, eps = _layers(model)[0], model.config.rms_norm_eps
    a = layer.self_attn
    n = 500
    with torch.no_grad():
        W_E = model.hf_model.get_input_embeddings().weight[:n]
        x = W_E * math.sqrt(model.d_model)
        v = rms(x, layer.input_layernorm.weight, eps) @ a.v_proj.weight.T  # [n, kv * dh]
        groups = model.n_heads // model.n_kv_heads
        v = v.unflatten(-1, (model.n_kv_heads, model.d_head)).repeat_interleave(groups, 1)
        attn = v.flatten(1) @ a.o_proj.weight.T
        if name in SANDWICH:
            mid = x + rms(attn, layer.post_attention_layernorm.weight, eps)
            mlp = gated_mlp(layer.mlp, rms(mid, layer.pre_feedforward_layernorm.weight, eps))
            mlp = rms(mlp, layer.post_feedforward_layernorm.weight, eps)
        else:
            mid = x + attn
            mlp = gated_mlp(layer.mlp, rms(mid, layer.post_attention_layernorm.weight, eps))
    torch.testing.assert_close(ee["W_E"][:n], W_E)
    torch.testing.assert_close(ee["W_EE"][:n], mid + mlp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ee["mlp"][:n], mlp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ee["attn_mlp"][:n], (mid + mlp) - x, atol=1e-4, rtol=1e-4)


# -- (c) sandwich norms: which norm is ln2, where resid_mid sits ----------------------------


@pytest.mark.parametrize("name", SANDWICH)
def test_sandwich_norms_by_hand(name: str) -> None:
    """Gemma-2/3: ``resid_mid = resid_pre + rms(attn_out, post_attention_layernorm)``, the MLP
    reads ``rms(resid_mid, pre_feedforward_layernorm)`` (``ln2``), and ``resid_post = resid_mid
    + rms(mlp_out, post_feedforward_layernorm)``; all norms by hand with ``1 + w``."""
    model = randomise_1d(tiny(name))
    fam = model.architecture
    assert (fam.ln2, fam.post_attn_norm, fam.post_mlp_norm) == (
        "pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm")
    acts = model.collect(TEXTS, "blocks.*", positions="all")
    eps = model.config.rms_norm_eps
    for L in range(model.n_layers):
        layer, p = _layers(model)[L], f"blocks.{L}."
        with torch.no_grad():
            mid = acts[p + "hook_resid_pre"] + rms(
                acts[p + "hook_attn_out"], layer.post_attention_layernorm.weight, eps)
            mlp = gated_mlp(layer.mlp, rms(acts[p + "hook_resid_mid"],
                                           layer.pre_feedforward_layernorm.weight, eps))
            post = acts[p + "hook_resid_mid"] + rms(
                acts[p + "hook_mlp_out"], layer.post_feedforward_layernorm.weight, eps)
        masked_close(acts[p + "hook_resid_mid"], mid, acts.mask, p + "resid_mid", 1e-4)
        masked_close(acts[p + "hook_mlp_out"], mlp, acts.mask, p + "mlp_out", 1e-4)
        masked_close(acts[p + "hook_resid_post"], post, acts.mask, p + "resid_post", 1e-4)


# -- (c) attention by hand: q/k norms, rotary, scaling, soft-cap, sliding window ------------


def _rotary(model: lamina.Model, L: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """cos, sin ``[batch, seq, 1, d_head]`` from the model's own rotary module."""
    rope, pos = model.hf_model.model.rotary_emb, torch.arange(x.shape[1])[None]
    with torch.no_grad():
        if model.family == "gemma3":
            cos, sin = rope(x, pos, model.config.layer_types[L])
        else:
            cos, sin = rope(x, pos)
    return cos[:, :, None], sin[:, :, None]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def attention_by_hand(model: lamina.Model, L: int, acts: lamina.Activations, *,
                      window: bool = True, softcap: bool = True) -> torch.Tensor:
    """z ``[batch, seq, n_heads, d_head]`` from the captured q/k/v (right padding)."""
    cfg, layer = model.config, _layers(model)[L]
    p = f"blocks.{L}.attn."
    q, k, v = acts[p + "hook_q"], acts[p + "hook_k"], acts[p + "hook_v"]
    if model.family == "gemma3":
        q = rms(q, layer.self_attn.q_norm.weight.detach(), cfg.rms_norm_eps)
        k = rms(k, layer.self_attn.k_norm.weight.detach(), cfg.rms_norm_eps)
    cos, sin = _rotary(model, L, q)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    groups = model.n_heads // model.n_kv_heads
    k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
    scale = getattr(cfg, "query_pre_attn_scalar", model.d_head) ** -0.5
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * scale
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap and softcap:
        scores = torch.tanh(scores / cap) * cap
    s = q.shape[1]
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    allowed = j <= i
    if window and getattr(cfg, "layer_types", None) and cfg.layer_types[L] == "sliding_attention":
        allowed = allowed & (i - j < cfg.sliding_window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)


@pytest.mark.parametrize("name", GEMMAS)
def test_attention_by_hand(name: str) -> None:
    """hook_z from hook_q/k/v by hand, and the features that shape it matter on these inputs:
    dropping the sliding window (Gemma-2/3 sliding layers) or Gemma-2's score soft-cap gives a
    different z. Queries and keys are scaled up so the soft-cap is far from linear."""
    model = randomise_1d(tiny(name))
    with torch.no_grad():
        for layer in _layers(model):
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    acts = model.collect(TEXTS, ["q.*", "k.*", "v.*", "z.*"], positions="all")
    assert int(acts.lengths.max()) > 2 * getattr(model.config, "sliding_window", 0)
    for L in range(model.n_layers):
        z = acts[f"blocks.{L}.attn.hook_z"]
        masked_close(z, attention_by_hand(model, L, acts), acts.mask, f"{name} layer {L} z", 1e-4)
        if name in SANDWICH and model.config.layer_types[L] == "sliding_attention":
            full = attention_by_hand(model, L, acts, window=False)
            assert float(((full - z) * acts.mask[..., None, None]).abs().max()) > 1e-2
        if name == "gemma2":
            uncapped = attention_by_hand(model, L, acts, softcap=False)
            assert float(((uncapped - z) * acts.mask[..., None, None]).abs().max()) > 1e-2


# -- (a) parity with TransformerLens 4.3 ----------------------------------------------------


def _parity_helpers() -> types.ModuleType:
    """tests/test_parity_transformerlens.py's recipe (skips when TransformerLens is missing,
    without skipping the by-hand tests above)."""
    import test_parity_transformerlens

    return test_parity_transformerlens


@pytest.fixture(scope="module", params=GEMMAS)
def parity(request: pytest.FixtureRequest) -> tuple:
    """lamina's capture (eager attention, before the boot), the post norms' expected outputs
    and TransformerLens's ``run_with_cache`` on the same module (norm weights random, so that
    ``1 + w`` and the q/k norms are not identities)."""
    tlp = _parity_helpers()
    model = randomise_1d(tlp._load(request.param))
    acts = model.collect(TEXTS, model.sites, positions="all")
    expected: dict[str, torch.Tensor] = {}
    eps = model.config.rms_norm_eps
    for L, layer in enumerate(_layers(model)):
        p = f"blocks.{L}."
        with torch.no_grad():
            if request.param in SANDWICH:
                expected[p + "hook_attn_out"] = rms(
                    acts[p + "hook_attn_out"], layer.post_attention_layernorm.weight, eps)
                expected[p + "hook_mlp_out"] = rms(
                    acts[p + "hook_mlp_out"], layer.post_feedforward_layernorm.weight, eps)
            if request.param == "gemma3":
                hw = head_weights(model, L)
                expected[p + "attn.hook_q_normed"] = hw.q_norm(acts[p + "attn.hook_q"])
                expected[p + "attn.hook_k_normed"] = hw.k_norm(acts[p + "attn.hook_k"])
    expected["final_scale"] = 1.0 + model.hf_model.model.norm.weight.detach().clone()
    model.hf_model.config.architectures = [type(model.hf_model).__name__]  # as a checkpoint
    bridge = tlp._boot(model)
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(acts.token_ids, attention_mask=acts.mask.long())
    return model, acts, expected, {k: cache[k] for k in cache.keys()}


def _their_name(model: lamina.Model, site: str) -> str:
    if site in ("ln_final.hook_normalized", f"hidden.{model.n_layers}"):
        return "ln_final.hook_out"  # TL's ln_final.hook_normalized is before the scale 1 + w
    if model.family in SANDWICH and site.endswith(("hook_attn_out", "hook_mlp_out")):
        block, suffix = site.rsplit(".", 1)
        return f"{block}.{'attn' if suffix == 'hook_attn_out' else 'mlp'}.hook_out"
    return _parity_helpers().tl_name(model, site)


def test_every_site_equals_transformerlens(parity: tuple) -> None:
    model, acts, _, cache = parity
    assert acts.sites == model.sites
    for site in model.sites:
        theirs = _their_name(model, site)
        assert theirs in cache, f"TransformerLens recorded no {theirs!r} (lamina's {site})"
        _parity_helpers().assert_masked_close(acts[site], cache[theirs], acts.mask,
                                              f"{site} vs TL {theirs}")


def test_transformerlens_post_norm_and_qk_norm_hooks(parity: tuple) -> None:
    """TransformerLens's ``ln_final.hook_normalized`` is ``x / rms(x)``, before the norm's scale
    ``1 + w`` (lamina's is the norm's output, TransformerLens's ``ln_final.hook_out``).
    TransformerLens's hook_attn_out/hook_mlp_out (Gemma-2/3) are lamina's sublayer outputs
    through the post norms; its hook_q_normed/hook_k_normed (Gemma-3, ``[b, heads, seq,
    d_head]``) are lamina's q/k through ``HeadWeights.q_norm``/``k_norm``."""
    model, acts, expected, cache = parity
    expected = dict(expected)  # the fixture is shared by the module's tests
    scale = expected.pop("final_scale")
    assert float((scale - 1).abs().max()) > 0.1
    assert_masked_close = _parity_helpers().assert_masked_close
    assert_masked_close(acts["ln_final.hook_normalized"], cache["ln_final.hook_normalized"] * scale,
                        acts.mask, "ln_final")
    if model.family == "gemma":
        assert not expected and not any("ln1_post" in k or "_normed" in k for k in cache)
        return
    assert len(expected) == model.n_layers * (4 if model.family == "gemma3" else 2)
    for name, value in expected.items():
        theirs = cache[name].transpose(1, 2) if name.endswith("_normed") else cache[name]
        assert_masked_close(value, theirs, acts.mask, name)


def test_lamina_offers_every_transformerlens_site(parity: tuple) -> None:
    model, _, _, cache = parity
    vocabulary = _parity_helpers().TL_VOCABULARY
    missing = [k for k in cache if vocabulary.match(k) and k not in model.sites]
    assert not missing
