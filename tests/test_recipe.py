"""optimize's recipe: the demo, the CLI and the Python API write the same model; its fallbacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from wina_onnx import Recipe
from wina_onnx.cli import main as cli_main
from wina_onnx.demo import VARIANTS, make_models
from wina_onnx.optimize import read_metadata
from wina_onnx.recipe import read_token_ids


def _nodes_and_initializers(path: Path) -> tuple[list[bytes], dict[str, np.ndarray]]:
    model = onnx.load(str(path))
    nodes = [node.SerializeToString(deterministic=True) for node in model.graph.node]
    return nodes, {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _assert_same_graph(a: Path, b: Path) -> None:
    nodes_a, inits_a = _nodes_and_initializers(a)
    nodes_b, inits_b = _nodes_and_initializers(b)
    assert len(nodes_a) == len(nodes_b) and nodes_a == nodes_b
    assert inits_a.keys() == inits_b.keys()
    for name in inits_a:
        np.testing.assert_array_equal(inits_a[name], inits_b[name], err_msg=name)


def test_the_demo_s_wina_model_is_what_optimize_writes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Same model, text and sparsity: the demo's step and `wina-onnx optimize` agree node for
    node and initializer for initializer (calibrated, greedy, refined, grouped)."""
    dense = tiny_llama_dir / "model.onnx"
    ids = read_token_ids(dense, None)  # the default text, as optimize reads it without --data
    demo = make_models(dense, tmp_path / "demo", ids, sparsity=0.4, variants=(VARIANTS[0],), progress=False)["wina"]
    cli_out = tmp_path / "cli" / "model.onnx"
    assert cli_main(["optimize", str(dense), "-o", str(cli_out), "--sparsity", "0.4", "-q"]) == 0
    _assert_same_graph(demo, cli_out)
    config = read_metadata(onnx.load(str(cli_out), load_external_data=False))["config"]
    assert config["gating"] == "threshold" and config["group"] is True and config["norm_on"] == "reference"
    assert config["thresholds_refined"]["rounds"] == 1 and config["sparsity"].startswith("greedy 0.4")
    assert any(n.op_type == "WinaSparseMatMulGroup" for n in onnx.load(str(demo)).graph.node)
    assert (demo.parent / "tokenizer.json").is_file()  # optimize_model copied the sidecar files

    api_out = tmp_path / "api" / "model.onnx"
    Recipe(sparsity=0.4).optimize(dense, api_out, progress=False)
    _assert_same_graph(api_out, cli_out)


def test_without_a_tokenizer_the_recipe_falls_back_to_uniform_topk(tiny_llama_dir: Path, tmp_path: Path,
                                                                   capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(tiny_llama_dir / "model.onnx", bare / "model.onnx")
    notices: list[str] = []
    result = Recipe().optimize(bare / "model.onnx", tmp_path / "out" / "model.onnx", progress=False,
                               notice=notices.append)
    assert {r.keep_count is not None for r in result.records} == {True}  # top-k gates
    assert len(notices) == 1 and "no tokenizer.json" in notices[0] and "uniform allocation" in notices[0]


def test_backend_onnx_with_the_default_gating_is_not_refined(tiny_llama_dir: Path, tmp_path: Path,
                                                             capsys) -> None:
    out = tmp_path / "onnx" / "model.onnx"
    code = cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--backend", "onnx",
                     "--windows", "2", "--window", "64", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "thresholds not refined" in err and "--backend onnx" in err
    config = read_metadata(onnx.load(str(out), load_external_data=False))["config"]
    assert config["gating"] == "threshold" and config["thresholds_refined"] is None and config["group"] is False
    assert not any(n.domain == "ai.wina" for n in onnx.load(str(out)).graph.node)

    code = cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(tmp_path / "again.onnx"),
                     "--backend", "onnx", "--refine-rounds", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--refine-rounds reads the op library's gates" in err


def test_genai_folder_needs_the_op_library_before_any_work(tiny_llama_dir: Path, tmp_path: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "genai"
    folder.mkdir()
    for file in tiny_llama_dir.iterdir():
        if file.is_file():
            shutil.copy2(file, folder / file.name)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx",
                                                                                "session_options": {}}}}))
    monkeypatch.setenv("WINA_ONNX_LIBRARY", str(tmp_path / "missing.so"))
    out = tmp_path / "out" / "model.onnx"
    code = cli_main(["optimize", str(folder), "-o", str(out), "--refine-rounds", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"wina-onnx optimize: error: the output's GenAI folder gets a copy of the op library, but "
                   f"WINA_ONNX_LIBRARY={tmp_path / 'missing.so'} is not a file"]
    assert not out.parent.exists()  # nothing calibrated, nothing written


def test_optimize_checks_the_paths_and_reads_the_header_once(tiny_llama_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import wina_onnx.optimize as optimize

    calls: list[str] = []
    real_check, real_load = optimize.check_paths, optimize.load_model

    def check_paths(*args, **kwargs):
        calls.append("check_paths")
        return real_check(*args, **kwargs)

    def load_model(path, *args, **kwargs):
        calls.append("header" if kwargs.get("load_weights") is False else "weights")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(optimize, "check_paths", check_paths)
    monkeypatch.setattr(optimize, "load_model", load_model)
    out = tmp_path / "out" / "model.onnx"
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--gating", "topk",
                     "--allocate", "uniform", "-q"]) == 0
    assert calls == ["check_paths", "header", "weights"]
