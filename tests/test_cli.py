"""The CLI: bad input gets one clear line and a non-zero exit, never a traceback or a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from helpers.graphs import mixed_model, projection_model
from onnx import TensorProto, helper


def wina(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wina_onnx.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, phrase: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Progress lines start with "[stage]"; the error itself must be a single line.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and phrase in lines[0], result.stderr


@pytest.fixture
def projection_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(projection_model(16, 8), path)
    return path


def test_optimize_then_inspect(projection_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.onnx"
    result = wina("optimize", str(projection_file), "-o", str(out), "--sparsity", "0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gated 1 MatMul(s)" in result.stdout
    onnx.checker.check_model(onnx.load(out))
    listing = wina("inspect", str(out), "--json", cwd=tmp_path)
    meta = json.loads(listing.stdout)
    assert meta["version"] and meta["config"]["mode"] == "wina" and meta["gated"][0]["k"] == 12
    assert meta["config"]["sparsity"] == "uniform 0.25"


def test_not_onnx_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model\n" * 10)
    result = wina("optimize", str(bogus), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "is not an ONNX model")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert_one_line_error(wina("optimize", str(tmp_path / "nope.onnx"), "-o", "o.onnx", cwd=tmp_path), "no such file")


def test_model_without_eligible_matmul_says_why(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    model = mixed_model()
    model.graph.node.remove(model.graph.node[0])  # drop the only gateable projection
    model.graph.node[0].input[0] = "x"
    onnx.save(model, path)
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "no eligible MatMul")
    assert "LM head" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_model_without_any_matmul(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    assert_one_line_error(wina("optimize", str(path), "-o", "o.onnx", cwd=tmp_path), "no MatMul")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5", "abc"])
def test_sparsity_outside_unit_interval_is_refused(projection_file: Path, tmp_path: Path, value: str) -> None:
    result = wina("optimize", str(projection_file), "-o", str(tmp_path / "o.onnx"), f"--sparsity={value}", cwd=tmp_path)
    if value == "abc":  # argparse's own one-line usage error
        assert result.returncode == 2 and "Traceback" not in result.stderr
    else:
        assert_one_line_error(result, "[0, 1)")
    assert not (tmp_path / "o.onnx").exists()


def test_output_equal_to_input_is_refused(projection_file: Path, tmp_path: Path) -> None:
    before = projection_file.read_bytes()
    result = wina("optimize", str(projection_file), "-o", str(projection_file), cwd=tmp_path)
    assert_one_line_error(result, "output path is the input path")
    assert projection_file.read_bytes() == before


def test_threshold_without_calibration_is_refused(projection_file: Path, tmp_path: Path) -> None:
    result = wina("optimize", str(projection_file), "-o", "o.onnx", "--gating", "threshold", cwd=tmp_path)
    assert_one_line_error(result, "needs a calibration file")


def test_already_optimized_is_refused_and_never_stacked(projection_file: Path, tmp_path: Path) -> None:
    once = tmp_path / "once.onnx"
    assert wina("optimize", str(projection_file), "-o", str(once), cwd=tmp_path).returncode == 0
    assert_one_line_error(wina("optimize", str(once), "-o", "twice.onnx", cwd=tmp_path), "already optimized")
    forced = wina("optimize", str(once), "-o", "twice.onnx", "--force", cwd=tmp_path)
    assert_one_line_error(forced, "no eligible MatMul")  # the gated op is not a MatMul: no second gate


def test_bad_allocation_file_is_refused(projection_file: Path, tmp_path: Path) -> None:
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"format": "wina-onnx-allocation", "version": 1, "default": 0.5,
                                 "sparsity": {"*down_proj*": 1.2}}))
    result = wina("optimize", str(projection_file), "-o", "o.onnx", "--allocation", str(alloc), cwd=tmp_path)
    assert_one_line_error(result, "[0, 1)")
