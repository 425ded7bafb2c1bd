"""Small hand-built ONNX graphs for pass tests (no export needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # ONNX Runtime 1.2x-1.3x reads IR <= 10 reliably; onnx 1.23 writes 14 by default


def projection_model(
    k: int,
    n: int,
    *,
    dtype: int = TensorProto.FLOAT,
    name: str = "/model/layers.0/mlp/down_proj/MatMul",
    seed: int = 0,
    rank: int = 3,
) -> onnx.ModelProto:
    """x [batch, seq, K] (or [M, K] for rank 2) -> one projection MatMul -> y."""
    rng = np.random.default_rng(seed)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    weight *= rng.uniform(0.1, 3.0, size=(k, 1)).astype(np.float32)  # rows of unequal norm
    x_shape = ["batch", "seq", k] if rank == 3 else ["tokens", k]
    y_shape = x_shape[:-1] + [n]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name=name)],
        "projection",
        [helper.make_tensor_value_info("x", dtype, x_shape)],
        [helper.make_tensor_value_info("y", dtype, y_shape)],
        [numpy_helper.from_array(weight.astype(np_type), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def mixed_model() -> onnx.ModelProto:
    """A graph with one gateable projection and MatMuls the pass must refuse, each for a reason."""
    rng = np.random.default_rng(1)
    w = lambda *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"w{len(inits)}")  # noqa: E731
    inits: list[onnx.TensorProto] = []
    for shape in [(8, 8), (8, 8), (2, 8, 8)]:
        inits.append(w(*shape))
    inits.append(numpy_helper.from_array(rng.integers(-3, 3, (8, 8)).astype(np.int32), "w_int"))
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["q"], name="/model/layers.0/self_attn/q_proj/MatMul"),
        helper.make_node("MatMul", ["q", "w1"], ["logits"], name="/lm_head/MatMul"),
        helper.make_node("MatMul", ["x", "x_t"], ["scores"], name="/model/layers.0/self_attn/MatMul"),
        helper.make_node("MatMul", ["x", "w_dyn"], ["dyn"], name="/model/layers.0/self_attn/v_proj/MatMul"),
        helper.make_node("MatMul", ["x", "w2"], ["batched"], name="/model/layers.0/self_attn/k_proj/MatMul"),
        helper.make_node("Cast", ["x"], ["x_int"], to=TensorProto.INT32),
        helper.make_node("MatMul", ["x_int", "w_int"], ["ints"], name="/model/layers.0/mlp/up_proj/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [8, 1]),
            helper.make_tensor_value_info("w_dyn", TensorProto.FLOAT, [8, 8]),
        ],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT if o != "ints" else TensorProto.INT32, None)
            for o in ("logits", "scores", "dyn", "batched", "ints")
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model
