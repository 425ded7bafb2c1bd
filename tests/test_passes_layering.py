"""wina_onnx/passes is a layer of its own: what its modules import, and the one result type."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import wina_onnx
from wina_onnx.passes import GateConfig, PassResult, Sequential, Skipped, apply_wina_gates, group_shared_inputs

PASSES = Path(wina_onnx.__file__).parent / "passes"
# What a pass may use of the package besides passes/ itself: the ops' schema, the gate reader,
# their oracle, errors.
ALLOWED = {"wina_onnx.schema", "wina_onnx.gates", "wina_onnx.reference", "wina_onnx.errors"}


def _imports(path: Path) -> set[str]:
    """The wina_onnx modules a passes/ module imports, as absolute names (at any depth of the file)."""
    package = ["wina_onnx", "passes"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[:len(package) - node.level + 1])
            if node.module:
                found.add(f"{base}.{node.module}")
            else:  # `from .. import schema`: the names are modules
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return {name for name in found if name == "wina_onnx" or name.startswith("wina_onnx.")}


@pytest.mark.parametrize("path", sorted(PASSES.glob("*.py")), ids=lambda p: p.name)
def test_passes_import_nothing_above_them(path: Path) -> None:
    outside = {name for name in _imports(path) if not name.startswith("wina_onnx.passes")}
    assert outside <= ALLOWED, f"{path.name} imports {sorted(outside - ALLOWED)}"


def test_the_import_parser_sees_relative_imports() -> None:
    gate = _imports(PASSES / "wina_gate.py")
    assert {"wina_onnx.schema", "wina_onnx.errors", "wina_onnx.passes.allocation"} <= gate


def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), f"model.layers.0.mlp.{n}.weight")
             for n in ("up_proj", "gate_proj")]
    nodes = [helper.make_node("MatMul", ["x", init.name], [f"y{i}"], name=f"/model/layers.0/mlp/{n}/MatMul")
             for i, (init, n) in enumerate(zip(inits, ("up_proj", "gate_proj")))]
    nodes.append(helper.make_node("MatMul", ["x", "x_t"], ["z"], name="/activations"))  # no constant weight
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8]),
                     helper.make_tensor_value_info("x_t", onnx.TensorProto.FLOAT, [8, 1])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("y0", "y1", "z")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_pass_returns_one_result_type_and_runs_in_a_sequence() -> None:
    model = _two_matmuls()
    sequence = Sequential([lambda m: apply_wina_gates(m, GateConfig()), group_shared_inputs])
    outcome = sequence(model)
    gate, group = sequence.results
    assert all(isinstance(r, PassResult) for r in (outcome, gate, group))
    assert gate.name == "wina_gate" and len(gate.records) == 2 and gate.changed
    assert gate.skipped == [Skipped("/activations", gate.skipped[0].reason)]
    assert "skipped 1 MatMul(s)" in gate.summary()
    assert not group.changed and "nothing grouped" in group.summary()  # top-k gates are never grouped
    assert sequence.result_of("group_gates") is group and outcome.records == [gate, group]
    assert gate.to_json()["records"][0]["node"] == "/model/layers.0/mlp/up_proj/MatMul"


def test_gate_config_defaults_are_the_recipe_s() -> None:
    from wina_onnx.recipe import Recipe

    config, recipe = GateConfig(), Recipe()
    assert (config.mode, config.norm_on, config.backend, config.allocation.default) == \
        (recipe.mode, recipe.norm_on, recipe.backend, recipe.sparsity)
    assert config.gating == "topk" and config.group is False  # without thresholds: the recipe's fallback

    class Thresholds:
        source, transformed = "text", False

        def threshold(self, node_name: str, mode: str, sparsity: float) -> float:
            return 0.5

        def check_covers(self, node_names) -> None:
            pass

    calibrated = GateConfig(calibration=Thresholds())
    assert calibrated.gating == "threshold" and calibrated.group is True
    assert GateConfig(calibration=Thresholds(), backend="onnx").group is False
