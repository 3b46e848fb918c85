"""Parity with TransformerLens 4.x: every TransformerLens-named site lamina offers equals what
TransformerLens's own ``TransformerBridge.run_with_cache`` records on the *same* Hugging Face
module, for every family both support (GPT-2, GPT-NeoX parallel and sequential, Llama / Mistral /
Qwen2 with grouped-query attention, BERT), on tiny random models and on the real ``minilm``.

Where lamina's convention differs on purpose (BERT's post-LN sites, see ``docs/sites.md``), the
test asserts the documented relation instead of equality of names.

Two facts about the bridge shape the test:

* ``boot_transformers(hf_model=...)`` boots offline from the module it is given, but rewrites
  that module in place (its submodules become bridge components) and forces eager attention.
  So lamina captures first, on the untouched module switched to eager attention, and the bridge
  is booted on that same module afterwards; the session-wide ``minilm`` fixture is never handed
  to the bridge (a fresh copy is loaded here).
* The bridge's BERT adapter expects ``BertForMaskedLM`` (``.bert.encoder...``): a bare
  ``BertModel`` is put inside a ``BertForMaskedLM`` shell (``shell.bert is model.hf_model``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch
import transformers

import lamina
from conftest import TEXTS, bert_tokenizer, masked_close, randomise_1d, tiny
from lamina.sites import BLOCK_SITES

TransformerBridge = pytest.importorskip("transformer_lens.model_bridge").TransformerBridge

ATOL = RTOL = 1e-5
FAMILIES = [
    "gpt2", "neox_parallel", "neox_sequential", "llama", "mistral", "qwen2", "bert", "minilm",
]
#: BERT (post-LN): lamina follows the residual-stream meaning of the names (resid_mid =
#: resid_pre + attn_out, resid_post = LN1(resid_mid) + mlp_out, both before their LayerNorm;
#: the block output is hook_normalized_resid_post), TransformerLens 4.x names hooks by module
#: position. lamina suffix -> the TransformerLens 4.x hook holding the same tensor.
BERT_RENAMED = {
    "hook_attn_out": "attn.o.hook_out",  # TL's hook_attn_out is LN1(resid_mid)
    "hook_resid_mid": "ln1.hook_in",
    "hook_resid_post": "ln2.hook_in",  # == TL's hook_resid_mid
    "hook_normalized_resid_post": "hook_resid_post",
}
#: Names from lamina's vocabulary: any of these that TransformerLens records, lamina must offer.
TL_VOCABULARY = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_normalized|blocks\.\d+\.("
    + "|".join(re.escape(s) for s in BLOCK_SITES)
    + "))$"
)


def _load(name: str) -> lamina.Model:
    model = lamina.load("minilm", device="cpu") if name == "minilm" else tiny(name)
    if name != "minilm":  # random init leaves norms at identity: make them count
        randomise_1d(model, shift=0.5)
    # The bridge forces eager attention on the module it wraps: compare like with like.
    model.hf_model.set_attn_implementation("eager")
    return model


def _boot(model: lamina.Model) -> TransformerBridge:
    """Boot TransformerLens's bridge offline on ``model.hf_model`` (rewritten in place)."""
    hf = model.hf_model
    if model.family == "bert" and not hasattr(hf, "bert"):
        shell = transformers.BertForMaskedLM(hf.config)
        shell.bert = hf
        hf = shell.eval()
    return TransformerBridge.boot_transformers(
        f"lamina-parity-{model.family}", hf_model=hf, tokenizer=bert_tokenizer(), device="cpu"
    )


def tl_name(model: lamina.Model, site: str) -> str:
    """The TransformerLens 4.x hook holding lamina's ``site`` (see docs/sites.md)."""
    n = model.n_layers
    if site.startswith("hidden."):
        i = int(site.split(".")[1])
        if i < n:
            return f"blocks.{i}.hook_resid_pre"
        # the last hidden state: after the final norm, or BERT's last block output
        if model.family == "bert":
            return f"blocks.{n - 1}.hook_resid_post"
        return "ln_final.hook_out"
    if site == "ln_final.hook_normalized":  # the norm module's output, scale and bias applied
        return "ln_final.hook_out"  # (TL's hook_normalized is before them: see docs/sites.md)
    if model.family == "bert":
        if site == "hook_embed":
            return "embed.hook_out"  # TL's hook_embed is the embedding LayerNorm's output
        m = re.match(r"^(blocks\.\d+)\.(.+)$", site)
        if m and m.group(2) in BERT_RENAMED:
            return f"{m.group(1)}.{BERT_RENAMED[m.group(2)]}"
    return site


def assert_masked_close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor, what: str):
    masked_close(ours, theirs, mask, what, atol=ATOL, rtol=RTOL)


