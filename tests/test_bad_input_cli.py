"""Bad input to the command line's files, outputs, training and sampling: every case ends in
exit code 2 and one ``error:`` line in the CLI's words (a ``LaminaError`` in Python), before
any work is done, never a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import lamina
from badinput import api_fails, cli_fails
from lamina import outputs
from lamina.corpus import read_lines, read_text_file, text_of, tinyshakespeare
from lamina.errors import LaminaError, OutputError
from lamina.sampling import generate
from lamina.train import train_char_lm

TEXT = tinyshakespeare()[:20_000]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files the cases refer to as {name}."""
    d = tmp_path_factory.mktemp("bad")
    (d / "latin1.txt").write_bytes("the café\nking\n".encode("latin-1"))
    (d / "a_file").write_text("not a directory\n")
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("someone's files\n")
    (d / "short.txt").write_text("ROMEO: hi\n" * 3)
    (d / "text.txt").write_text(TEXT)
    (d / "empty.txt").write_text("\n\n")
    return {"latin": str(d / "latin1.txt"), "file": str(d / "a_file"),
            "foreign": str(d / "foreign"), "missing": str(d / "missing.txt"),
            "short": str(d / "short.txt"), "text": str(d / "text.txt"),
            "empty": str(d / "empty.txt"), "dir": str(d / "foreign"),
            "new": str(d / "new-out")}


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in args]


# every command with --out checks it before the work: an existing file, a directory below a
# file, a non-empty directory that is no previous output (it would be replaced as a whole)
OUT_COMMANDS = [
    ["norms", "--model", "shakespeare-char"],
    ["lens", "--model", "shakespeare-char", "--text", "ROMEO:"],
    ["pathlength", "--model", "shakespeare-char", "--text", "ROMEO:"],
    ["embeddings", "--model", "shakespeare-char"],
    ["categories", "--model", "shakespeare-char"],
    ["contexts", "--model", "shakespeare-char", "--text-file", "{text}", "--target", "K"],
    ["alignment", "--model", "shakespeare-char", "--layer", "0", "--head", "0"],
    ["similar", "--store", "{dir}", "--query", "a", "--site", "hidden.1"],
    ["approximate", "--store", "{dir}"],
    ["train", "--text-file", "{text}", "--preset", "tiny"],
]
BAD_OUTS = [
    ("{file}", [r"\bis a file\b|exists and is a file", "--out"]),
    ("{file}/sub", [r"is a file, not a directory", "--out"]),
    ("{foreign}", [r"non-empty directory", "no previous output", "--out"]),
]


@pytest.mark.parametrize("out,needles", BAD_OUTS, ids=["file", "below-file", "foreign-dir"])
@pytest.mark.parametrize("command", OUT_COMMANDS, ids=[c[0] for c in OUT_COMMANDS])
def test_unwritable_out_is_refused_before_the_work(command: list[str], out: str,
                                                   needles: list[str], paths: dict) -> None:
    cli_fails(_fill([*command, "--out", out], paths), *needles)


