"""Export: the tiny fixture and the default SmolLM2 give valid ONNX models with tokenizers."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from wina_onnx.export.optimum_export import DEFAULT_GGUF_FILE, ExportError, default_gguf_path, export_model


def _check_export(folder: Path, layers: int) -> None:
    assert (folder / "tokenizer.json").is_file()
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    assert {"input_ids", "attention_mask"} <= inputs
    assert {f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")} <= inputs
    assert "logits" in outputs and f"present.{layers - 1}.value" in outputs
    names = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"/model/layers.0/self_attn/{proj}/MatMul" in names
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert f"/model/layers.{layers - 1}/mlp/{proj}/MatMul" in names


def test_tiny_export_is_valid(tiny_llama_dir: Path) -> None:
    _check_export(tiny_llama_dir, layers=2)
    onnx.checker.check_model(str(tiny_llama_dir / "model.onnx"))


def test_default_gguf_is_found() -> None:
    path = default_gguf_path()
    assert path.name == DEFAULT_GGUF_FILE and path.stat().st_size > 10_000_000


def test_hub_id_offline_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="not available offline"):
        export_model("wina-onnx-tests/no-such-model", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_missing_local_paths_raise(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_model(str(tmp_path / "missing.gguf"), tmp_path / "out", progress=False)
    with pytest.raises(ExportError, match="no config.json"):
        export_model(str(tmp_path), tmp_path / "out", progress=False)


def test_half_precision_needs_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: half-precision export is allowed")
    with pytest.raises(ExportError, match="CUDA"):
        export_model(None, tmp_path / "out", dtype="float16", progress=False)
    with pytest.raises(ExportError, match="unknown dtype"):
        export_model(None, tmp_path / "out", dtype="int3", progress=False)


def test_local_folder_export(tiny_llama_hf_dir: Path, tmp_path: Path) -> None:
    out = export_model(str(tiny_llama_hf_dir), tmp_path / "onnx", progress=False, validate=False)
    assert out == tmp_path / "onnx" / "model.onnx"
    _check_export(out.parent, layers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


@pytest.mark.slow
def test_smollm2_export(smollm2_dir: Path) -> None:
    _check_export(smollm2_dir, layers=30)


def test_failed_export_leaves_no_folder_it_made(tmp_path: Path) -> None:
    source = tmp_path / "broken"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "no-such-architecture"}')
    out = tmp_path / "made" / "for" / "it"
    with pytest.raises(ExportError, match="Optimum could not export"):
        export_model(str(source), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # neither made/ nor made/for/
