"""The WINA pass on hand-built graphs: what it gates, what it refuses, and that the
standard-ops lowering and the op library both compute the oracle's numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.graphs import mixed_model, projection_model
from helpers.op_models import from_ort_value, to_ort_value
from helpers.op_models import session as op_session
from onnx import TensorProto, numpy_helper

from wina_onnx import get_library_path, reference, schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.calibration import Calibration
from wina_onnx.passes import GateConfig, apply_wina_gates, find_candidates
from wina_onnx.passes.roles import classify

NAME = "/model/layers.0/mlp/down_proj/MatMul"


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if any(o.domain == schema.DOMAIN for o in model.opset_import):
        options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _weight(model: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))


@pytest.mark.parametrize(
    "name, kind, layer",
    [
        ("/model/layers.3/self_attn/q_proj/MatMul", "q_proj", 3),
        ("/model/layers.12/mlp/down_proj/MatMul", "down_proj", 12),
        ("/model/layers.0/self_attn/qkv_proj/MatMul", "qkv_proj", 0),
        ("/model/layers.1/mlp/gate_up_proj/MatMul", "gate_up_proj", 1),
        ("/transformer/h.2/attn/c_attn/MatMul", "qkv_proj", 2),
        ("/transformer/h.2/attn/c_proj/MatMul", "o_proj", 2),
        ("/transformer/h.2/mlp/c_proj/MatMul", "down_proj", 2),
    ],
)
def test_roles_are_read_from_exporter_names(name: str, kind: str, layer: int) -> None:
    role = classify(name)
    assert role is not None and (role.kind, role.layer) == (kind, layer)


@pytest.mark.parametrize("name", ["/lm_head/MatMul", "/model/embed_tokens/MatMul", "/model/layers.0/self_attn/MatMul"])
def test_lm_head_embeddings_and_attention_products_have_no_role(name: str) -> None:
    assert classify(name) is None


def test_candidates_refuse_each_ineligible_matmul_with_its_reason() -> None:
    candidates, skipped = find_candidates(mixed_model().graph)
    assert [c.node_name for c in candidates] == ["/model/layers.0/self_attn/q_proj/MatMul"]
    reasons = {s.node_name: s.reason for s in skipped}
    assert reasons["/lm_head/MatMul"] == "LM head or embedding"
    assert reasons["/model/layers.0/self_attn/MatMul"] == "not a decoder projection"
    assert reasons["/model/layers.0/self_attn/v_proj/MatMul"] == "weight is not a constant initializer"
    assert reasons["/model/layers.0/self_attn/k_proj/MatMul"] == "weight has rank 3, not 2"
    assert "INT32" in reasons["/model/layers.0/mlp/up_proj/MatMul"]


def test_include_and_exclude_patterns_select_nodes() -> None:
    candidates, _ = find_candidates(mixed_model().graph, include=["/lm_head/*"])
    assert [c.node_name for c in candidates] == ["/lm_head/MatMul"]
    candidates, skipped = find_candidates(mixed_model().graph, exclude=["q_proj"])
    assert not candidates and any(s.reason == "matches --exclude" for s in skipped)


def test_rewrite_keeps_name_output_and_stores_row_norms() -> None:
    model = projection_model(64, 32)
    report = apply_wina_gates(model, GateConfig(norm_on="all", allocation=Allocation.uniform(0.25)))
    (node,) = model.graph.node
    assert (node.op_type, node.domain, node.name, list(node.output)) == (schema.OP_TYPE, schema.DOMAIN, NAME, ["y"])
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(inits[node.input[2]], np.linalg.norm(inits["W"], axis=1), rtol=1e-6)
    assert inits[node.input[4]].tolist() == [48]
    assert report.records[0].keep_count == 48 and report.records[0].label == "L0.down_proj"
    onnx.checker.check_model(model)


@pytest.mark.parametrize("backend", ["onnx", "custom-op"])
@pytest.mark.parametrize("mode", ["wina", "teal"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_topk_backends_match_the_oracle(backend: str, mode: str, sparsity: float) -> None:
    model = projection_model(96, 40, seed=int(sparsity * 10))
    weight = _weight(model)
    x = np.random.default_rng(2).standard_normal((2, 5, 96)).astype(np.float32)
    apply_wina_gates(model, GateConfig(norm_on="all", mode=mode, backend=backend, allocation=Allocation.uniform(sparsity)))
    expected = reference.wina_sparse_matmul(
        x, weight, reference.score_scale_for(mode, weight), k=96 - int(round(sparsity * 96))
    )
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnx", "custom-op"])
def test_threshold_backends_match_the_oracle_and_the_calibrated_sparsity(backend: str) -> None:
    model = projection_model(128, 24, rank=2)
    weight = _weight(model)
    rng = np.random.default_rng(3)
    calib_x = rng.standard_normal((4000, 128)).astype(np.float32)
    norms = reference.weight_row_norms(weight)
    calibration = Calibration(features={NAME: 128})
    calibration.add(NAME, "wina", np.abs(calib_x) * norms)
    config = GateConfig(norm_on="all", gating="threshold", backend=backend, allocation=Allocation.uniform(0.6), calibration=calibration)
    apply_wina_gates(model, config)
    threshold = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name.endswith("wina_threshold")))[0])
    x = rng.standard_normal((500, 128)).astype(np.float32)
    measured = 1.0 - reference.keep_mask(x, norms, threshold=threshold).mean()
    assert abs(measured - 0.6) < 0.01
    expected = reference.wina_sparse_matmul(x, weight, norms, threshold=threshold)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(TensorProto.FLOAT16, 2e-2), (TensorProto.BFLOAT16, 5e-2)])
def test_custom_op_backend_in_half_precision_matches_the_oracle(dtype: int, tol: float) -> None:
    model = projection_model(64, 48, dtype=dtype, rank=2)
    weight = _weight(model)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    x = np.random.default_rng(4).standard_normal((7, 64)).astype(np_type)
    apply_wina_gates(model, GateConfig(norm_on="all", allocation=Allocation.uniform(0.5)))
    expected = reference.wina_sparse_matmul(x, weight, reference.weight_row_norms(weight), k=32).astype(np.float32)
    sess = op_session(model, threads=None)
    (y,) = sess.run_with_ort_values(["y"], {"x": to_ort_value(x)}, ort.RunOptions())
    got = from_ort_value(y, np_type).astype(np.float32)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got / scale, expected / scale, atol=tol)


def test_pass_on_half_precision_onnx_backend_runs() -> None:
    model = projection_model(32, 16, dtype=TensorProto.FLOAT16, rank=2)
    weight = _weight(model)
    x = np.random.default_rng(5).standard_normal((3, 32)).astype(np.float16)
    apply_wina_gates(model, GateConfig(norm_on="all", backend="onnx", allocation=Allocation.uniform(0.5)))
    expected = reference.wina_sparse_matmul(x, weight, reference.weight_row_norms(weight), k=16).astype(np.float32)
    np.testing.assert_allclose(_run(model, x).astype(np.float32), expected, rtol=2e-2, atol=2e-2)


def test_teal_gates_share_one_ones_vector_per_k() -> None:
    model = mixed_model()
    extra = onnx.helper.make_node("MatMul", ["q", "w1"], ["o"], name="/model/layers.0/self_attn/o_proj/MatMul")
    model.graph.node.append(extra)
    apply_wina_gates(model, GateConfig(mode="teal"))
    names = [i.name for i in model.graph.initializer]
    assert len(names) == len(set(names)) and names.count("wina_ones_8") == 1


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("k, n", [(1, 1), (3, 17), (64, 5), (200, 33)])
@pytest.mark.parametrize("gating", ["topk", "threshold"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_standard_ops_lowering_matches_the_oracle_over_shapes(dtype, k, n, gating, sparsity) -> None:
    model = projection_model(k, n, dtype=dtype, rank=2, seed=k + n)
    weight = _weight(model)
    norms = reference.weight_row_norms(weight)
    rng = np.random.default_rng(k * n)
    calibration = Calibration(features={NAME: k})
    calibration.add(NAME, "wina", np.abs(rng.standard_normal((256, k))) * norms)
    config = GateConfig(norm_on="all", gating=gating, backend="onnx", allocation=Allocation.uniform(sparsity), calibration=calibration)
    apply_wina_gates(model, config)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    tol = 1e-4 if dtype == TensorProto.FLOAT else 2e-2
    for m in (0, 1, 7):
        x = rng.standard_normal((m, k)).astype(np_type)
        if gating == "topk":
            expected = reference.wina_sparse_matmul(x, weight, norms, k=k - int(round(sparsity * k)))
        else:
            expected = reference.wina_sparse_matmul(x, weight, norms, threshold=calibration.threshold(NAME, "wina", sparsity))
        got = _run(model, x).astype(np.float32)
        scale = max(1.0, float(np.abs(expected).max())) if m else 1.0
        np.testing.assert_allclose(got / scale, expected.astype(np.float32) / scale, atol=tol)
