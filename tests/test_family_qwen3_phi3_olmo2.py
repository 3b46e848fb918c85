"""Qwen3, Phi-3 and OLMo-2: parity with TransformerLens 4.3 on the same Hugging Face module,
and by-hand checks of what is special in each family.

* Qwen3: ``attn.hook_q``/``hook_k`` are the projections; the per-head RMSNorm (over head_dim)
  comes after them, and ``module:model.layers.{L}.self_attn.q_norm`` holds the normed queries
  (TransformerLens 4.x's ``attn.hook_q_normed``). ``head_dim`` (16) != hidden / heads (8).
* Phi-3: q/k/v sliced out of the fused ``qkv_proj`` with grouped-query widths; gate/up fused;
  rotary on half of each head.
* OLMo-2: no norm in front of either sublayer; ``hook_attn_out``/``hook_mlp_out`` are before the
  sublayer's output norm, where TransformerLens 4.x's hooks of those names are after it
  (``OLMO2_RENAMED``); ``hook_resid_mid`` is the MLP's input; q/k norms span the whole projection.

Every tiny model has its 1-d parameters (norm scales) randomised, so a norm read from the wrong
place, or applied per head instead of over the projection, shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import lamina
from conftest import TEXTS, bert_tokenizer, randomise_1d, tiny
from lamina.weights import effective_embedding, folded_query_bias, folded_query_weight, head_weights
from test_parity_transformerlens import TL_VOCABULARY, assert_masked_close, tl_name

TransformerBridge = pytest.importorskip("transformer_lens.model_bridge").TransformerBridge

NAMES = ["qwen3", "phi3", "olmo2"]
#: OLMo-2, lamina suffix -> TransformerLens 4.x hook holding the same tensor. TL's own
#: hook_attn_out / hook_mlp_out are the *normed* sublayer outputs (ln1_post / ln2_post).
OLMO2_RENAMED = {"hook_attn_out": "attn.hook_out", "hook_mlp_out": "mlp.hook_out"}
#: TL 4.3's bridge records ``ln_final.hook_normalized`` *before* the norm's scale ``w`` (the
#: norm's output is ``ln_final.hook_out``); lamina's ln_final.hook_normalized and hidden.{n}
#: are the final norm's output. Invisible at init (w = 1): the norms here are randomised.
FINAL_NORM_OUT = "ln_final.hook_out"


def _module_sites(model: lamina.Model, which: str) -> list[str]:
    return [f"module:model.layers.{L}.self_attn.{which}" for L in range(model.n_layers)]


def theirs(model: lamina.Model, site: str) -> str:
    """The TransformerLens 4.x hook holding lamina's ``site`` for these families."""
    if site in ("ln_final.hook_normalized", f"hidden.{model.n_layers}"):
        return FINAL_NORM_OUT
    if model.family == "olmo2":
        head, _, suffix = site.rpartition(".hook_")
        if head.startswith("blocks.") and f"hook_{suffix}" in OLMO2_RENAMED:
            return f"{head}.{OLMO2_RENAMED['hook_' + suffix]}"
    return tl_name(model, site)


@dataclass
class Pair:
    model: lamina.Model
    acts: lamina.Activations
    cache: dict[str, torch.Tensor]
    normed: dict[str, torch.Tensor]  # OLMo-2: post-sublayer norms of lamina's sublayer outputs
    final_w: torch.Tensor  # the final norm's scale


@pytest.fixture(scope="module", params=NAMES)
def pair(request: pytest.FixtureRequest) -> Pair:
    model = randomise_1d(tiny(request.param))
    hf = model.hf_model
    hf.set_attn_implementation("eager")
    extra = [] if request.param == "phi3" else _module_sites(model, "q_norm") + _module_sites(
        model, "k_norm")
    acts = model.collect(TEXTS, [*model.sites, *extra], positions="all")
    normed = {}
    if model.family == "olmo2":  # before the boot rewrites the norm modules
        with torch.no_grad():
            for L in range(model.n_layers):
                blk = hf.model.layers[L]
                normed[f"{L}.attn"] = blk.post_attention_layernorm(
                    acts[f"blocks.{L}.hook_attn_out"])
                normed[f"{L}.mlp"] = blk.post_feedforward_layernorm(
                    acts[f"blocks.{L}.hook_mlp_out"])
    final_w = hf.model.norm.weight.detach().clone()
    # A model built in code has no config.architectures; the bridge picks its adapter by it.
    hf.config.architectures = [type(hf).__name__]
    bridge = TransformerBridge.boot_transformers(
        f"lamina-parity-{model.family}", hf_model=hf, tokenizer=bert_tokenizer(), device="cpu")
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(acts.token_ids, attention_mask=acts.mask.long())
    return Pair(model, acts, {k: cache[k] for k in cache.keys()}, normed, final_w)


