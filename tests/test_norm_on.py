"""--norm-on reference: weight norms only on the gates whose input feeds several weights.

WINA's reference code scales the score by the weight's row norm only for k_proj (its
input also feeds q/v) and gate_proj (also feeds up), and for the fused qkv/gate_up
projections; every other gate scores by |x| alone (a vector of ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.graphs import IR_VERSION
from onnx import TensorProto, helper, numpy_helper

from wina_onnx import schema
from wina_onnx.passes import GateConfig, apply_wina_gates

K, N = 16, 8
ROLES = {
    "self_attn/q_proj": False,
    "self_attn/k_proj": True,
    "self_attn/v_proj": False,
    "self_attn/o_proj": False,
    "self_attn/qkv_proj": True,
    "mlp/gate_proj": True,
    "mlp/up_proj": False,
    "mlp/down_proj": False,
    "mlp/gate_up_proj": True,
}


def _all_roles_model() -> onnx.ModelProto:
    """x [batch, seq, K] -> one MatMul per projection role, each with its own weight."""
    rng = np.random.default_rng(7)
    nodes, inits, outputs = [], [], []
    for i, role in enumerate(ROLES):
        weight = rng.standard_normal((K, N)).astype(np.float32) * rng.uniform(0.1, 3.0, (K, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"], name=f"/model/layers.0/{role}/MatMul"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", "seq", N]))
    graph = helper.make_graph(nodes, "roles", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def _scales(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Gate node name -> (score scale, weight) for every WinaSparseMatMul."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: (inits[n.input[2]], inits[n.input[1]]) for n in model.graph.node if n.op_type == schema.OP_TYPE}


@pytest.mark.parametrize("norm_on", ["reference", "all"])
def test_norm_on_selects_which_gates_carry_weight_norms(norm_on: str) -> None:
    model = _all_roles_model()
    report = apply_wina_gates(model, GateConfig(mode="wina", norm_on=norm_on))
    scales = _scales(model)
    assert len(report.records) == len(scales) == len(ROLES)
    for role, uses_norm in ROLES.items():
        scale, weight = scales[f"/model/layers.0/{role}/MatMul"]
        if uses_norm or norm_on == "all":
            np.testing.assert_allclose(scale, np.linalg.norm(weight, axis=1), rtol=1e-6, err_msg=role)
        else:
            np.testing.assert_array_equal(scale, np.ones(K, dtype=np.float32), err_msg=role)
    onnx.checker.check_model(model)


def test_teal_ignores_norm_on() -> None:
    model = _all_roles_model()
    apply_wina_gates(model, GateConfig(mode="teal", norm_on="reference"))
    assert all(np.array_equal(s, np.ones(K, dtype=np.float32)) for s, _ in _scales(model).values())


def test_reference_norms_on_the_exported_tiny_llama(tiny_llama_dir: Path) -> None:
    model = onnx.load(tiny_llama_dir / "model.onnx")
    apply_wina_gates(model, GateConfig(mode="wina", norm_on="reference"))
    scales = _scales(model)
    assert len(scales) == 14  # 2 layers x q/k/v/o/gate/up/down
    for name, (scale, weight) in scales.items():
        if "/k_proj/" in name or "/gate_proj/" in name:
            np.testing.assert_allclose(scale, np.linalg.norm(weight, axis=1), rtol=1e-5, err_msg=name)
            assert not np.allclose(scale, 1.0)
        else:
            np.testing.assert_array_equal(scale, np.ones_like(scale), err_msg=name)
