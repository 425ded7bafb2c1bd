"""Smoke test of an installed wina-onnx wheel, run from outside the source tree.

Checks that the package imports from site-packages (not a checkout), that the op library
ships in it, and that a WinaSparseMatMul model runs in ONNX Runtime (top-k and threshold
gating) with the results of the NumPy oracle. Exits non-zero on any failure.
"""

from __future__ import annotations

import os
import sys
import sysconfig

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import wina_onnx
from wina_onnx import get_library_path, reference, schema
from wina_onnx.passes import GateConfig  # noqa: F401  (the passes ship inside the package)

K, N, TOKENS = 64, 24, 5


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"wheel smoke test FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def op_model(b: np.ndarray, scale: np.ndarray, gating: str, value) -> onnx.ModelProto:
    """Y = WinaSparseMatMul(X, B, score_scale, threshold or k)."""
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scale, "score_scale")]
    inputs = ["X", "B", "score_scale", "", ""]
    if gating == schema.GATING_TOPK:
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), "k"))
        inputs[schema.INPUT_K] = "k"
    else:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), "threshold"))
        inputs[schema.INPUT_THRESHOLD] = "threshold"
        inputs = inputs[:4]
    node = helper.make_node(schema.OP_TYPE, inputs, ["Y"], domain=schema.DOMAIN, gating=gating)
    graph = helper.make_graph([node], "smoke", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["t", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION)])
    model.ir_version = 10
    return model


def main() -> None:
    package_dir = os.path.dirname(os.path.abspath(wina_onnx.__file__))
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    check(os.path.realpath(package_dir).startswith(site), f"wina_onnx imported from {package_dir}, not {site}")
    library = get_library_path()
    check(os.path.isfile(library) and library.startswith(package_dir), f"op library not in the wheel: {library}")
    rng = np.random.default_rng(0)
    b = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((TOKENS, K)).astype(np.float32)
    scale = reference.weight_row_norms(b)
    options = wina_onnx.session_options()
    for gating, value in ((schema.GATING_TOPK, K // 2), (schema.GATING_THRESHOLD, 0.8)):
        session = ort.InferenceSession(op_model(b, scale, gating, value).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"X": x})
        kwargs = {"k": value} if gating == schema.GATING_TOPK else {"threshold": value}
        want = reference.wina_sparse_matmul(x, b, scale, **kwargs)
        check(np.allclose(y, want, rtol=1e-5, atol=1e-5),
              f"{gating}: ORT and the oracle differ by {np.abs(y - want).max():.3g}")
        check(not np.allclose(y, x @ b, atol=1e-3), f"{gating}: the output equals the dense product")
    print(f"wheel smoke test passed: wina-onnx {wina_onnx.__version__}, onnxruntime {ort.__version__}, {library}")


if __name__ == "__main__":
    main()
