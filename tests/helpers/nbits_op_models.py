"""Single-op `WinaSparseMatMulNBits` models, random 4-bit weights, the oracle and its tolerances.

Used by tests/test_op_nbits.py (imported as `helpers.nbits_op_models`). A weight is a
feature-major `nbits.FeatureMajor` (codes [K, ceil(N/2)], scales [blocks, N], zero points
absent, packed uint8 or float); the op's gating parameter (k or threshold) is either an
initializer or a scalar graph input fed at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers.op_models import TOLERANCE, finish_model, from_ort_value, onnx_type, to_ort_value
from wina_onnx import reference, schema
from wina_onnx.passes import nbits

ZERO_KINDS = ("none", "uint8", "float")


def random_weight(rng: np.random.Generator, k: int, n: int, block: int, zero_kind: str, dtype) -> nbits.FeatureMajor:
    """Random feature-major codes, scales (T) and zero points of the given kind."""
    blocks, half = -(-k // block), -(-n // 2)
    codes = rng.integers(0, 256, (k, half), dtype=np.uint8)
    scales = (rng.standard_normal((blocks, n)) * 0.1).astype(np.float32).astype(dtype)
    zeros = None
    if zero_kind == "uint8":
        zeros = rng.integers(0, 256, (blocks, half), dtype=np.uint8)
    elif zero_kind == "float":
        zeros = rng.uniform(0.0, 15.0, (blocks, n)).astype(np.float32).astype(dtype)
    return nbits.FeatureMajor(codes, scales, zeros, k, n, block)


def gating_params(gating: str, param) -> dict:
    """{"k": param} for top-k, {"threshold": param} for threshold gating."""
    return {"k": param} if gating == schema.GATING_TOPK else {"threshold": param}


def nbits_model(weight: nbits.FeatureMajor, score_scale: np.ndarray, *, gating: str, dtype, accuracy_level: int = 0,
                bias: np.ndarray | None = None, attrs: dict | None = None, k: int | None = None,
                threshold: float | None = None) -> onnx.ModelProto:
    """Y = WinaSparseMatMulNBits(X, ...) with X [..., K] of `dtype` a graph input; weights,
    score_scale and bias are initializers. The gating parameter is an initializer when `k` (top-k)
    or `threshold` is given, else a scalar graph input of that name (see `run_op`). `attrs`
    overrides node attributes (to test the errors)."""
    elem = onnx_type(dtype)
    inits = [numpy_helper.from_array(weight.codes, "B"), numpy_helper.from_array(weight.scales, "scales"),
             numpy_helper.from_array(np.asarray(score_scale, np.float32), "score_scale")]
    inputs = ["X", "B", "scales", "", "score_scale", "", "", ""]
    if weight.zero_points is not None:
        inits.append(numpy_helper.from_array(weight.zero_points, "zero_points"))
        inputs[schema.NBITS_INPUT_ZERO_POINTS] = "zero_points"
    graph_inputs = [helper.make_tensor_value_info("X", elem, None)]
    if gating == schema.GATING_TOPK:
        name, index, value, onnx_elem, np_type = "k", schema.NBITS_INPUT_K, k, TensorProto.INT64, np.int64
    else:
        name, index, value = "threshold", schema.NBITS_INPUT_THRESHOLD, threshold
        onnx_elem, np_type = TensorProto.FLOAT, np.float32
    inputs[index] = name
    if value is None:
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_elem, []))
    else:
        inits.append(numpy_helper.from_array(np.array(value, np_type), name))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs[schema.NBITS_INPUT_BIAS] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    node_attrs = {schema.ATTR_GATING: gating, schema.NBITS_ATTR_K: weight.k, schema.NBITS_ATTR_N: weight.n,
                  schema.NBITS_ATTR_BITS: 4, schema.NBITS_ATTR_BLOCK_SIZE: weight.block_size,
                  schema.NBITS_ATTR_ACCURACY_LEVEL: accuracy_level}
    node_attrs.update(attrs or {})
    node = helper.make_node(schema.NBITS_OP_TYPE, inputs, ["Y"], name="gate", domain=schema.DOMAIN, **node_attrs)
    graph = helper.make_graph([node], "nbits", graph_inputs, [helper.make_tensor_value_info("Y", elem, None)], inits)
    return finish_model(graph)


def run_op(sess, x: np.ndarray, gating: str | None = None, param=None) -> np.ndarray:
    """Y for X, feeding the gating parameter when the model takes it as a graph input."""
    import onnxruntime as ort

    feeds = {"X": to_ort_value(x)}
    if param is not None:
        name, np_type = ("k", np.int64) if gating == schema.GATING_TOPK else ("threshold", np.float32)
        feeds[name] = ort.OrtValue.ortvalue_from_numpy(np.array(param, dtype=np_type))
    return from_ort_value(sess.run_with_ort_values(["Y"], feeds, ort.RunOptions())[0], x.dtype)


def oracle(x: np.ndarray, weight: nbits.FeatureMajor, score_scale: np.ndarray, bias: np.ndarray | None = None,
           **params) -> np.ndarray:
    """The oracle's Y (params: k= or threshold=)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, score_scale,
                                                  block_size=weight.block_size, n=weight.n, bias=bias, **params)


def int8_error_bound(x: np.ndarray, weight: nbits.FeatureMajor, score_scale: np.ndarray, **params) -> np.ndarray:
    """Largest |error| per output that int8 x (per block of kept features, scale max|x| / 127,
    rounded to nearest) allows: sum over kept i of (max|x| of i's block) / 254 * |W[i, n]|."""
    mask = reference.keep_mask(x, score_scale, **params).reshape(-1, weight.k)
    xs = np.where(mask, x.reshape(-1, weight.k).astype(np.float32), 0.0)
    w = np.abs(weight.dequantize())
    block = np.arange(weight.k) // weight.block_size
    bounds = []
    for row in xs:
        amax = np.zeros(weight.k, np.float32)
        for b in range(-(-weight.k // weight.block_size)):
            sel = block == b
            amax[sel] = np.abs(row[sel]).max(initial=0.0)
        bounds.append(((amax / 254.0) * (row != 0)) @ w)
    return np.asarray(bounds).reshape(*x.shape[:-1], weight.n)


def assert_within(y: np.ndarray, want: np.ndarray, dtype_name: str, context: str,
                  extra: np.ndarray | float = 0.0) -> None:
    """y equals the oracle within the dtype's tolerance of the output scale, plus `extra`
    (the int8 bound) per element."""
    assert y.shape == want.shape and y.dtype == want.dtype, context
    if not y.size:
        return
    got, ref = y.astype(np.float32), want.astype(np.float32)
    scale = max(float(np.abs(ref).max()), 1e-3)
    allowed = TOLERANCE[dtype_name] * scale + np.asarray(extra, np.float32) * (1.0 + TOLERANCE[dtype_name])
    excess = np.abs(got - ref) - allowed
    assert (excess <= 0).all(), f"{context}: max error {np.abs(got - ref).max()} (scale {scale}), worst excess {excess.max()}"
