"""The WINA pass on randomly generated graphs (tests/helpers/graph_fuzz.py).

For each graph: the pass at sparsity 0 (top-k, k = K) must give a model that passes
onnx.checker (full check, shape inference) and computes the same outputs as the
original in ONNX Runtime, with both backends and both modes; it must gate exactly the
eligible projections; and running it again on its own output must gate nothing more
(no stacked gates); gating a partly gated graph gates exactly the rest.

WINA_ONNX_FUZZ_GRAPHS sets the number of random graphs (default 40).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.graph_fuzz import random_graph
from onnx import TensorProto

from wina_onnx import get_library_path, schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.passes import GateConfig, apply_wina_gates
from wina_onnx.passes.candidates import LOWERED_MATMUL

GRAPHS = int(os.environ.get("WINA_ONNX_FUZZ_GRAPHS", "40"))
TOLERANCE = {TensorProto.FLOAT: 1e-5, TensorProto.FLOAT16: 1e-2}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    if any(o.domain == schema.DOMAIN for o in model.opset_import):
        options.register_custom_ops_library(get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _gates(model: onnx.ModelProto, backend: str) -> int:
    if backend == "custom-op":
        return sum(n.op_type == schema.OP_TYPE for n in model.graph.node)
    return sum(n.op_type == "MatMul" and bool(LOWERED_MATMUL.search(n.name)) for n in model.graph.node)


def _assert_same_outputs(got: list[np.ndarray], want: list[np.ndarray], dtype: int, context: str) -> None:
    assert len(got) == len(want), context
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, context
        if w.size:
            scale = max(1.0, float(np.abs(w.astype(np.float32)).max()))
            err = float(np.abs(g.astype(np.float32) - w.astype(np.float32)).max())
            assert err <= TOLERANCE[dtype] * scale, f"{context}: max error {err} (scale {scale})"


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed", range(GRAPHS))
def test_random_graph_survives_the_pass(seed: int, dtype: int) -> None:
    original, feeds, gateable = random_graph(seed, dtype=dtype)
    onnx.checker.check_model(original, full_check=True)
    want = _run(original, feeds)
    for backend in ("custom-op", "onnx"):
        for mode in ("wina", "teal"):
            context = f"seed {seed} {backend} {mode}"
            model = copy.deepcopy(original)
            config = GateConfig(mode=mode, backend=backend, allocation=Allocation.uniform(0.0))
            report = apply_wina_gates(model, config)
            assert len(report.records) == gateable == _gates(model, backend), context
            onnx.checker.check_model(model, full_check=True)
            _assert_same_outputs(_run(model, feeds), want, dtype, context)
            # Again on the gated model: nothing new to gate, nothing stacked.
            before = model.SerializeToString()
            again = apply_wina_gates(model, config)
            assert not again.records and _gates(model, backend) == gateable, context
            assert model.SerializeToString() == before, context


@pytest.mark.parametrize("seed", range(GRAPHS))
def test_gating_a_partly_gated_graph_completes_it(seed: int) -> None:
    """Gate layer 0 first, then everything (as `optimize --force` on a partly gated model):
    the second run gates exactly the rest, and new names never clash with the first run's."""
    original, feeds, gateable = random_graph(seed)
    want = _run(original, feeds)
    for backend in ("custom-op", "onnx"):
        model = copy.deepcopy(original)
        for include in (["/model/layers.0/*"], []):
            config = GateConfig(mode="teal", backend=backend, allocation=Allocation.uniform(0.0), include=include)
            apply_wina_gates(model, config)
        assert _gates(model, backend) == gateable, f"seed {seed} {backend}"
        onnx.checker.check_model(model, full_check=True)
        _assert_same_outputs(_run(model, feeds), want, TensorProto.FLOAT, f"seed {seed} {backend}")
