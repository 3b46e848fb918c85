"""RoBERTa / XLM-R, DistilBERT and T5's encoder: parity with TransformerLens 4.3 where it boots
offline (RoBERTa, XLM-R through the RoBERTa adapter, T5), and what is special to each family,
each against an independent computation: RoBERTa's positions from ``padding_idx + 1`` and its
usable context, DistilBERT's post-LN sites by hand, T5 running only its encoder, its loader,
RMSNorm query weights and effective embedding by hand.

TransformerLens 4.3 has no DistilBERT adapter (``test_transformerlens_has_no_distilbert``):
DistilBERT is checked against Hugging Face and by hand only.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers

import lamina
from conftest import FAMILIES, TEXTS, bert_tokenizer, masked_close, randomise_1d, save_model, tiny
from lamina.errors import ContextLengthError
from lamina.loading import _auto_class
from lamina.sites import BLOCK_SITES
from lamina.weights import effective_embedding, folded_query_bias, folded_query_weight

TL = pytest.importorskip("transformer_lens.model_bridge")


def t5_full(kind: str = "generation") -> torch.nn.Module:
    """conftest's tiny T5 shape (d_kv 6), as a whole encoder-decoder model."""
    torch.manual_seed(0)
    config = FAMILIES["t5_encoder"]().config
    cls = {"generation": transformers.T5ForConditionalGeneration,
           "model": transformers.T5Model}[kind]
    return cls(config).eval()


# -- parity with TransformerLens 4.3 ---------------------------------------------------------

#: BERT's post-LN renames (lamina suffix -> TL 4.3 hook), as tests/test_parity_transformerlens.
POST_LN = {"hook_attn_out": "attn.o.hook_out", "hook_resid_mid": "ln1.hook_in",
           "hook_resid_post": "ln2.hook_in", "hook_normalized_resid_post": "hook_resid_post"}


def tl_name(name: str, site: str, n: int) -> str:
    """The TL 4.3 hook holding lamina's ``site`` (RoBERTa: BERT's renames; T5: the encoder's
    ``encoder_blocks``, whose hook_embed TL overwrites with the decoder's embedding)."""
    t5 = name == "t5"
    blocks = "encoder_blocks" if t5 else "blocks"
    if site.startswith("hidden."):
        i = int(site.split(".")[1])
        if i < n:
            return f"{blocks}.{i}.hook_resid_pre"
        return "encoder_ln_final.hook_out" if t5 else f"blocks.{n - 1}.hook_resid_post"
    if site == "hook_embed":
        return "encoder_blocks.0.hook_resid_pre" if t5 else "embed.hook_out"
    if site == "ln_final.hook_normalized":
        return "encoder_ln_final.hook_out"  # TL's hook_normalized is not the norm's output
    m = re.match(r"^blocks\.(\d+)\.(.+)$", site)
    if m and not t5 and m.group(2) in POST_LN:
        return f"blocks.{m.group(1)}.{POST_LN[m.group(2)]}"
    return f"{blocks}.{m.group(1)}.{m.group(2)}" if m else site


@dataclass
class Pair:
    name: str
    model: lamina.Model
    acts: lamina.Activations
    cache: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=["roberta", "xlm_roberta", "t5"])
def pair(request: pytest.FixtureRequest) -> Pair:
    name = request.param
    if name == "t5":  # TL's T5 adapter needs the whole encoder-decoder model
        model = randomise_1d(lamina.load((t5_full(), bert_tokenizer())))
    else:
        model = randomise_1d(tiny(name))
    model.hf_model.set_attn_implementation("eager")
    acts = model.collect(TEXTS, model.sites, positions="all")
    hf, kwargs = model.hf_model, {}
    if name == "t5":
        kwargs["decoder_input_ids"] = torch.zeros((len(TEXTS), 1), dtype=torch.long)
    else:  # TL's adapter expects RobertaForMaskedLM; XLM-R's modules are RoBERTa's
        config = copy.deepcopy(hf.config)
        config.architectures = ["RobertaForMaskedLM"]
        shell = transformers.RobertaForMaskedLM(config)
        shell.roberta = hf
        hf = shell.eval()
    bridge = TL.TransformerBridge.boot_transformers(
        f"lamina-parity-{name}", hf_model=hf, tokenizer=bert_tokenizer(), device="cpu")
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(acts.token_ids, attention_mask=acts.mask.long(),
                                         **kwargs)
    return Pair(name, model, acts, {k: cache[k] for k in cache.keys()})


