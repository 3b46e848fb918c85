"""Loading from a local Hugging Face directory, and the command line on it."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import torch
from typer.testing import CliRunner

import lamina
from badinput import api_fails, cli_fails
from conftest import TEXTS, tiny
from lamina.cli import app


def test_local_directory_loads_same_model(gpt2_dir: str) -> None:
    original = tiny("gpt2")
    loaded = lamina.load(gpt2_dir)
    assert loaded.family == "gpt2" and loaded.is_causal
    assert (loaded.n_layers, loaded.d_model, loaded.n_heads, loaded.d_head) == (3, 32, 4, 8)
    assert loaded.max_length == 64 and loaded.vocab_size == 30522
    a = original.collect(TEXTS, "hidden.*")
    b = loaded.collect(TEXTS, "hidden.*")
    for site in a:
        torch.testing.assert_close(a[site], b[site])


def test_missing_model_gets_clear_error(tmp_path) -> None:
    with pytest.raises(lamina.LaminaError, match="not a Hugging Face model directory"):
        lamina.load(str(tmp_path))
    with pytest.raises(lamina.LaminaError, match="Built-in models: minilm"):
        lamina.load("no-such-org/no-such-model-xyz")


def _edited_copy(src: str, dst, **changes) -> str:
    """A copy of the model directory ``src`` at ``dst`` with ``changes`` in its config.json."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return str(dst)


def test_remote_code_is_refused_and_never_runs(gpt2_dir: str, tmp_path) -> None:
    ran = tmp_path / "remote-code-ran"
    path = _edited_copy(gpt2_dir, tmp_path / "custom", model_type="evil",
                        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (tmp_path / "custom" / "evil.py").write_text(
        f"open({str(ran)!r}, 'w').write('ran')\nraise SystemExit('remote code ran')\n")
    message = api_fails(lambda: lamina.load(path), "own Python code", "auto_map",
                        r"trust_remote_code=True")
    assert "is off" in message
    cli_fails(["sites", "--model", path], "own Python code", "command line never runs it",
              r"lamina\.load\(\.\.\., trust_remote_code=True\)")
    assert not ran.exists()


def test_unknown_model_type_names_the_alternatives(gpt2_dir: str, tmp_path) -> None:
    path = _edited_copy(gpt2_dir, tmp_path / "odd", model_type="my_own_transformer")
    api_fails(lambda: lamina.load(path), "model_type 'my_own_transformer'",
              "does not know", "gpt2", "module:", r"lamina\.load\(\(module, tokenizer\)\)")
    cli_fails(["sites", "--model", path], "my_own_transformer", "module:")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    api_fails(lambda: lamina.load(str(broken)), "config.json is not valid JSON")


def test_builtin_names_in_messages_match_the_registry() -> None:
    from lamina.loading import _BUILTIN_NAMES

    assert _BUILTIN_NAMES == ", ".join(lamina.BUILTINS)


def _no_load(monkeypatch) -> None:
    """Make any attempt to read a model fail loudly: the check must come before the work."""
    import transformers

    def refuse(*_a, **_k):
        raise AssertionError("a model was read before the bad input was refused")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def test_cli_sites_and_norms(gpt2_dir: str, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["sites", "--model", gpt2_dir])
    assert result.exit_code == 0, result.output
    assert "blocks.2.attn.hook_q" in result.output and "ln_final.hook_normalized" in result.output
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "out"
    result = runner.invoke(app, ["norms", "--model", gpt2_dir, "--lines", str(texts),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_texts"] == len(TEXTS) and "conclusion" in summary["summary"]
    assert "hidden.3" in result.output


def test_cli_reports_bad_input_without_traceback(gpt2_dir: str) -> None:
    result = CliRunner().invoke(app, ["norms", "--model", gpt2_dir, "--site", "resid_pots.1"])
    assert result.exit_code == 2
    assert "Unknown site" in result.output and "Traceback" not in result.output


def test_every_analysis_command_runs_with_model_and_inputs(gpt2_dir: str, tmp_path) -> None:
    from lamina.corpus import tinyshakespeare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tinyshakespeare()[:30000])
    runner = CliRunner()
    commands = {
        "categories": ["--permutations", "20"],
        "embeddings": ["--tokens", "re:^[a-c]", "--probe", "cat,dog"],
        "contexts": ["--text-file", str(corpus), "--target", "love", "--target", "lord",
                     "--window", "10", "--max-per-target", "20"],
        "lens": ["--text", "ROMEO: what light"],
        "pathlength": ["--text", "the cat sat on the mat and looked at the moon"],
        "alignment": ["--layer", "1", "--head", "0", "--query", "token:the",
                      "--n-sequences", "20", "--seq-len", "12"],
    }
    for command, args in commands.items():
        out = tmp_path / command
        result = runner.invoke(app, [command, "--model", gpt2_dir, *args, "--out", str(out)])
        assert result.exit_code == 0, (command, result.output)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["versions"]["lamina"] and list(out.glob("*.png")), command


# -- model specs: missing paths, wrong types, hub without network (item 12) --------------------

@pytest.mark.parametrize("spec", ["./no/such/dir", "/tmp/lamina-no-such-model-dir", "a/b/c",
                                  "~/no-such-lamina-model/", "../nowhere"])
def test_missing_local_path_says_no_such_directory(spec, monkeypatch) -> None:
    _no_load(monkeypatch)
    message = api_fails(lambda: lamina.load(spec), f"No such directory: {re.escape(spec)}",
                        "built-in name")
    assert "Repo id" not in message
    cli_fails(["sites", "--model", spec], "No such directory")


@pytest.mark.parametrize("spec", [None, 123, "", ("only-one",), (object(), None)])
def test_bad_model_spec(spec, monkeypatch) -> None:
    _no_load(monkeypatch)
    api_fails(lambda: lamina.load(spec), "Cannot load|nn.Module")


def test_local_file_is_not_a_model_directory(tmp_path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    api_fails(lambda: lamina.load(str(path)), "is a file, not a Hugging Face model directory")


@pytest.fixture()
def no_hub(monkeypatch):
    """Online mode and a hub address where nothing listens (the model id is never cached)."""
    import huggingface_hub.constants as hub

    with socket.socket() as s:  # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{port}")
    return port


def test_hub_id_without_network_fails_fast_and_says_how_to_work_offline(no_hub) -> None:
    start = time.monotonic()
    api_fails(lambda: lamina.load("lamina-tests/not-cached-model"), "cannot be reached",
              "not in the local Hugging Face cache", "pass its directory", "HF_HUB_OFFLINE=1")
    cli_fails(["sites", "--model", "lamina-tests/not-cached-model"], "cannot be reached")
    assert time.monotonic() - start < 10


def test_hub_id_offline_mode_says_so(no_hub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api_fails(lambda: lamina.load("lamina-tests/not-cached-model"), "HF_HUB_OFFLINE is set",
              "pass its directory")


def test_hub_reachability_check_sees_a_listening_host(no_hub, monkeypatch) -> None:
    import huggingface_hub.constants as hub

    from lamina.loading import hub_reachable

    assert not hub_reachable(timeout=1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=1)