def test_read_only_out_parent(paths: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # tests may run as root, for whom every directory is writable: simulate a read-only one
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    cli_fails(["lens", "--text", "hi", "--out", paths["new"]], "not writable", "--out")
    api_fails(lambda: train_char_lm(TEXT, paths["new"], preset="tiny"), "not writable", "out=")


# input files: missing, a directory, not UTF-8, empty -- named by the option they came from
FILE_CASES = [
    (["lens", "--text", "@{latin}"], ["not UTF-8", "offset 7", "--text", "iconv"]),
    (["lens", "--text", "@{missing}"], ["No such text file", "--text"]),
    (["lens", "--text", "@{dir}"], ["not a file", "--text"]),
    (["pathlength", "--model", "shakespeare-char", "--text", "@{latin}"],
     ["not UTF-8", "--text"]),
    (["norms", "--model", "shakespeare-char", "--lines", "{latin}"], ["not UTF-8", "--lines"]),
    (["norms", "--model", "shakespeare-char", "--lines", "{empty}"],
     ["no non-empty lines", "--lines"]),
    (["capture", "--model", "shakespeare-char", "--lines", "{latin}", "--out", "{new}.st"],
     ["not UTF-8", "--lines"]),
    (["contexts", "--text-file", "{latin}", "--target", "king"], ["not UTF-8", "--text-file"]),
    (["contexts", "--text-file", "{missing}", "--target", "king"], ["No such", "--text-file"]),
    (["categories", "--words", "{latin}"], ["not UTF-8", "--words"]),
    (["categories", "--words", "{missing}"], ["No such", "--words"]),
    (["train", "--text-file", "{latin}", "--out", "{new}"], ["not UTF-8", "--text-file"]),
    (["train", "--text-file", "{missing}", "--out", "{new}"], ["No such", "--text-file"]),
]


@pytest.mark.parametrize("args,needles", FILE_CASES)
def test_bad_input_files(args: list[str], needles: list[str], paths: dict) -> None:
    cli_fails(_fill(args, paths), *needles)
    assert not Path(paths["new"]).exists()


# options of train and generate: wrong types, unknown choices, values out of range
OPTION_CASES = [
    (["train", "--text-file", "{text}", "--out", "{new}", "--steps", "0"], ["--steps", "not 0"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--steps", "-5"], ["--steps", "-5"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--steps", "many"],
     ["Invalid value for '--steps'", "valid integer"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--seed", "-1"], ["--seed", "-1"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--preset", "huge"],
     ["--preset", "huge", "seed, small, tiny"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--device", "gpu7"],
     ["--device", "gpu7", "cpu or cuda"]),
    (["train", "--text-file", "{text}", "--out", "{new}", "--device", "meta"],
     ["--device cpu or cuda"]),
    (["train", "--text-file", "{short}", "--out", "{new}", "--preset", "tiny"],
     ["--text-file is too short", "context of 32", "at least 340 characters"]),
    (["train", "--text-file", "{short}", "--out", "{new}"], ["too short", "--preset tiny"]),
    (["train", "--out", "{new}"], ["Missing option", "--text-file"]),
    (["generate", "--top-k", "0"], ["--top-k", ">= 1", "not 0"]),
    (["generate", "--top-k", "-3"], ["--top-k"]),
    (["generate", "-n", "-1"], ["-n", ">= 0", "not -1"]),
    (["generate", "-n", "ten"], ["Invalid value for '-n'", "valid integer"]),
    (["generate", "--temperature", "nan"], ["--temperature", "finite", "nan"]),
    (["generate", "--temperature", "inf"], ["--temperature", "inf"]),
    (["generate", "--temperature", "-1"], ["--temperature", ">= 0"]),
    (["generate", "--temperature", "hot"], ["Invalid value for '--temperature'", "valid number"]),
    (["generate", "--seed", "-2"], ["--seed", "integer from 0 to 2\\*\\*63 - 1, not -2"]),
    (["generate", "--prompt", ""], ["--prompt", "empty"]),
    (["generate", "--bogus"], ["No such option", "--bogus"]),
]


@pytest.mark.parametrize("args,needles", OPTION_CASES)
def test_bad_options(args: list[str], needles: list[str], paths: dict) -> None:
    line = cli_fails(_fill(args, paths), *needles)
    assert "=True" not in line and "top_k" not in line  # the CLI's words, not Python's
    assert not Path(paths["new"]).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(paths: dict) -> None:
    cli_fails(_fill(["train", "--text-file", "{text}", "--out", "{new}", "--device", "cuda"],
                    paths), "CUDA is not available", "--device cpu")
    api_fails(lambda: train_char_lm(TEXT, paths["new"], device="cuda"), "device='cpu'")


def test_truncate_options_exist_where_the_error_suggests_them() -> None:
    long = "ROMEO: " * 60  # 420 characters, the character model's context is 128
    line = cli_fails(["lens", "--model", "shakespeare-char", "--text", long],
                     "longer than the model's context of 128", "--truncate")
    assert "truncate=True" not in line
    from badinput import cli_ok

    out = cli_ok(["lens", "--model", "shakespeare-char", "--text", long, "--truncate"])
    assert "layer" in out and "top_token" in out  # the lens table printed


# the same checks through the Python API, in the API's words
@pytest.fixture(scope="module")
def char_model() -> lamina.Model:
    return lamina.load("shakespeare-char", device="cpu")


API_GENERATE = [
    (dict(n=-1), ["n \\(tokens", "not -1"]),
    (dict(n=2.5), ["n \\(tokens", "2.5"]),
    (dict(n=True), ["n \\(tokens"]),
    (dict(temperature=math.nan), ["temperature", "finite", "nan"]),
    (dict(temperature=-math.inf), ["temperature"]),
    (dict(temperature=-0.5), ["temperature", ">= 0"]),
    (dict(temperature="1"), ["temperature"]),
    (dict(top_k=0), ["top_k must be an integer >= 1", "None"]),
    (dict(top_k=2.0), ["top_k"]),
    (dict(seed=-1), ["seed"]),
    (dict(prompt=""), ["prompt is empty"]),
]


@pytest.mark.parametrize("kwargs,needles", API_GENERATE)
def test_generate_api_refuses(kwargs: dict, needles: list[str], char_model) -> None:
    args = {"prompt": "ROMEO:", "n": 3, **kwargs}
    message = api_fails(lambda: generate(char_model, **args), *needles)
    assert "--" not in message  # the API's words


def test_generate_edge_values_that_are_fine(char_model) -> None:
    assert generate(char_model, "ROMEO:", 0) == "ROMEO:"
    # top_k=1 and a tiny temperature both mean greedy (no overflow at small temperature)
    greedy = generate(char_model, "ROMEO:", 8, temperature=0)
    assert generate(char_model, "ROMEO:", 8, top_k=1, seed=5) == greedy
    assert generate(char_model, "ROMEO:", 8, temperature=1e-30, seed=5) == greedy
    # a prompt longer than the context is kept whole (its last window is read)
    long = "KING HENRY:\n" * 30
    text = generate(char_model, long, 3, temperature=0)
    assert text.startswith(long) and len(text) == len(long) + 3


def test_generate_refuses_an_encoder() -> None:
    from conftest import tiny

    api_fails(lambda: generate(tiny("bert"), "hello", 2), "not a causal language model")


API_TRAIN = [
    (dict(steps=0), ["steps must be an integer from 1"]),
    (dict(steps=3.0), ["steps"]),
    (dict(steps=True), ["steps"]),
    (dict(seed=-4), ["seed must be"]),
    (dict(preset="big"), ["Unknown preset 'big'", "seed, small, tiny"]),
    (dict(device="npu"), ["Unknown device 'npu'"]),
    (dict(n_layers=3), ["Unknown training setting", "n_layers", "n_layer"]),
    (dict(corpus="x" * 300), ["too short", "at least 340 characters\\.$"]),
    (dict(corpus=""), ["too short"]),
]


@pytest.mark.parametrize("kwargs,needles", API_TRAIN)
def test_train_api_refuses(kwargs: dict, needles: list[str], tmp_path: Path) -> None:
    args = {"corpus": TEXT, "out": tmp_path / "m", "preset": "tiny", "progress": False,
            **kwargs}
    message = api_fails(lambda: train_char_lm(**args), *needles)
    assert "--" not in message
    assert not (tmp_path / "m").exists()


def test_train_api_refuses_outputs_and_files(paths: dict, tmp_path: Path) -> None:
    api_fails(lambda: train_char_lm(TEXT, paths["file"], preset="tiny"), "is a file", "out=")
    api_fails(lambda: train_char_lm(TEXT, paths["foreign"], preset="tiny"),
              "non-empty directory", "checkpoint or MODEL_CARD.md")
    api_fails(lambda: train_char_lm(Path(paths["latin"]), tmp_path / "m", preset="tiny"),
              "not UTF-8")
    assert (Path(paths["foreign"]) / "notes.txt").read_text() == "someone's files\n"


def test_resume_refuses_another_run(tmp_path: Path) -> None:
    out = tmp_path / "m"
    train_char_lm(TEXT, out, preset="tiny", steps=6, progress=False)
    other = TEXT[::-1]  # same characters, another text
    api_fails(lambda: train_char_lm(other, out, preset="tiny", steps=8, progress=False),
              "another text", "delete it")
    api_fails(lambda: train_char_lm(TEXT, out, preset="tiny", steps=4, progress=False),
              "already at step 6", "at least 6")
    api_fails(lambda: train_char_lm(TEXT, out, preset="tiny", steps=8, lr=1e-2,
                                    progress=False), "other settings")
    (out / "checkpoint" / "state.json").write_text("{not json")
    api_fails(lambda: train_char_lm(TEXT, out, preset="tiny", steps=8, progress=False),
              "checkpoint", "damaged")
    (out / "checkpoint" / "state.json").write_text(json.dumps({"step": 6, "log": [{}]}))
    (out / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    api_fails(lambda: train_char_lm(TEXT, out, preset="tiny", steps=8, progress=False),
              "checkpoint", "damaged")


def test_corpus_helpers_name_the_option(paths: dict) -> None:
    api_fails(lambda: read_text_file(paths["latin"], option="--words"), "not UTF-8",
              "offset 7", "--words")
    api_fails(lambda: read_lines(paths["empty"], option="texts"), "no non-empty lines")
    api_fails(lambda: text_of(123), "str", "pathlib.Path")
    assert text_of(paths["text"]) == paths["text"]  # a string is text, never a path
    assert text_of(Path(paths["text"])) == TEXT


def test_output_checks_create_nothing(paths: dict, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert outputs.check_output_dir(target) == target and not (tmp_path / "a").exists()
    with pytest.raises(OutputError, match="is a directory"):
        outputs.check_output_file(paths["dir"], option="--out")
    with pytest.raises(LaminaError, match="--out"):
        outputs.check_output_dir(paths["file"], option="--out")
