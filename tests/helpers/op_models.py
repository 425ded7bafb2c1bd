"""Single-op ONNX models around `WinaSparseMatMul`, and running them in ONNX Runtime.

Used by the op tests, tests/test_op_*.py (imported as `helpers.op_models`: tests/ is on sys.path
under pytest's default import mode) and by benchmarks that need the same models.
X is a graph input with a dynamic shape; B, score_scale, threshold, k and bias are
initializers, as in models rewritten by the pass.
"""

from __future__ import annotations

import os
from typing import Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wina_onnx import reference, schema

IR_VERSION = 10  # onnx 1.23 writes IR 14 by default, newer than some ORT builds read
OPSET_IMPORTS = (("", 18), (schema.DOMAIN, schema.DOMAIN_VERSION))

NUMPY_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16,
}

DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


# Relative error allowed against the oracle, per dtype: the summation order (fp32) and
# one rounding of the result (fp16, bf16).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}


def assert_close(y: np.ndarray, expected: np.ndarray, dtype_name: str, context: str = "") -> None:
    """y equals the oracle's `expected`: shape, dtype, NaN positions, values within TOLERANCE of the scale."""
    assert y.shape == expected.shape, context
    assert y.dtype == expected.dtype, context
    if y.size == 0:
        return
    yf, ef = y.astype(np.float32), expected.astype(np.float32)
    assert np.array_equal(np.isnan(yf), np.isnan(ef)), f"{context}: NaN positions differ"
    finite = ~np.isnan(ef)
    if not finite.any():
        return
    scale = max(float(np.abs(ef[finite]).max()), 1e-3)
    err = float(np.abs(yf[finite] - ef[finite]).max())
    assert err <= TOLERANCE[dtype_name] * scale, f"{context}: max error {err} vs scale {scale}"


def make_weights(rng: np.random.Generator, k: int, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A random [K, N] weight of `dtype` (entries of about 1/sqrt(K)) and its row norms (WINA's score scale)."""
    b = (rng.standard_normal((k, n)) / np.sqrt(max(k, 1))).astype(np.float32).astype(dtype)
    return b, reference.weight_row_norms(b)


def gating_for(gating: str, sparsity: float, x: np.ndarray, score_scale: np.ndarray) -> dict:
    """The gating input ({"k": ...} or {"threshold": ...}) that masks about `sparsity` of x's features."""
    if gating == "topk":
        return {"k": int(round((1.0 - sparsity) * x.shape[-1]))}
    if sparsity == 0.0:
        return {"threshold": -1.0}
    scores = reference.gate_scores(x, score_scale)
    finite = scores[np.isfinite(scores)]
    return {"threshold": float(np.quantile(finite, sparsity)) if finite.size else 0.0}


def onnx_type(dtype: np.dtype) -> int:
    return NUMPY_TO_ONNX[np.dtype(dtype)]


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A ModelProto for `graph` that ONNX Runtime 1.2x reads (IR 10, our opsets)."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET_IMPORTS]
    )
    model.ir_version = IR_VERSION
    return model


def wina_model(
    b: np.ndarray,
    score_scale: np.ndarray,
    *,
    gating: str | None,
    threshold: float | np.ndarray | None = None,
    k: int | np.ndarray | None = None,
    bias: np.ndarray | None = None,
    x_dtype: np.dtype | None = None,
    x_rank: int | None = 2,
    node_name: str = "wina",
) -> onnx.ModelProto:
    """Model Y = WinaSparseMatMul(X, B, score_scale[, threshold][, k][, bias]).

    threshold / k / bias None leave that optional input out ("" in the node).
    threshold and k may be arrays to test shapes other than a scalar.
    gating None omits the attribute (to test the error). x_rank None leaves the
    shape of X unspecified, so one session takes X of any rank.
    """
    dtype = np.dtype(x_dtype if x_dtype is not None else b.dtype)
    inits = [
        numpy_helper.from_array(np.asarray(b), "B"),
        numpy_helper.from_array(np.asarray(score_scale), "score_scale"),
    ]
    inputs = ["X", "B", "score_scale", "", "", ""]
    if threshold is not None:
        inits.append(numpy_helper.from_array(np.asarray(threshold, dtype=np.float32), "threshold"))
        inputs[schema.INPUT_THRESHOLD] = "threshold"
    if k is not None:
        inits.append(numpy_helper.from_array(np.asarray(k, dtype=np.int64), "k"))
        inputs[schema.INPUT_K] = "k"
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias), "bias"))
        inputs[schema.INPUT_BIAS] = "bias"
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = {} if gating is None else {schema.ATTR_GATING: gating}
    node = helper.make_node(
        schema.OP_TYPE, inputs, ["Y"], name=node_name, domain=schema.DOMAIN, **attrs
    )
    if x_rank is None:
        x_dims = None
    else:
        x_dims = [f"d{i}" for i in range(x_rank - 1)] + [int(b.shape[0]) if b.ndim >= 1 else "K"]
    graph = helper.make_graph(
        [node],
        "wina_single_op",
        [helper.make_tensor_value_info("X", onnx_type(dtype), x_dims)],
        [helper.make_tensor_value_info("Y", onnx_type(dtype), None)],
        initializer=inits,
    )
    return finish_model(graph)


