"""4-bit MatMulNBits models made by ONNX Runtime's own quantizer, for the tests of the 4-bit path.

`quantized_matmul` writes a one-MatMul float model around a random weight and quantizes it
with `MatMulNBitsQuantizer` (round to nearest, uint8 zero points when asymmetric) or its
HQQ configuration (float zero points), as users' int4 models are made. Imported as
`helpers.nbits_models` (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NODE_NAME = "/model/layers.0/mlp/down_proj/MatMul"
IR_VERSION = 10

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
               np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}


def float_matmul(weight: np.ndarray, name: str = NODE_NAME) -> onnx.ModelProto:
    """y = x @ weight with x [..., K] of the weight's type (a dynamic shape), weight an initializer."""
    k, n = weight.shape
    elem = _NP_TO_ONNX[weight.dtype]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name=name)], "g",
        [helper.make_tensor_value_info("x", elem, None)], [helper.make_tensor_value_info("y", elem, None)],
        [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def quantize(model: onnx.ModelProto, *, block_size: int, symmetric: bool = False, hqq: bool = False,
             bits: int = 4, accuracy_level: int = 0) -> onnx.ModelProto:
    """The model with its MatMuls quantized by MatMulNBitsQuantizer (HQQ: float zero points)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    if hqq:
        quantizer = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits))
    else:
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level)
    quantizer.process()
    return quantizer.model.model


def quantized_matmul(k: int, n: int, *, block_size: int, symmetric: bool = False, hqq: bool = False,
                     dtype=np.float32, seed: int = 0, bias: bool = False, bits: int = 4) -> onnx.ModelProto:
    """A one-node MatMulNBits model of a random [K, N] weight; with bias, a random bias input
    (MatMulNBits' input 5) is added to the node."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, n)).astype(dtype)
    model = quantize(float_matmul(weight), block_size=block_size, symmetric=symmetric, hqq=hqq, bits=bits)
    if bias:
        node = model.graph.node[0]
        while len(node.input) < 5:
            node.input.append("")
        node.input.append("bias")
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(n).astype(dtype), "bias"))
    return model


def nbits_node(model: onnx.ModelProto) -> onnx.NodeProto:
    """The model's MatMulNBits node."""
    return next(n for n in model.graph.node if n.op_type == "MatMulNBits")


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def run(model: onnx.ModelProto, x: np.ndarray, *, library: str | None = None) -> np.ndarray:
    """Run the model's first output on x with the CPU provider (graph optimisations off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def matmul_nbits_model(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *, k: int, n: int,
                       block_size: int, dtype=np.float32, accuracy_level: int = 0) -> onnx.ModelProto:
    """A one-node MatMulNBits model of given column-major codes, scales and zero points
    (passes.nbits.column_major's outputs), X [..., K] of `dtype`."""
    elem = _NP_TO_ONNX[np.dtype(dtype)]
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales.astype(dtype), "scales")]
    inputs = ["x", "B", "scales"]
    if zero_points is not None:
        zeros = zero_points if zero_points.dtype == np.uint8 else zero_points.astype(dtype)
        inits.append(numpy_helper.from_array(zeros, "zero_points"))
        inputs.append("zero_points")
    node = helper.make_node("MatMulNBits", inputs, ["y"], name=NODE_NAME + "_Q4", domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block_size, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, None)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = IR_VERSION
    return model
