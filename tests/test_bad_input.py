"""Bad input to the CLI: one line of error, exit status 2, never a traceback.

Complements tests/test_cli.py (not ONNX, missing file, no MatMul, sparsity outside
[0, 1), allocation, already optimized) with: a truncated file, a missing external data
file, an IR version or opset newer than the installed ONNX Runtime, MatMuls skipped for
a weight that is not constant, not 2-D or of an unsupported type (reported, not fatal),
and an optimized model loaded where the op library cannot be found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import mixed_model, projection_model
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_one_line_error, wina


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(projection_model(64, 32), str(path), save_as_external_data=True, location="model.onnx.data")
    return path


def test_truncated_model_is_refused(tmp_path: Path) -> None:
    full = projection_model(64, 32).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "cut.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_external_data_file_is_refused(external_model: Path, tmp_path: Path) -> None:
    (external_model.parent / "model.onnx.data").unlink()
    result = wina("optimize", str(external_model), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "external data")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("layout, files", [("auto", {"o.onnx", "o.onnx.data"}), ("inline", {"o.onnx"})])
def test_external_data_is_kept_or_inlined_as_asked(external_model: Path, tmp_path: Path, layout: str,
                                                   files: set[str]) -> None:
    out = tmp_path / "out" / "o.onnx"
    result = wina("optimize", str(external_model), "-o", str(out), "--external-data", layout, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.parent.iterdir()} == files
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.parametrize("field", ["ir_version", "opset"])
def test_model_newer_than_the_runtime_is_refused(tmp_path: Path, field: str) -> None:
    model = projection_model(16, 8)
    if field == "ir_version":
        model.ir_version = 99
    else:
        model.opset_import[0].version = 99
    path = tmp_path / "new.onnx"
    path.write_bytes(model.SerializeToString())
    result = wina("eval", str(path), cwd=tmp_path)
    assert_one_line_error(result, "cannot load")


def test_ineligible_matmuls_are_skipped_and_reported(tmp_path: Path) -> None:
    """Dynamic weight, 3-D weight and integer / float64 weights: skipped, each with its reason."""
    model = mixed_model()
    w64 = numpy_helper.from_array(np.ones((8, 8)), "w_f64")
    model.graph.initializer.append(w64)
    model.graph.node.append(helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE))
    model.graph.node.append(helper.make_node("MatMul", ["x64", "w_f64"], ["d64"],
                                             name="/model/layers.0/mlp/down_proj/MatMul"))
    shapes = {"logits": [1, 8], "scores": [1, 1], "dyn": [1, 8], "batched": [2, 1, 8], "ints": [1, 8]}
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, shapes[o.name])
               for o in model.graph.output]
    del model.graph.output[:]
    model.graph.output.extend(outputs + [helper.make_tensor_value_info("d64", TensorProto.DOUBLE, [1, 8])])
    path = tmp_path / "mixed.onnx"
    onnx.save(model, path)
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for reason in ("weight is not a constant initializer", "weight has rank 3, not 2",
                   "weight type INT32 is not float32", "weight type DOUBLE is not float32"):
        assert reason in result.stdout, result.stdout


def test_optimized_model_without_the_op_library_says_how_to_register(tmp_path: Path) -> None:
    optimized = tmp_path / "opt.onnx"
    onnx.save(projection_model(16, 8), tmp_path / "m.onnx")
    assert wina("optimize", str(tmp_path / "m.onnx"), "-o", str(optimized), cwd=tmp_path).returncode == 0
    import os
    import subprocess
    import sys

    env = {**os.environ, "WINA_ONNX_LIBRARY": str(tmp_path / "missing" / "libwina_onnx_ops.so")}
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", "eval", str(optimized)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(result, "register_custom_ops_library(wina_onnx.get_library_path())")


def test_model_failing_the_checker_is_one_line(tmp_path: Path) -> None:
    """Graph outputs without a shape fail onnx.checker: said in one line, no output written."""
    path = tmp_path / "noshape.onnx"
    model = projection_model(16, 8)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(model, path)
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "fails onnx.checker")
    assert not (tmp_path / "o.onnx").exists()