def test_every_site_equals_transformerlens(pair: Pair) -> None:
    model, acts, cache = pair.model, pair.acts, pair.cache
    for site in model.sites:
        name = theirs(model, site)
        assert name in cache, f"TransformerLens recorded no {name!r} (lamina's {site})"
        assert_masked_close(acts[site], cache[name], acts.mask, f"{site} vs TL {name}")


def test_lamina_offers_every_transformerlens_site(pair: Pair) -> None:
    missing = [k for k in pair.cache if TL_VOCABULARY.match(k) and k not in pair.model.sites]
    assert not missing


def test_final_norm_scale_sits_between_transformerlens_hooks(pair: Pair) -> None:
    """lamina's ln_final.hook_normalized = TL's ln_final.hook_normalized * w (RMSNorm's scale)."""
    acts, cache = pair.acts, pair.cache
    assert (pair.final_w - 1).abs().max() > 0.1  # randomised, so the two hooks differ
    assert_masked_close(acts["ln_final.hook_normalized"],
                        cache["ln_final.hook_normalized"] * pair.final_w, acts.mask, "ln_final")


def test_normed_queries_and_keys_equal_transformerlens(pair: Pair) -> None:
    """``module:...self_attn.q_norm``/``k_norm`` = TL's ``attn.hook_q_normed``/``hook_k_normed``
    (TL records Qwen3's as ``[batch, heads, seq, d_head]``, OLMo-2's over the projection)."""
    model, acts, cache = pair.model, pair.acts, pair.cache
    if model.family == "phi3":
        assert not any("normed" in k for k in cache)  # Phi-3 has no q/k norm
        return
    for L in range(model.n_layers):
        for which in ("q", "k"):
            ours = acts[f"module:model.layers.{L}.self_attn.{which}_norm"]
            tl = cache[f"blocks.{L}.attn.hook_{which}_normed"]
            tl = tl.transpose(1, 2) if model.family == "qwen3" else tl
            assert_masked_close(ours, tl, acts.mask, f"{L} {which}_norm")
            # ... and they are not the projections: the norm sits after hook_q / hook_k.
            proj = acts[f"blocks.{L}.attn.hook_{which}"].reshape(ours.shape)
            assert (ours - proj).abs().max() > 1e-2


def test_olmo2_transformerlens_names_documented_relations(pair: Pair) -> None:
    """TL's OLMo-2 hook_attn_out / hook_mlp_out are the post-sublayer norms of lamina's, and
    what each residual add adds (docs/sites.md)."""
    model, acts, cache, mask = pair.model, pair.acts, pair.cache, pair.acts.mask
    if model.family != "olmo2":
        assert not pair.normed
        return
    for L in range(model.n_layers):
        p = f"blocks.{L}."
        attn, mlp = cache[p + "hook_attn_out"], cache[p + "hook_mlp_out"]
        assert_masked_close(pair.normed[f"{L}.attn"], attn, mask, p + "attn")
        assert_masked_close(pair.normed[f"{L}.mlp"], mlp, mask, p + "mlp")
        mid, pre, post = (acts[p + s] for s in ("hook_resid_mid", "hook_resid_pre",
                                                "hook_resid_post"))
        assert_masked_close(mid - pre, attn, mask, p + "resid_mid - resid_pre")
        assert_masked_close(post - mid, mlp, mask, p + "resid_post - resid_mid")


