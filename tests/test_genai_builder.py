"""Folders made by ONNX Runtime GenAI's model builder, in and out of wina-onnx.

The fixtures are the builder's own output (conftest.genai_builder_dirs): genai_config.json
and no config.json, the KV cache's head size left symbolic in the graph. Every command
reads the model's facts from genai_config.json; `optimize` with its defaults writes a
folder that `onnxruntime_genai.Model` loads as it is and that decodes as `wina-onnx
generate` does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'wina-onnx[genai]')")

from wina_onnx import cli  # noqa: E402
from wina_onnx.runtime.generate import generate  # noqa: E402
from wina_onnx.library import LIBRARY_NAME  # noqa: E402
from wina_onnx.runtime.model_facts import kv_dims_from_graph  # noqa: E402
from wina_onnx.runtime.session import CausalLM, load_tokenizer, uses_wina_domain  # noqa: E402

PROMPT = "The quick brown fox jumps over"
MAX_NEW = 12
# The builder's folders the round trip runs on.
ROUND_TRIP = ["fp32-cpu", "fp16-cuda", "int4-cpu"]


def _og_model(folder: Path):
    """og.Model for `folder`; a folder built for CUDA runs on the CPU here (its provider
    list cleared through og.Config, as GenAI documents; no file changes)."""
    config = og.Config(str(folder))
    if "CUDAExecutionProvider" not in _available_providers():
        config.clear_providers()
    return og.Model(config)


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _og_tokens(folder: Path, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
    """Greedy decoding by onnxruntime-genai after the prompt ids (new ids only)."""
    model = _og_model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + max_new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt):]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _genai_config(folder: Path) -> dict:
    return json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["fp32-cpu", "fp16-cuda", "int4-cpu"])
def test_facts_come_from_genai_config(genai_builder_dirs: dict[str, Path], name: str):
    folder = genai_builder_dirs[name]
    assert not (folder / "config.json").exists()  # the builder writes none
    key = next(i for i in onnx.load(folder / "model.onnx", load_external_data=False).graph.input
               if i.name == "past_key_values.0.key")
    assert key.type.tensor_type.shape.dim[3].dim_param  # the head size is symbolic in the graph
    decoder = _genai_config(folder)["model"]["decoder"]
    lm = CausalLM.from_path(folder)
    assert (lm.head_dim, lm.num_kv_heads, lm.num_layers) == (
        decoder["head_size"], decoder["num_key_value_heads"], decoder["num_hidden_layers"])
    assert lm.vocab_size == _genai_config(folder)["model"]["vocab_size"]
    assert lm.eos_token_ids == _genai_config(folder)["model"]["eos_token_id"] == [1, 2]
    assert lm.facts.share_buffer == _genai_config(folder)["search"]["past_present_share_buffer"]
    # The dense builder model decodes in wina-onnx as in GenAI.
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids) == _og_tokens(folder, prompt)


@pytest.mark.parametrize("name", ["fp32-cpu", "fp16-cuda"])
def test_head_size_from_the_graph_alone(genai_builder_dirs: dict[str, Path], tmp_path: Path, name: str):
    """Without any config file the attention node still gives the KV cache's sizes."""
    folder = genai_builder_dirs[name]
    for item in ("model.onnx", "model.onnx.data", "tokenizer.json"):
        shutil.copy2(folder / item, tmp_path / item)
    decoder = _genai_config(folder)["model"]["decoder"]
    model = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    assert kv_dims_from_graph(model, "past_key_values.0.key") == (decoder["num_key_value_heads"],
                                                                  decoder["head_size"])
    lm = CausalLM.from_path(tmp_path)
    assert (lm.head_dim, lm.num_kv_heads) == (decoder["head_size"], decoder["num_key_value_heads"])


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_optimize_defaults_round_trip(genai_builder_dirs: dict[str, Path], tmp_path: Path, monkeypatch, capsys,
                                      name: str):
    """`wina-onnx optimize FOLDER/model.onnx -o OUT/model.onnx` with the defaults (calibrated
    here, greedy allocation, refined thresholds); og.Model(OUT) decodes as `wina-onnx generate`."""
    folder = genai_builder_dirs[name]
    before = _digest(folder)
    out = tmp_path / "wina"
    assert cli.main(["optimize", str(folder / "model.onnx"), "-o", str(out / "model.onnx"), "-q"]) == 0
    assert _digest(folder) == before  # the builder's folder is only read
    model = out / "model.onnx"
    assert uses_wina_domain(model)
    settings = json.loads(next(p.value for p in onnx.load(model, load_external_data=False).metadata_props
                               if p.key == "wina_onnx.config"))
    assert settings["gating"] == "threshold" and settings["thresholds_refined"]["rounds"] == 1
    assert settings["sparsity"].startswith("greedy 0.5")
    ops = [n.op_type for n in onnx.load(model, load_external_data=False).graph.node]
    if name.startswith("int4"):  # every 4-bit projection gated by the 4-bit op; the LM head stays dense
        layers = _genai_config(folder)["model"]["decoder"]["num_hidden_layers"]
        assert ops.count("MatMulNBits") == 1 and ops.count("WinaSparseMatMulNBits") == 5 * layers  # qkv o gate up down

    # genai_config.json: the builder's, plus the op library; the library is in the folder.
    written = _genai_config(out)
    assert written["model"]["decoder"]["session_options"].pop("custom_ops_library") == LIBRARY_NAME
    assert written == _genai_config(folder)
    assert (out / LIBRARY_NAME).is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "config.json").exists()

    capsys.readouterr()
    assert cli.main(["generate", str(model), "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW)]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    tokenizer = load_tokenizer(out)
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    monkeypatch.chdir(tmp_path)  # the library path resolves against the model folder
    tokens = _og_tokens(out, prompt)
    assert tokenizer.decode(tokens, skip_special_tokens=True) == text
    lm = CausalLM.from_path(out)
    assert generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids) == tokens
    # The gates change what the model says: this is not the dense model's decoding.
    assert tokens != _og_tokens(folder, prompt)


@pytest.mark.parametrize("name", ["fp32-cpu"])
def test_package_genai_keeps_builder_settings(genai_builder_dirs: dict[str, Path], tmp_path: Path, monkeypatch,
                                              name: str):
    folder = genai_builder_dirs[name]
    dense = tmp_path / "dense"
    assert cli.main(["package", str(folder / "model.onnx"), "--genai", str(dense)]) == 0
    assert _genai_config(dense) == _genai_config(folder)  # past_present_share_buffer, eos list, ... as they were
    assert not (dense / LIBRARY_NAME).exists()

    wina = tmp_path / "wina"
    assert cli.main(["optimize", str(folder / "model.onnx"), "-o", str(wina / "model.onnx"), "-q",
                     "--gating", "topk", "--allocate", "uniform"]) == 0
    packaged = tmp_path / "packaged"
    assert cli.main(["package", str(wina / "model.onnx"), "--genai", str(packaged)]) == 0
    config = _genai_config(packaged)
    assert config["model"]["decoder"]["session_options"]["custom_ops_library"] == LIBRARY_NAME
    assert config == _genai_config(wina)
    assert (packaged / LIBRARY_NAME).is_file()
    lm = CausalLM.from_path(wina)
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    monkeypatch.chdir(tmp_path)
    assert _og_tokens(packaged, prompt) == generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids)