@dataclass
class Pair:
    model: lamina.Model
    acts: lamina.Activations  # every site, all positions
    last: lamina.Activations  # resid_post, last position
    cache: dict[str, torch.Tensor]  # TransformerLens's run_with_cache
    layer_norms: list[torch.nn.Module]  # BERT's per-block LN1 modules, untouched by the boot


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest) -> Pair:
    model = _load(request.param)
    acts = model.collect(TEXTS, model.sites, positions="all")
    last = model.collect(TEXTS, "blocks.*.hook_resid_post", positions="last")
    layer_norms = (
        [layer.attention.output.LayerNorm for layer in model.hf_model.encoder.layer]
        if model.family == "bert"
        else []
    )
    bridge = _boot(model)
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(acts.token_ids, attention_mask=acts.mask.long())
    return Pair(model, acts, last, {k: cache[k] for k in cache.keys()}, layer_norms)


def test_every_site_equals_transformerlens(pair: Pair) -> None:
    model, acts, cache = pair.model, pair.acts, pair.cache
    assert acts.sites == model.sites
    for site in model.sites:
        theirs = tl_name(model, site)
        assert theirs in cache, f"TransformerLens recorded no {theirs!r} (lamina's {site})"
        assert_masked_close(acts[site], cache[theirs], acts.mask, f"{site} vs TL {theirs}")


def test_lamina_offers_every_transformerlens_site(pair: Pair) -> None:
    """Each hook TransformerLens records under one of lamina's names is a lamina site too
    (parallel-attention NeoX: neither has hook_resid_mid). Exception: on BERT, TL's
    ``ln_final`` is the masked-LM head's transform LayerNorm, not part of the encoder."""
    model, cache = pair.model, pair.cache
    head_only = {"ln_final.hook_normalized"} if model.family == "bert" else set()
    missing = [
        k for k in cache if TL_VOCABULARY.match(k) and k not in model.sites and k not in head_only
    ]
    assert not missing


def test_last_position_equals_transformerlens(pair: Pair) -> None:
    model, acts, last, cache = pair.model, pair.acts, pair.last, pair.cache
    rows = torch.arange(len(acts))
    for L in range(model.n_layers):
        site = f"blocks.{L}.hook_resid_post"
        expected = cache[tl_name(model, site)][rows, acts.lengths - 1]
        torch.testing.assert_close(last[site], expected, atol=ATOL, rtol=RTOL)


def test_grouped_query_keys_keep_kv_heads(pair: Pair) -> None:
    """k and v keep n_kv_heads heads, as TransformerLens 4.x does; q keeps n_heads."""
    model, acts, cache = pair.model, pair.acts, pair.cache
    for L in range(model.n_layers):
        heads = {"q": model.n_heads, "k": model.n_kv_heads, "v": model.n_kv_heads}
        for which, n in heads.items():
            site = f"blocks.{L}.attn.hook_{which}"
            assert acts[site].shape[2:] == (n, model.d_head)
            assert cache[site].shape == acts[site].shape


@pytest.mark.parametrize("pair", ["bert", "minilm"], indirect=True)
def test_bert_transformerlens_names_documented_relations(pair: Pair) -> None:
    """TransformerLens 4.x's own BERT names, in lamina's terms (docs/sites.md)."""
    model, acts, cache = pair.model, pair.acts, pair.cache
    mask = acts.mask
    assert_masked_close(acts["blocks.0.hook_resid_pre"], cache["hook_embed"], mask, "hook_embed")
    for L in range(model.n_layers):
        p = f"blocks.{L}."
        assert_masked_close(acts[p + "hook_resid_post"], cache[p + "hook_resid_mid"], mask, p)
        assert_masked_close(
            acts[p + "hook_normalized_resid_post"], cache[p + "hook_resid_post"], mask, p
        )
        with torch.no_grad():
            normalized_mid = pair.layer_norms[L](acts[p + "hook_resid_mid"])
        assert_masked_close(normalized_mid, cache[p + "hook_attn_out"], mask, p + "attn_out")


@pytest.mark.parametrize("pair", ["gpt2", "llama"], indirect=True)
def test_final_norm_names_documented_relation(pair: Pair) -> None:
    """lamina's ``ln_final.hook_normalized`` is the final norm module's output; TL 4.x's hook
    of that name is the normalised value before the norm's weight (and bias)."""
    model, acts, cache = pair.model, pair.acts, pair.cache
    norm = model.hf_model.get_submodule(model.base_path(model.architecture.final_norm))
    theirs = cache["ln_final.hook_normalized"] * norm.weight.detach()
    if getattr(norm, "bias", None) is not None:
        theirs = theirs + norm.bias.detach()
    assert_masked_close(acts["ln_final.hook_normalized"], theirs, acts.mask, "ln_final")
