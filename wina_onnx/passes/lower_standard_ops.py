"""Lower `WinaSparseMatMul` to standard ONNX ops, for runtimes without the op library.

Same semantics as the custom op (wina_onnx.schema), computed densely:

    s    = Abs(Cast<float>(X)) * score_scale ; s = Where(IsNaN(s), +inf, s)
    keep = Greater(s, threshold)                                  (threshold gating)
         = ScatterElements(false[shape X], TopK(s, k).indices, true)   (top-k gating;
           TopK breaks ties towards the lower index, as the op does)
    Y    = MatMul(Where(keep, X, 0), B) (+ bias)

Nothing is skipped: every weight row is still read. It is slower than the op library
and gives the same numbers, up to the summation order of the MatMul.

A 4-bit weight (ONNX Runtime's MatMulNBits) keeps its MatMulNBits node, fed the masked X
(`emit_nbits`): the same gate, ONNX Runtime's own int4 product, no op library needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .names import NameSpace


class StandardOpsLowering:
    """Emits the lowering of gated MatMuls into a graph, sharing constants between them."""

    def __init__(self, graph: onnx.GraphProto, names: NameSpace | None = None) -> None:
        self.graph = graph
        self.names = names or NameSpace(graph)
        self._shared: dict[str, str] = {}

    def _constant(self, key: str, array: np.ndarray) -> str:
        """Name of a shared initializer holding `array`, created once per key."""
        if key not in self._shared:
            name = self.names.fresh(f"wina_const_{key}")
            self.graph.initializer.append(numpy_helper.from_array(array, name))
            self._shared[key] = name
        return self._shared[key]

    def emit(
        self,
        *,
        prefix: str,
        x: str,
        weight: str,
        score_scale: str,
        output: str,
        dtype: int,
        threshold: str | None,
        k: str | None,
        bias: str | None = None,
    ) -> list[onnx.NodeProto]:
        """Nodes computing `output` from x and weight (+ bias); threshold/k name initializers.

        Node and value names start with `prefix`, made unique where taken.
        """
        nodes, x_masked = self._mask(prefix=prefix, x=x, score_scale=score_scale, dtype=dtype,
                                     threshold=threshold, k=k)
        product = self.names.fresh(f"{prefix}/MatMul_output_0") if bias else output
        nodes.append(helper.make_node("MatMul", [x_masked, weight], [product], name=self.names.fresh(f"{prefix}/MatMul")))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [output], name=self.names.fresh(f"{prefix}/AddBias")))
        return nodes

    def emit_nbits(
        self,
        *,
        prefix: str,
        node: onnx.NodeProto,
        score_scale: str,
        dtype: int,
        threshold: str | None,
        k: str | None,
    ) -> list[onnx.NodeProto]:
        """The gate of a MatMulNBits `node`: the mask nodes, then a copy of `node` reading the
        masked X (named `<prefix>/MatMulNBits`, same weights, attributes and output)."""
        nodes, x_masked = self._mask(prefix=prefix, x=node.input[0], score_scale=score_scale, dtype=dtype,
                                     threshold=threshold, k=k)
        product = onnx.NodeProto()
        product.CopyFrom(node)
        product.input[0] = x_masked
        product.name = self.names.fresh(f"{prefix}/MatMulNBits")
        nodes.append(product)
        return nodes

    def _mask(
        self, *, prefix: str, x: str, score_scale: str, dtype: int, threshold: str | None, k: str | None,
    ) -> tuple[list[onnx.NodeProto], str]:
        """The nodes computing X with its masked features zeroed, and the name of that value."""
        nodes: list[onnx.NodeProto] = []
        fresh = self.names.fresh

        def node(op: str, inputs: list[str], suffix: str, n_out: int = 1, **attrs) -> list[str]:
            outs = [fresh(f"{prefix}/{suffix}_output_{i}") for i in range(n_out)]
            nodes.append(helper.make_node(op, inputs, outs, name=fresh(f"{prefix}/{suffix}"), **attrs))
            return outs

        x_float = x if dtype == onnx.TensorProto.FLOAT else node("Cast", [x], "CastScore", to=onnx.TensorProto.FLOAT)[0]
        (abs_x,) = node("Abs", [x_float], "Abs")
        (raw_score,) = node("Mul", [abs_x, score_scale], "Score")
        (is_nan,) = node("IsNaN", [raw_score], "IsNaN")
        inf = self._constant("inf_f32", np.array(np.inf, dtype=np.float32))
        (score,) = node("Where", [is_nan, inf, raw_score], "NanAsInf")
        if threshold is not None:
            (keep,) = node("Greater", [score, threshold], "Keep")
        else:
            _, indices = node("TopK", [score, k], "TopK", n_out=2, axis=-1, largest=1, sorted=1)
            (shape,) = node("Shape", [x], "Shape")
            false = numpy_helper.from_array(np.array([False]), "value")
            (none_kept,) = node("ConstantOfShape", [shape], "NoneKept", value=false)
            (idx_shape,) = node("Shape", [indices], "IndexShape")
            true = self._constant("true", np.array(True))
            (updates,) = node("Expand", [true, idx_shape], "KeptFlags")
            (keep,) = node("ScatterElements", [none_kept, indices, updates], "Keep", axis=-1)
        zero = self._constant(f"zero_{dtype}", np.array(0, dtype=_numpy_dtype(dtype)))
        (x_masked,) = node("Where", [keep, x, zero], "MaskX")
        return nodes, x_masked


def _numpy_dtype(dtype: int) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(dtype)