def test_every_site_equals_transformerlens(pair: Pair) -> None:
    model, acts, cache = pair.model, pair.acts, pair.cache
    for site in model.sites:
        theirs = tl_name(pair.name, site, model.n_layers)
        assert theirs in cache, f"TL recorded no {theirs!r} (lamina's {site})"
        masked_close(acts[site], cache[theirs], acts.mask, f"{site} vs TL {theirs}")


def test_lamina_offers_every_transformerlens_block_site(pair: Pair) -> None:
    """Each per-block hook TL records under one of lamina's names is a lamina site (TL's
    hook_pos_embed is T5's relative attention bias, which is not a residual-stream site)."""
    model, cache = pair.model, pair.cache
    prefix = "encoder_blocks" if pair.name == "t5" else "blocks"
    vocabulary = re.compile(rf"^{prefix}\.(\d+)\.({'|'.join(map(re.escape, BLOCK_SITES))})$")
    found = [m for m in map(vocabulary.match, cache) if m]
    assert found
    assert not [m.group(0) for m in found if f"blocks.{m.group(1)}.{m.group(2)}" not in
                model.sites]
    assert ("hook_pos_embed" in model.sites) == (pair.name != "t5")


@pytest.mark.parametrize("pair", ["roberta", "xlm_roberta"], indirect=True)
def test_roberta_transformerlens_names_documented_relations(pair: Pair) -> None:
    """TL 4.3's own post-LN names in lamina's terms (docs/sites.md): TL's hook_resid_mid is
    lamina's hook_resid_post (before LN2), TL's hook_resid_post the block output, TL's
    hook_embed the embedding LayerNorm's output (block 0's input)."""
    model, acts, cache = pair.model, pair.acts, pair.cache
    masked_close(acts["blocks.0.hook_resid_pre"], cache["hook_embed"], acts.mask, "embed")
    for L in range(model.n_layers):
        p = f"blocks.{L}."
        masked_close(acts[p + "hook_resid_post"], cache[p + "hook_resid_mid"], acts.mask, p)
        masked_close(acts[p + "hook_normalized_resid_post"], cache[p + "hook_resid_post"],
                     acts.mask, p)