def session(
    model: onnx.ModelProto,
    *,
    threads: int | None = 1,
    library: str | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    config: dict[str, str] | None = None,
):
    """An ORT session for `model` with the op library registered (CPU unless `providers`).

    config: session config entries, e.g. {"session.disable_cpu_ep_fallback": "1"}.
    """
    import onnxruntime as ort

    import wina_onnx

    options = ort.SessionOptions()
    if os.environ.get("WINA_ONNX_TEST_NO_ARENA") == "1":
        # scripts/sanitize.sh: every tensor its own heap block, so ASan sees reads past one.
        options.enable_cpu_mem_arena = False
    if threads is not None:
        options.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.register_custom_ops_library(library or wina_onnx.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))


def to_ort_value(array: np.ndarray):
    """An OrtValue for `array`; bfloat16 goes in as its raw 16-bit pattern."""
    import onnxruntime as ort

    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16
        )
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def from_ort_value(value, dtype: np.dtype) -> np.ndarray:
    """The array held by an OrtValue output, as `dtype`."""
    if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
        # OrtValue.numpy() has no NumPy type for bfloat16: copy the raw bits out.
        import ctypes

        out = np.empty(value.shape(), dtype=np.uint16)
        if out.size:
            ctypes.memmove(out.ctypes.data, value.data_ptr(), out.nbytes)
        return out.view(ml_dtypes.bfloat16)
    return np.asarray(value.numpy()).astype(dtype, copy=False)


def run(sess, x: np.ndarray) -> np.ndarray:
    """Run the single-op model on X and return Y as X's dtype."""
    import onnxruntime as ort

    outputs = sess.run_with_ort_values(["Y"], {"X": to_ort_value(x)}, ort.RunOptions())
    return from_ort_value(outputs[0], x.dtype)


def matmul_model(
    weights: Sequence[np.ndarray], *, x_dtype: np.dtype = np.float32
) -> onnx.ModelProto:
    """Model with one X [M, K] feeding len(weights) standard MatMuls, outputs Y0..Yn."""
    k = int(weights[0].shape[0])
    nodes, inits, outs = [], [], []
    for g, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"W{g}"))
        nodes.append(helper.make_node("MatMul", ["X", f"W{g}"], [f"Y{g}"], name=f"mm{g}"))
        outs.append(helper.make_tensor_value_info(f"Y{g}", onnx_type(x_dtype), None))
    graph = helper.make_graph(
        nodes, "matmuls", [helper.make_tensor_value_info("X", onnx_type(x_dtype), ["M", k])],
        outs, initializer=inits,
    )
    return finish_model(graph)


def group_model(
    weights: Sequence[np.ndarray],
    score_scale: np.ndarray,
    threshold: np.ndarray,
    *,
    biases: Sequence[np.ndarray] | None = None,
    x_dtype: np.dtype | None = None,
) -> onnx.ModelProto:
    """Model Y_0..Y_{S-1} = WinaSparseMatMulGroup(X, score_scale, threshold, B_0.., bias_0..).

    Initializers B_s, bias_s, score_scale, threshold; X has any rank and shape.
    """
    dtype = np.dtype(x_dtype if x_dtype is not None else weights[0].dtype)
    inits = [
        numpy_helper.from_array(np.asarray(score_scale, dtype=np.float32), "score_scale"),
        numpy_helper.from_array(np.asarray(threshold, dtype=np.float32), "threshold"),
    ]
    names = []
    for s, w in enumerate(weights):
        inits.append(numpy_helper.from_array(np.asarray(w), f"B{s}"))
        names.append(f"B{s}")
    for s, bias in enumerate(biases or ()):
        inits.append(numpy_helper.from_array(np.asarray(bias), f"bias{s}"))
        names.append(f"bias{s}")
    outputs = [f"Y{s}" for s in range(len(weights))]
    node = helper.make_node(
        schema.GROUP_OP_TYPE, ["X", "score_scale", "threshold", *names], outputs,
        name="wina_group", domain=schema.DOMAIN,
    )
    graph = helper.make_graph(
        [node],
        "wina_group_op",
        [helper.make_tensor_value_info("X", onnx_type(dtype), None)],
        [helper.make_tensor_value_info(o, onnx_type(dtype), None) for o in outputs],
        initializer=inits,
    )
    return finish_model(graph)


def run_group(sess, x: np.ndarray) -> list[np.ndarray]:
    """Run a group model on X and return Y_0..Y_{S-1} as X's dtype."""
    import onnxruntime as ort

    names = [o.name for o in sess.get_outputs()]
    outputs = sess.run_with_ort_values(names, {"X": to_ort_value(x)}, ort.RunOptions())
    return [from_ort_value(o, x.dtype) for o in outputs]