# -- by hand, from the Hugging Face modules' weights --------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotary(x: torch.Tensor, config) -> torch.Tensor:
    """Rotary embedding on the first ``partial_rotary_factor`` of each head, positions 0.. (x:
    ``[batch, seq, heads, d_head]``, right padding)."""
    rope = config.rope_parameters
    dh = x.shape[-1]
    rd = int(dh * rope.get("partial_rotary_factor", 1.0))
    inv = 1.0 / rope["rope_theta"] ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    ang = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv  # [seq, rd / 2]
    cos, sin = (torch.cat([f(ang)] * 2, -1)[None, :, None].to(x.dtype) for f in (torch.cos,
                                                                                   torch.sin))
    r, rest = x[..., :rd], x[..., rd:]
    half = torch.cat([-r[..., rd // 2 :], r[..., : rd // 2]], -1)
    return torch.cat([r * cos + half * sin, rest], -1)


@pytest.mark.parametrize("name", NAMES)
def test_z_from_q_k_v_through_the_familys_norms_and_rotary(name: str) -> None:
    """hook_z = causal softmax(rot(qn) . rot(kn) / sqrt(d_head)) @ v, with qn/kn by hand: Qwen3
    RMS-normalises each head, OLMo-2 the whole projection, Phi-3 nothing (rotary on half of each
    head). So hook_q/hook_k are what the family's norm and rotary start from."""
    model = randomise_1d(tiny(name))
    cfg = model.config
    acts = model.collect(TEXTS, ["q.*", "k.*", "v.*", "z.*"], positions="all")
    n, s = len(acts), acts.mask.shape[1]
    assert (model.d_head, model.n_kv_heads) == (16 if name == "qwen3" else 8, 2)
    for L in range(model.n_layers):
        q, k, v = (acts[f"blocks.{L}.attn.hook_{c}"] for c in "qkv")
        attn = model.block(L).self_attn
        with torch.no_grad():
            if name == "qwen3":  # per head, over d_head
                q, k = (_rms(t, m.weight, cfg.rms_norm_eps) for t, m in
                        ((q, attn.q_norm), (k, attn.k_norm)))
            elif name == "olmo2":  # over the whole projection
                q, k = (_rms(t.flatten(2), m.weight, cfg.rms_norm_eps).reshape(t.shape)
                        for t, m in ((q, attn.q_norm), (k, attn.k_norm)))
        q, k = _rotary(q, cfg), _rotary(k, cfg)
        groups = model.n_heads // model.n_kv_heads
        k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(model.d_head)
        scores = scores.masked_fill(torch.ones(s, s).triu(1).bool(), float("-inf"))
        z = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)
        assert z.shape == (n, s, model.n_heads, model.d_head)
        assert_masked_close(acts[f"blocks.{L}.attn.hook_z"], z, acts.mask, f"{name} {L} z")


def test_phi3_fused_projections_by_hand() -> None:
    """q/k/v are the [q | k | v] slices of qkv_proj (widths 4*8, 2*8, 2*8) of ln1(resid_pre);
    the MLP is down(up * silu(gate)) with gate_up_proj = [gate | up] on ln2(resid_mid)."""
    model = randomise_1d(tiny("phi3"))
    acts = model.collect(TEXTS, ["blocks.*"], positions="all")
    for L in range(model.n_layers):
        blk = model.block(L)
        p = f"blocks.{L}."
        with torch.no_grad():
            x = blk.input_layernorm(acts[p + "hook_resid_pre"])
            qkv = x @ blk.self_attn.qkv_proj.weight.T
            q, k, v = qkv[..., :32], qkv[..., 32:48], qkv[..., 48:]
            gate, up = (blk.post_attention_layernorm(acts[p + "hook_resid_mid"])
                        @ blk.mlp.gate_up_proj.weight.T).chunk(2, -1)
            mlp = (up * F.silu(gate)) @ blk.mlp.down_proj.weight.T
        assert qkv.shape[-1] == 64
        for got, want in [("q", q), ("k", k), ("v", v)]:
            t = acts[p + f"attn.hook_{got}"]
            assert_masked_close(t, want.reshape(t.shape), acts.mask, p + got)
        assert_masked_close(acts[p + "hook_mlp_out"], mlp, acts.mask, p + "mlp_out")


def test_olmo2_resid_mid_is_the_residual_stream_between_the_sublayers() -> None:
    """resid_mid = resid_pre + RMSNorm(attn_out) * w (by hand), the MLP reads it raw, and
    resid_post = resid_mid + RMSNorm(mlp_out) * w'; there is no norm in front of attention."""
    model = randomise_1d(tiny("olmo2"))
    eps = model.config.rms_norm_eps
    acts = model.collect(TEXTS, ["blocks.*"], positions="all")
    assert model.architecture.ln1 is None and model.architecture.ln2 is None
    for L in range(model.n_layers):
        blk, p = model.block(L), f"blocks.{L}."
        with torch.no_grad():
            mid = acts[p + "hook_resid_pre"] + _rms(acts[p + "hook_attn_out"],
                                                    blk.post_attention_layernorm.weight, eps)
            post = mid + _rms(acts[p + "hook_mlp_out"], blk.post_feedforward_layernorm.weight,
                              eps)
            mlp = blk.mlp(acts[p + "hook_resid_mid"])
        assert_masked_close(acts[p + "hook_resid_mid"], mid, acts.mask, p + "mid", )
        assert_masked_close(acts[p + "hook_resid_post"], post, acts.mask, p + "post")
        assert_masked_close(acts[p + "hook_mlp_out"], mlp, acts.mask, p + "mlp")
        assert head_weights(model, L).ln1 is None


@pytest.mark.parametrize("name", ["phi3", "olmo2"])
def test_effective_embedding_by_hand(name: str) -> None:
    """Phi-3 (pre-norm, fused qkv): W_E + ln1(W_E) @ W_V @ W_O, then MLP(ln2(mid)); OLMo-2 (no
    pre-norm, post-sublayer norms): W_E + post_attn(W_E @ W_V @ W_O), then post_mlp(MLP(mid))."""
    model = randomise_1d(tiny(name))
    ee = effective_embedding(model)
    blk = model.block(0)
    groups, kv, dh = model.n_heads // model.n_kv_heads, model.n_kv_heads, model.d_head
    with torch.no_grad():
        W_E = model.hf_model.get_input_embeddings().weight[:500]
        if name == "phi3":
            wv = blk.self_attn.qkv_proj.weight[model.n_heads * dh + kv * dh :]  # value rows
            v = blk.input_layernorm(W_E) @ wv.T
        else:
            v = W_E @ blk.self_attn.v_proj.weight.T
        v = v.unflatten(-1, (kv, dh)).repeat_interleave(groups, dim=1).flatten(1)
        attn = v @ blk.self_attn.o_proj.weight.T
        if name == "phi3":
            mid = W_E + attn
            mlp = blk.mlp(blk.post_attention_layernorm(mid))
        else:
            mid = W_E + blk.post_attention_layernorm(attn)
            mlp = blk.post_feedforward_layernorm(blk.mlp(mid))
    torch.testing.assert_close(ee["W_EE"][:500], mid + mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["mlp"][:500], mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["attn_mlp"], ee["W_EE"] - ee["W_E"])


@pytest.mark.parametrize("name", NAMES)
def test_folded_query_weight_and_bias_and_qk_norms(name: str) -> None:
    """RMSNorm families: folded W_Q = ln1.weight[:, None] * W_Q, folded b_Q = b_Q (zero here);
    OLMo-2 has no ln1, so both are the raw projection's. q_norm/k_norm are the modules."""
    model = randomise_1d(tiny(name))
    h, dh = model.n_heads, model.d_head
    for L in range(model.n_layers):
        blk = model.block(L)
        a = blk.self_attn
        raw = a.qkv_proj.weight[: h * dh] if name == "phi3" else a.q_proj.weight  # [h*dh, d]
        W_Q = raw.detach().T.reshape(-1, h, dh).permute(1, 0, 2)
        scale = torch.ones(model.d_model) if name == "olmo2" else blk.input_layernorm.weight
        torch.testing.assert_close(folded_query_weight(model, L),
                                   scale.detach()[None, :, None] * W_Q)
        assert torch.equal(folded_query_bias(model, L), torch.zeros(h, dh))
        hw = head_weights(model, L)
        if name == "phi3":
            assert hw.q_norm is None and hw.k_norm is None
        else:
            assert hw.q_norm is a.q_norm and hw.k_norm is a.k_norm
            width = dh if name == "qwen3" else h * dh  # per head vs whole projection
            assert hw.q_norm.weight.shape == (width,)