def test_transformerlens_has_no_distilbert() -> None:
    """Why DistilBERT has no parity test: TL 4.3 has no adapter for it (if one appears, add
    DistilBERT to the parity fixture)."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    assert not [a for a in SUPPORTED_ARCHITECTURES if a.startswith("DistilBert")]
    assert "RobertaForMaskedLM" in SUPPORTED_ARCHITECTURES
    assert "T5ForConditionalGeneration" in SUPPORTED_ARCHITECTURES


# -- RoBERTa / XLM-R -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["roberta", "xlm_roberta"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_roberta_positions_start_after_padding_idx(name: str, side: str) -> None:
    """hook_pos_embed at real token j is row padding_idx + 1 + j of the position table on
    either padding side, and every hidden state equals Hugging Face's on the input alone."""
    model = tiny(name, padding_side=side)
    pad = model.config.pad_token_id
    assert pad == model.tokenizer.pad_token_id == 0
    acts = model.collect(TEXTS, ["hook_pos_embed", "hidden.*"], positions="all")
    table = model.hf_model.embeddings.position_embeddings.weight.detach()
    width = acts.mask.shape[1]
    expected = table[pad + 1 : pad + 1 + width][None].expand(len(TEXTS), -1, -1)
    masked_close(acts["hook_pos_embed"], expected, acts.mask, "pos_embed", atol=0)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.to_tokens(text)[0]])
        with torch.no_grad():
            alone = model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
        n = ids.shape[1]
        for L, h in enumerate(alone):
            torch.testing.assert_close(acts[f"hidden.{L}"][i, :n], h[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["roberta", "xlm_roberta"])
def test_roberta_context_is_table_minus_padding_rows(name: str) -> None:
    """max_length = max_position_embeddings - padding_idx - 1 (64 - 0 - 1 here; 514 - 1 - 1 =
    512 for roberta-base's config); one more token is refused (Hugging Face itself would index
    past its position table), truncate=True keeps the first max_length."""
    model = tiny(name)
    assert model.max_length == 63
    config_cls = {"roberta": transformers.RobertaConfig,
                  "xlm_roberta": transformers.XLMRobertaConfig}[name]
    base = config_cls(max_position_embeddings=514)  # pad_token_id 1, as roberta-base
    assert model.architecture.dims(base).max_length == 512
    ids = [[101] + [2000 + i for i in range(62)] + [102]]  # 64 tokens
    with pytest.raises(ContextLengthError, match="context of 63"):
        model.collect(ids, "hidden.1")
    with pytest.raises((IndexError, RuntimeError)), torch.no_grad():
        model.hf_model(input_ids=torch.tensor(ids))
    with pytest.warns(UserWarning, match="Truncated"):
        acts = model.collect(ids, "hidden.*", positions="last", truncate=True)
    assert int(acts.lengths[0]) == 63
    with torch.no_grad():
        ref = model.hf_model(input_ids=torch.tensor([ids[0][:63]]), output_hidden_states=True)
    torch.testing.assert_close(acts["hidden.3"][0], ref.hidden_states[3][0, -1], atol=1e-5,
                               rtol=1e-5)


def test_roberta_positions_right_when_tokenizer_pad_differs() -> None:
    """A RoBERTa whose config pads with 1 (as roberta-base) read with the BERT tokenizer (pad
    0): lamina passes position ids counted over the attention mask, so a left-padded batch
    still equals each input alone, where Hugging Face's own ids-based positions would not."""
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, vocab_size=30522)
    assert config.pad_token_id == 1
    model = lamina.load((transformers.RobertaModel(config).eval(), bert_tokenizer("left")))
    acts = model.collect(TEXTS, "hidden.*", positions="last", batch_size=4)
    ids = model.to_tokens(TEXTS)
    width = max(map(len, ids))
    padded = torch.tensor([[0] * (width - len(s)) + s for s in ids])
    mask = (torch.arange(width)[None] >= width - torch.tensor([len(s) for s in ids])[:, None])
    with torch.no_grad():
        naive = model.hf_model(input_ids=padded, attention_mask=mask.long()).last_hidden_state
    for i, seq in enumerate(ids):
        with torch.no_grad():
            alone = model.hf_model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        torch.testing.assert_close(acts["hidden.2"][i], alone, atol=1e-5, rtol=1e-5)
        if len(seq) < width:  # the sensitivity check: pads counted as tokens shift positions
            assert float((naive[i, -1] - alone).abs().max()) > 1e-3


# -- DistilBERT ------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, ln: torch.nn.LayerNorm) -> np.ndarray:
    w, b = (p.detach().double().numpy() for p in (ln.weight, ln.bias))
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + ln.eps) * w + b


