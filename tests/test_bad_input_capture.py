"""Loading and capture under bad input (issue 14, items 6, 7, 10, 11, 12): each case is a
``LaminaError`` in Python and exit code 2 with one line on the command line, or is handled
correctly, checked against an independent computation."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
import torch

import lamina
from badinput import api_fails, cli_fails, cli_ok
from conftest import TEXTS, bert_tokenizer, tiny
from lamina.errors import ContextLengthError, OutputError, UnknownSiteError


@pytest.fixture(scope="module")
def gpt2() -> lamina.Model:
    return tiny("gpt2")


@pytest.fixture(scope="module")
def char() -> lamina.Model:
    return lamina.load("shakespeare-char", device="cpu")


@pytest.fixture()
def texts(tmp_path) -> str:
    path = tmp_path / "texts.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    return str(path)


def _no_load(monkeypatch) -> None:
    """Make any attempt to read a model fail loudly: the check must come before the work."""
    import transformers

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


# -- devices and dtypes: refused before any model is read ------------------------------------

BAD_DEVICES = ["gpu", "tpu", "cuda:x", "CPU", 7] + (
    [] if torch.cuda.is_available() else ["cuda", "cuda:0"]) + [
    f"cuda:{torch.cuda.device_count() + 7}"]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_bad_device_is_refused_before_loading(device, monkeypatch, gpt2) -> None:
    _no_load(monkeypatch)
    message = api_fails(lambda: lamina.load("shakespeare-char", device=device),
                        rf"device={str(device)!r}", "This machine has: cpu")
    assert "Traceback" not in message
    api_fails(lambda: gpt2.collect(TEXTS, "hidden.1", device=device), "This machine has: cpu")


@pytest.mark.parametrize("dtype", ["foo", "int8", "torch.int64", torch.int8, torch.bool, 3])
def test_non_float_dtype_is_refused(dtype, monkeypatch, gpt2) -> None:
    _no_load(monkeypatch)
    api_fails(lambda: lamina.load("shakespeare-char", dtype=dtype), "not a float dtype",
              "float32, float16, bfloat16")
    api_fails(lambda: gpt2.collect(TEXTS, "hidden.1", dtype=dtype), "not a float dtype")


@pytest.mark.parametrize("dtype", ["int8", "foo", "uint8"])
def test_cli_capture_dtype_refused_before_loading(dtype, texts, tmp_path, monkeypatch) -> None:
    _no_load(monkeypatch)
    out = tmp_path / "acts.safetensors"
    cli_fails(["capture", "--lines", texts, "--out", out, "--dtype", dtype],
              rf"--dtype {dtype} is not a float dtype", "float32")
    assert not out.exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_float_storage_dtypes_hold_the_float32_values(dtype, gpt2) -> None:
    full = gpt2.collect(TEXTS, "hidden.2")["hidden.2"]
    acts = gpt2.collect(TEXTS, "hidden.2", dtype=dtype)
    assert acts["hidden.2"].dtype == getattr(torch, dtype) and acts.meta["dtype"] == dtype
    torch.testing.assert_close(acts["hidden.2"], full.to(getattr(torch, dtype)))


# -- positions, inputs, sites, batch sizes -----------------------------------------------------

BAD_POSITIONS = [
    (1.5, r"positions=1\.5 is not a position"),
    ("middle", "Unknown positions 'middle'"),
    (True, "not a position"),
    ([0, 1.5, 0, 0], "not a position"),
    (None, "not a position"),
    (99, r"Position 99 is outside input 0, which has \d+ tokens"),
    (-99, r"Position -99 is outside input 0"),
    ([0, 1], "2 entries for 4 inputs"),
]


@pytest.mark.parametrize(("positions", "needle"), BAD_POSITIONS)
def test_bad_positions(positions, needle, gpt2) -> None:
    api_fails(lambda: gpt2.collect(TEXTS, "hidden.1", positions=positions), needle)


@pytest.mark.parametrize(("value", "needle"), [
    ("1.5", r"Unknown --positions 1\.5: use last, first, all or an int"),
    ("middle", "Unknown --positions middle"),
    ("999", r"--positions 999 is outside input 0"),
])
def test_cli_bad_positions(value, needle, texts, tmp_path) -> None:
    cli_fails(["capture", "--model", "shakespeare-char", "--lines", texts, "--out",
               tmp_path / "a.safetensors", "--positions", value], needle)


BAD_INPUTS = [
    (None, "not NoneType"),
    (123, "not int"),
    ({"a": 1}, "not dict"),
    ({"a", "b"}, "not set"),
    (b"bytes", "not bytes"),
    ([], "No inputs"),
    ([None], "Input 0 is NoneType"),
    (["a", None], "mix strings and token ids"),
    ([1.5], "Input 0 is float"),
    ([1, 2, 3], "Input 0 is int"),
    ([[1, 2.5]], "Input 0 is list"),
    ([[True, 2]], "Input 0 is list"),
    (torch.ones(2, 3), "integer token ids"),
    (torch.ones(2, 3, 4, dtype=torch.long), "integer token ids"),
    ([[101, 10**7]], "outside the vocabulary"),
    ([[]], "Input 0 has no tokens"),
]


@pytest.mark.parametrize(("inputs", "needle"), BAD_INPUTS)
def test_bad_inputs(inputs, needle, gpt2) -> None:
    api_fails(lambda: gpt2.collect(inputs, "hidden.1"), needle)


def test_token_ids_as_arrays_equal_lists(gpt2) -> None:
    ids = gpt2.to_tokens(["the cat sat", "on the mat"])  # equal lengths
    as_list = gpt2.collect(ids, "hidden.1")["hidden.1"]
    for form in (np.array(ids), torch.tensor(ids), [np.array(x) for x in ids]):
        torch.testing.assert_close(gpt2.collect(form, "hidden.1")["hidden.1"], as_list)
    picks = gpt2.collect(ids, "hidden.1", positions=np.array([0, -1]), batch_size=1)
    every = gpt2.collect(ids, "hidden.1", positions="all")["hidden.1"]
    torch.testing.assert_close(picks["hidden.1"], torch.stack([every[0, 0], every[1, -1]]))


BAD_SITES = [
    (None, "not NoneType"),
    (123, "not int"),
    ([], "No site was requested"),
    (["hidden.*", 5], r"sites holds 5 \(int\)"),
    ([""], "non-empty strings"),
    ("resid_pots.1", "Unknown site 'resid_pots.1'"),
]


@pytest.mark.parametrize(("sites", "needle"), BAD_SITES)
def test_bad_sites(sites, needle, gpt2) -> None:
    api_fails(lambda: gpt2.collect(TEXTS, sites), needle, exc=UnknownSiteError)


@pytest.mark.parametrize(("site", "needle"), [
    ("", "--site '' is empty"),
    ("resid_pots.1", "Run `lamina sites` for the list"),
    ("module:nope", "Run `lamina sites --modules`"),
])
def test_cli_bad_sites_speak_cli(site, needle, texts, tmp_path) -> None:
    line = cli_fails(["capture", "--model", "shakespeare-char", "--lines", texts, "--out",
                      tmp_path / "a", "--site", site], needle)
    assert "print(model" not in line and "sites=" not in line


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_bad_batch_size(batch_size, gpt2) -> None:
    api_fails(lambda: gpt2.collect(TEXTS, "hidden.1", batch_size=batch_size),
              "batch_size must be an integer >= 1")


def test_cli_bad_batch_size(texts, tmp_path, monkeypatch) -> None:
    _no_load(monkeypatch)
    cli_fails(["capture", "--lines", texts, "--out", tmp_path / "a", "--batch-size", "0"],
              "--batch-size must be an integer >= 1")


def test_context_length_speaks_each_interface(char, tmp_path) -> None:
    limit = char.max_length
    long_line = "ab " * limit
    api_fails(lambda: char.collect([long_line], "hidden.1"), "truncate=True",
              exc=ContextLengthError)
    path = tmp_path / "long.txt"
    path.write_text(long_line + "\n")
    out = tmp_path / "acts.safetensors"
    line = cli_fails(["capture", "--model", "shakespeare-char", "--lines", path, "--out", out],
                     f"context of {limit} tokens", "--truncate")
    assert "truncate=True" not in line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli_ok(["capture", "--model", "shakespeare-char", "--lines", path, "--out", out,
                "--truncate", "--site", "hidden.4"])
    acts = lamina.Activations.load(out)
    assert int(acts.lengths[0]) == limit
    expected = char.collect([long_line[:limit]], "hidden.4")["hidden.4"]
    torch.testing.assert_close(acts["hidden.4"], expected)


# -- capture --out and --lines: checked before the model is loaded ----------------------------

def test_cli_capture_out_checked_before_loading(texts, tmp_path, monkeypatch) -> None:
    _no_load(monkeypatch)
    existing = tmp_path / "taken.safetensors"
    existing.mkdir()
    cli_fails(["capture", "--lines", texts, "--out", existing, "--model", "./no/such/dir"],
              "is a directory", "--out")
    parent_file = tmp_path / "file"
    parent_file.write_text("x")
    cli_fails(["capture", "--lines", texts, "--out", parent_file / "acts"],
              "is a file, not a directory", "--out")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cli_fails(["capture", "--lines", texts, "--out", locked / "acts"], "not writable")


def test_cli_capture_texts_not_utf8(tmp_path, monkeypatch) -> None:
    _no_load(monkeypatch)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    cli_fails(["capture", "--lines", bad, "--out", tmp_path / "a"], "not UTF-8", "--lines")


def test_activations_save_is_atomic_and_checked(gpt2, tmp_path, monkeypatch) -> None:
    acts = gpt2.collect(TEXTS, "hidden.1")
    target = acts.save(tmp_path / "acts")
    before = target.read_bytes()
    import lamina.activations as module

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        gpt2.collect(TEXTS[:1], "hidden.2").save(target)
    assert target.read_bytes() == before and sorted(tmp_path.iterdir()) == [target]
    (tmp_path / "dir.safetensors").mkdir()
    api_fails(lambda: acts.save(tmp_path / "dir"), "is a directory", exc=OutputError)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    api_fails(lambda: lamina.Activations.load(tmp_path / "junk.safetensors"),
              "not a readable activations file")


# -- module: sites without a sequence axis (item 6) -------------------------------------------

@pytest.mark.parametrize("positions", ["last", "all", 0, "first"])
def test_pooler_without_sequence_axis_equals_hf_pooler_output(positions) -> None:
    model = tiny("bert")
    # 30 words + [CLS] + [SEP] = 32 tokens = d_model: the pooled width equals the sequence's
    texts = [*TEXTS, " ".join(["a"] * 30)]
    assert model.d_model == 32 and len(model.to_tokens(texts[-1])[0]) == 32
    with pytest.warns(UserWarning, match="module:pooler: no sequence axis"):
        acts = model.collect(texts, ["module:pooler", "hidden.1"], positions=positions,
                             batch_size=2)
    assert acts.meta["no_sequence_axis"] == ["module:pooler"]
    with torch.no_grad():
        expected = torch.cat([
            model.hf_model(input_ids=torch.tensor([model.to_tokens(t)[0]])).pooler_output
            for t in texts])
    assert acts["module:pooler"].shape == (len(texts), model.d_model)
    torch.testing.assert_close(acts["module:pooler"], expected, atol=1e-5, rtol=0)
    width = 32  # the longest input, in tokens
    assert acts["hidden.1"].shape == ((len(texts), width, 32) if positions == "all"
                                      else (len(texts), 32))


def test_per_token_module_site_is_not_mistaken_for_pooled() -> None:
    model = tiny("bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no sequence axis" warning for a per-token module
        acts = model.collect(TEXTS, ["module:encoder.layer.1", "hidden.2"], positions="last")
    assert "no_sequence_axis" not in acts.meta
    torch.testing.assert_close(acts["module:encoder.layer.1"], acts["hidden.2"])


# -- forward signatures without attention_mask (item 10) --------------------------------------

class _Opaque(torch.nn.Module):
    """Wraps a model; its forward signature cannot be read, so lamina cannot know it takes
    an attention_mask. Counts its calls and the widths it was given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.widths = inner, []

    def forward(self, input_ids, **kwargs):
        self.widths.append(input_ids.shape[1])
        return self.inner(input_ids, **kwargs)


