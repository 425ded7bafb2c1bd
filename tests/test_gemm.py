"""Gemm projections (how exporters write Conv1D layers such as GPT-2's): Y = X @ B + C.

The pass gates a Gemm with alpha 1, beta 1, no transposed input and C a constant [N]
vector (also behind Identity nodes, as exporters share equal initializers); C becomes
the gate's bias. Every other form is refused with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.graphs import IR_VERSION
from onnx import TensorProto, helper, numpy_helper

from wina_onnx import get_library_path, reference, schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.passes import GateConfig, apply_wina_gates, find_candidates

K, N = 48, 24
NAME = "/transformer/h.0/mlp/c_fc/Gemm"


def gemm_model(*, shared_bias: bool = False, bias_shape: tuple[int, ...] = (N,), **attrs) -> onnx.ModelProto:
    """x [M, K] -> Gemm(x, W, C) -> y; C reached through an Identity when shared_bias."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((N, K) if attrs.get("transB") else (K, N)).astype(np.float32)
    weight *= rng.uniform(0.1, 3.0, size=(weight.shape[0], 1)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "C")]
    nodes = []
    bias = "C"
    if shared_bias:
        nodes.append(helper.make_node("Identity", ["C"], ["C_shared"], name="Identity_1"))
        bias = "C_shared"
    nodes.append(helper.make_node("Gemm", ["x", "W", bias], ["y"], name=NAME, **attrs))
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if any(o.domain == schema.DOMAIN for o in model.opset_import):
        options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


@pytest.mark.parametrize("shared_bias", [False, True])
def test_gemm_is_a_candidate_with_its_bias(shared_bias: bool) -> None:
    (candidate,), skipped = find_candidates(gemm_model(shared_bias=shared_bias).graph)
    assert not skipped
    assert (candidate.role.kind, candidate.role.layer) == ("up_proj", 0)
    assert (candidate.weight_name, candidate.k, candidate.n, candidate.bias) == ("W", K, N, "C")


@pytest.mark.parametrize("backend", ["custom-op", "onnx"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
@pytest.mark.parametrize("shared_bias", [False, True])
def test_gated_gemm_matches_the_oracle_with_its_bias(backend: str, sparsity: float, shared_bias: bool) -> None:
    model = gemm_model(shared_bias=shared_bias)
    weight, bias = _init(model, "W"), _init(model, "C")
    x = np.random.default_rng(4).standard_normal((7, K)).astype(np.float32)
    dense = _run(model, x)
    report = apply_wina_gates(model, GateConfig(norm_on="all", backend=backend, allocation=Allocation.uniform(sparsity)))
    assert len(report.records) == 1 and not any(n.op_type == "Gemm" for n in model.graph.node)
    onnx.checker.check_model(model)
    got = _run(model, x)
    expected = reference.wina_sparse_matmul(x, weight, reference.score_scale_for("wina", weight),
                                            k=K - int(round(sparsity * K)), bias=bias)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)  # bias included (it is not zero)
    if sparsity == 0.0:
        np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("attrs", "bias_shape", "reason"), [
    (dict(transB=1), (N,), "Gemm with transB=1 (its weight is stored [N, K], the op reads [K, N])"),
    (dict(transA=1), (N,), "Gemm with transA=1 (its input is transposed)"),
    (dict(alpha=2.0), (N,), "Gemm with alpha != 1"),
    (dict(beta=0.5), (N,), "Gemm with beta != 1"),
    (dict(), (1, N), "Gemm whose C is not a constant [N] vector"),
])
def test_other_gemm_forms_are_refused_with_the_reason(attrs: dict, bias_shape: tuple, reason: str) -> None:
    candidates, skipped = find_candidates(gemm_model(bias_shape=bias_shape, **attrs).graph)
    assert not candidates
    assert [(s.node_name, s.reason) for s in skipped] == [(NAME, reason)]