def test_distilbert_post_ln_sites_by_hand() -> None:
    """hidden.0 = LN(embed + pos_embed); z through out_lin is attn_out; resid_mid = resid_pre +
    attn_out; resid_post = sa_layer_norm(resid_mid) + mlp_out; the block output
    (hook_normalized_resid_post, HF's hidden state) = output_layer_norm(resid_post); all in
    numpy float64 from the modules' parameters."""
    model = randomise_1d(tiny("distilbert"))
    acts = model.collect(TEXTS, ["hook_embed", "hook_pos_embed", "blocks.*", "hidden.*"],
                         positions="all")
    m = acts.mask.numpy()
    def np_(site: str) -> np.ndarray:
        return acts[site].double().numpy()[m]
    emb = model.hf_model.embeddings
    np.testing.assert_allclose(_layer_norm(np_("hook_embed") + np_("hook_pos_embed"),
                                           emb.LayerNorm), np_("hidden.0"), atol=1e-5)
    for L in range(model.n_layers):
        blk, p = model.block(L), f"blocks.{L}."
        out_lin = blk.attention.out_lin
        z = np_(p + "attn.hook_z").reshape(m.sum(), -1)
        attn = z @ out_lin.weight.detach().double().numpy().T + out_lin.bias.detach().numpy()
        np.testing.assert_allclose(attn, np_(p + "hook_attn_out"), atol=1e-5)
        np.testing.assert_allclose(np_(p + "hook_resid_pre") + attn, np_(p + "hook_resid_mid"),
                                   atol=1e-5)
        mid_n = _layer_norm(np_(p + "hook_resid_mid"), blk.sa_layer_norm)
        np.testing.assert_allclose(mid_n + np_(p + "hook_mlp_out"), np_(p + "hook_resid_post"),
                                   atol=1e-4)
        out = _layer_norm(np_(p + "hook_resid_post"), blk.output_layer_norm)
        np.testing.assert_allclose(out, np_(p + "hook_normalized_resid_post"), atol=1e-4)
        np.testing.assert_allclose(out, np_(f"hidden.{L + 1}"), atol=1e-4)
    with pytest.raises(lamina.LaminaError, match="pre-LN"):
        effective_embedding(model)


# -- T5's encoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["encoder", "generation"])
def test_t5_directory_loads_as_encoder_model(kind: str, tmp_path) -> None:
    """A saved T5EncoderModel or T5ForConditionalGeneration loads as T5EncoderModel (not
    causal, no context limit, d_head = d_kv = 6) with the saved encoder's hidden states."""
    hf = FAMILIES["t5_encoder"]().eval() if kind == "encoder" else t5_full()
    path = save_model(lamina.Model(hf, bert_tokenizer()), tmp_path / kind)
    model = lamina.load(path, device="cpu")
    assert type(model.hf_model) is transformers.T5EncoderModel
    assert model.family == "t5" and not model.is_causal and model.max_length is None
    assert (model.n_heads, model.d_head, model.d_model, model.n_layers) == (4, 6, 32, 3)
    ids = model.to_tokens(TEXTS)
    acts = model.collect(ids, "hidden.*", positions="all")
    width = acts.mask.shape[1]
    padded = torch.tensor([s + [0] * (width - len(s)) for s in ids])
    encoder = hf.encoder if kind == "generation" else hf
    with torch.no_grad():
        ref = encoder(input_ids=padded, attention_mask=acts.mask.long(),
                      output_hidden_states=True).hidden_states
    assert len(ref) == model.n_layers + 1
    for i, h in enumerate(ref):
        masked_close(acts[f"hidden.{i}"], h, acts.mask, f"hidden.{i}")