_Opaque.forward.__signature__ = "unreadable"  # inspect.signature raises TypeError


@pytest.mark.parametrize("side", ["right", "left"])
def test_uninspectable_forward_never_gets_padded_batches(side) -> None:
    base = tiny("gpt2", padding_side=side)
    wrapper = _Opaque(base.hf_model.transformer)
    model = lamina.load((wrapper, base.tokenizer))
    texts = [*TEXTS, "hello there", "the dog sat on the mat"]  # some share a length
    lengths = [len(s) for s in model.to_tokens(texts)]
    acts = model.collect(texts, "module:inner.h.1", positions="last", batch_size=4)
    probes, calls = wrapper.widths[:2], wrapper.widths[2:]
    assert probes == [2, 3]  # the module: site's sequence-axis probe
    assert calls == sorted(set(lengths), reverse=True)  # one pass per length, no padding
    with torch.no_grad():
        for i, ids in enumerate(model.to_tokens(texts)):
            alone = base.hf_model.transformer(torch.tensor([ids]), output_hidden_states=True)
            torch.testing.assert_close(acts["module:inner.h.1"][i], alone.hidden_states[2][0, -1],
                                       atol=1e-5, rtol=0)


def test_tuple_load_applies_device_and_dtype() -> None:
    base = tiny("gpt2")
    reference = copy.deepcopy(base.hf_model).to(torch.bfloat16)
    fp32 = base.collect(TEXTS[:1], "hidden.2")["hidden.2"]
    model = lamina.load((base.hf_model, base.tokenizer), device="cpu", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.hf_model.parameters())
    assert model.processing == ["weights cast to bfloat16"] and model.device.type == "cpu"
    got = model.collect(TEXTS[:1], "hidden.2")["hidden.2"]
    ids = torch.tensor(model.to_tokens(TEXTS[0]))
    with torch.no_grad():
        expected = reference.transformer(ids, output_hidden_states=True).hidden_states[2][:, -1]
    torch.testing.assert_close(got, expected.float(), atol=2e-2, rtol=2e-2)
    assert not torch.equal(got, fp32)  # the cast was applied, not ignored
    kept = lamina.load((tiny("gpt2").hf_model.half(), bert_tokenizer()))
    assert next(kept.hf_model.parameters()).dtype == torch.float16 and kept.processing == []
    api_fails(lambda: lamina.load((base.hf_model, base.tokenizer), device="cuda:99"),
              "cuda:99")


def test_cli_sites_lists_module_paths_that_capture(char, texts, tmp_path) -> None:
    listed = cli_ok(["sites", "--model", "shakespeare-char", "--modules"])
    assert "module:transformer.h.3.mlp  (GPT2MLP)" in listed
    out = tmp_path / "mlp.safetensors"
    cli_ok(["capture", "--model", "shakespeare-char", "--lines", texts, "--out", out,
            "--site", "module:transformer.h.3.mlp", "--site", "mlp_out.3"])
    acts = lamina.Activations.load(out)
    torch.testing.assert_close(acts["module:transformer.h.3.mlp"], acts["blocks.3.hook_mlp_out"])
    expected = char.collect(["First Citizen:", "Before we proceed any further, hear me speak."],
                            "mlp_out.3")["blocks.3.hook_mlp_out"]
    torch.testing.assert_close(acts["blocks.3.hook_mlp_out"], expected)


@pytest.mark.parametrize("layer", [-1, 99, 1.5, True])
def test_head_weights_bad_layer(layer, gpt2) -> None:
    from lamina.weights import head_weights

    api_fails(lambda: head_weights(gpt2, layer), "layer must be an int in")
