"""`wina-onnx package --genai`: onnxruntime-genai loads the folder, with the op library, and decodes like wina-onnx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'wina-onnx[genai]')")

from helpers.pipeline_helpers import optimized_copy  # noqa: E402

from wina_onnx import cli  # noqa: E402
from wina_onnx.runtime.generate import generate  # noqa: E402
from wina_onnx.library import LIBRARY_NAME  # noqa: E402
from wina_onnx.runtime.session import CausalLM, uses_wina_domain  # noqa: E402

MAX_NEW = 8
PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def wina_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wina-genai")
    assert uses_wina_domain(optimized_copy(tiny_llama_dir, out, sparsity=0.5))
    return out


def _genai_tokens(folder: Path, prompt: list[int]) -> list[int]:
    """Greedy decoding of MAX_NEW tokens by onnxruntime-genai after the prompt ids."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + MAX_NEW, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt):]


def _package(model: Path, out: Path, *extra: str) -> int:
    return cli.main(["package", str(model / "model.onnx"), "--genai", str(out), *extra])


def test_genai_generates_like_wina_onnx(wina_dir: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "genai"
    assert _package(wina_dir, out) == 0
    config = json.loads((out / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert decoder["session_options"]["custom_ops_library"] == LIBRARY_NAME
    assert (out / LIBRARY_NAME).is_file() and (out / "tokenizer.json").is_file()
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    for layer in range(decoder["num_hidden_layers"]):
        for pattern in (*(decoder["inputs"][k] for k in ("past_key_names", "past_value_names")),
                        *(decoder["outputs"][k] for k in ("present_key_names", "present_value_names"))):
            assert pattern % layer in names
    assert {decoder["inputs"][k] for k in ("input_ids", "attention_mask", "position_ids")} <= names

    lm = CausalLM.from_path(wina_dir)
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    want = generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids)
    monkeypatch.chdir(tmp_path)  # the library path resolves against the model folder, not the working directory
    assert _genai_tokens(out, prompt) == want

    # Without custom_ops_library GenAI cannot load the model: the library really is what it uses.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    del config["model"]["decoder"]["session_options"]["custom_ops_library"]
    (bare / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="WinaSparseMatMul|ai.wina"):
        og.Model(str(bare))


def test_dense_model_needs_no_library(tiny_llama_dir: Path, tmp_path: Path):
    out = tmp_path / "dense"
    assert _package(tiny_llama_dir, out) == 0
    assert "custom_ops_library" not in json.loads((out / "genai_config.json").read_text())["model"]["decoder"][
        "session_options"]
    assert not (out / LIBRARY_NAME).exists()
    lm = CausalLM.from_path(tiny_llama_dir)
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert _genai_tokens(out, prompt) == generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids)


def test_package_genai_errors(wina_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "genai"
    out.mkdir()
    assert _package(wina_dir, out) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert _package(wina_dir, out, "--force") == 0 and (out / "genai_config.json").is_file()
    assert _package(wina_dir, tmp_path / "x", "--name", "n") == 2
    assert "--triton only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert _package(wina_dir, wina_dir) == 2  # never into the model's own folder


def test_genai_runs_the_default_grouped_model(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    """What `optimize` writes by default (threshold gates, q/k/v and gate/up as
    WinaSparseMatMulGroup nodes with variadic inputs and outputs) decodes in GenAI as in wina-onnx."""
    from wina_onnx.calibrate.calibration import calibrate_model
    from wina_onnx.data import default_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.runtime.session import load_tokenizer

    ids = tokenize_text(load_tokenizer(tiny_llama_dir), default_text())[:512]
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", token_ids=ids, windows=4, window=128, progress=False)
    wina = tmp_path / "wina"
    model = optimized_copy(tiny_llama_dir, wina, gating="threshold", calibration=calibration, group=True)
    assert any(n.op_type == "WinaSparseMatMulGroup" for n in onnx.load(model, load_external_data=False).graph.node)
    out = tmp_path / "genai"
    assert _package(wina, out) == 0
    lm = CausalLM.from_path(wina)
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    want = generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids)
    monkeypatch.chdir(tmp_path)
    assert _genai_tokens(out, prompt) == want