@pytest.mark.parametrize("kind", ["generation", "model"])
def test_t5_whole_model_runs_only_its_encoder(kind: str) -> None:
    """T5ForConditionalGeneration / T5Model given as (module, tokenizer): the plan calls its
    encoder, the decoder never runs (no decoder inputs needed), and the sites are those of
    T5EncoderModel."""
    hf = t5_full(kind)
    model = lamina.load((hf, bert_tokenizer("left")))
    assert model.plan("hidden.*").runner is hf.encoder
    assert model.sites == tiny("t5_encoder").sites and not model.is_causal
    ran: list[bool] = []
    handle = hf.decoder.register_forward_hook(lambda *_: ran.append(True))
    try:
        acts = model.collect(TEXTS, ["hidden.*", "blocks.1.attn.hook_k"], positions="last")
    finally:
        handle.remove()
    assert not ran
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.to_tokens(text)[0]])
        with torch.no_grad():
            ref = hf.encoder(input_ids=ids, output_hidden_states=True).hidden_states
            k = hf.encoder.block[1].layer[0].SelfAttention.k(hf.encoder.block[1].layer[0]
                                                             .layer_norm(ref[1]))
        for L, h in enumerate(ref):
            torch.testing.assert_close(acts[f"hidden.{L}"][i], h[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts["blocks.1.attn.hook_k"][i], k[0, -1].reshape(4, 6),
                                   atol=1e-5, rtol=1e-5)


def _rms(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """T5's RMSNorm by hand: ``w * x / sqrt(mean(x^2) + eps)`` (no mean, no bias, no 1 + w)."""
    x = x.double()
    return norm.weight.detach().double() * x / torch.sqrt(
        x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def test_t5_folded_query_weight_and_effective_embedding_by_hand() -> None:
    """folded_query_weight = w_ln1[:, None] * W_Q (W_Q read from q.weight by hand), applied to
    the *unscaled* normalised resid_pre it gives hook_q; the query bias is zero; W_EE = x +
    rms1(x) @ W_V @ W_O + DenseReluDense(rms2(mid)) with ReLU by hand."""
    model = randomise_1d(tiny("t5_encoder"))
    blk = model.block(0)
    attn, ff = blk.layer[0].SelfAttention, blk.layer[1].DenseReluDense
    h, dk = model.n_heads, model.d_head
    W_Q = attn.q.weight.detach().double().reshape(h, dk, -1).transpose(1, 2)  # [h, d, dk]
    w1 = blk.layer[0].layer_norm.weight.detach().double()
    torch.testing.assert_close(folded_query_weight(model, 0).double(), w1[None, :, None] * W_Q)
    assert float(folded_query_bias(model, 0).abs().max()) == 0.0
    acts = model.collect(TEXTS, ["resid_pre.0", "q.0"], positions="all")
    x = acts["blocks.0.hook_resid_pre"].double()
    eps = blk.layer[0].layer_norm.variance_epsilon
    unit = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    q = torch.einsum("bsd,hde->bshe", unit, folded_query_weight(model, 0).double())
    masked_close(acts["blocks.0.attn.hook_q"].double(), q, acts.mask, "q", 1e-5)

    ee = effective_embedding(model)
    W_E = model.hf_model.get_input_embeddings().weight.detach()[:500].double()
    ov = attn.v.weight.detach().double().T @ attn.o.weight.detach().double().T
    mid = W_E + _rms(W_E, blk.layer[0].layer_norm) @ ov
    hidden = torch.relu(_rms(mid, blk.layer[1].layer_norm) @ ff.wi.weight.detach().double().T)
    mlp = hidden @ ff.wo.weight.detach().double().T
    torch.testing.assert_close(ee["W_EE"][:500].double(), mid + mlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ee["mlp"][:500].double(), mlp, atol=1e-5, rtol=1e-5)


# -- the loader ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arch", "expected"), [
    ("gptj", "GPTJForCausalLM", transformers.GPTJForCausalLM),
    ("roberta", "RobertaModel", transformers.RobertaModel),
    ("roberta", "RobertaForMaskedLM", transformers.RobertaForMaskedLM),
    ("xlm_roberta", "XLMRobertaForMaskedLM", transformers.XLMRobertaForMaskedLM),
    ("distilbert", "DistilBertModel", transformers.DistilBertModel),
    ("distilbert", "DistilBertForMaskedLM", transformers.DistilBertForMaskedLM),
    ("t5_encoder", "T5ForConditionalGeneration", transformers.T5EncoderModel),
    ("t5_encoder", "T5EncoderModel", transformers.T5EncoderModel),
])
def test_auto_class_builds_the_family_class(name: str, arch: str, expected: type) -> None:
    """``loading._auto_class`` on each family's config (``architectures`` as saved) builds the
    expected class, and lamina reads the same sites from it as from conftest's model."""
    config = copy.deepcopy(FAMILIES[name]().config)
    config.architectures = [arch]
    cls = _auto_class(config)
    built = cls(config) if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else (
        cls.from_config(config))
    assert type(built) is expected
    assert lamina.load((built, bert_tokenizer())).sites == tiny(name).sites
