"""Find the MatMul nodes the WINA pass may gate, and say why the others are refused.

A MatMul y = x @ B is a candidate when
  * B is a constant initializer of rank 2 ([K, N]) that is not also a graph input
    (a graph input may be overridden at run time, so its norms could go stale);
  * B is float32, float16 or bfloat16;
  * it is a decoder projection by name (passes.roles) or matches an --include pattern,
    and matches no --exclude pattern. The LM head and embeddings are refused by name;
  * it is not itself the product of a gate lowered to standard ops (`--backend onnx`),
    so gating a gated model again never stacks a second gate.

ONNX Runtime's 4-bit MatMulNBits (com.microsoft) projections are candidates on the same
terms, their weight being the codes, scales and zero points (passes.nbits says which
forms are accepted and why others are refused).

A Gemm Y = X @ B + C (alpha 1, beta 1, neither input transposed, C absent or a constant
[N] vector) is the same product with a bias; exporters write one for a Conv1D, whose
weight is stored [K, N] (GPT-2's c_attn, c_proj, c_fc). It is a candidate on the same
terms, and its C becomes the gate's bias (read through Identity nodes: exporters share
equal initializers that way). Other Gemm forms are refused with the reason.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from . import nbits, roles
from .result import Skipped

# The MatMul of a gate lowered to standard ops is named `<gated node>/wina/MatMul`
# (`.../wina/MatMulNBits` for a 4-bit weight; with `_<i>` suffixes where that name was
# taken; see passes.names).
LOWERED_MATMUL = re.compile(r"/wina(_\d+)?/MatMul(NBits)?(_\d+)?$")

GATEABLE_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}


@dataclass(frozen=True)
class Candidate:
    """A MatMul the pass will gate."""

    node_name: str
    role: roles.Role | None
    weight_name: str
    k: int
    n: int
    dtype: int  # onnx.TensorProto data type of x, B and y (of x, the scales and y for 4-bit weights)
    index: int = -1  # position of the node in graph.node (node names need not be unique)
    quantized: nbits.NbitsSource | None = None  # a 4-bit MatMulNBits; weight_name is then its codes
    bias: str = ""  # a Gemm's C, added after the product by the gate ("" for none)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight a dense product reads (codes, scales and zero points for 4-bit weights)."""
        if self.quantized is not None:
            return self.quantized.weight_bytes
        return self.k * self.n * (4 if self.dtype == onnx.TensorProto.FLOAT else 2)

    @property
    def label(self) -> str:
        """Role label such as 'L3.down_proj', or the node name when the role is unknown."""
        return self.role.label if self.role is not None else self.node_name


def node_display_name(node: onnx.NodeProto) -> str:
    """The node's name, or its first output's name when the exporter left it unnamed."""
    return node.name or (node.output[0] if node.output else "<unnamed>")


def _is_gemm(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and node.domain in ("", "ai.onnx")


def _constant_aliases(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> dict[str, str]:
    """Output -> initializer name of the Identity nodes (chains included) that pass an initializer on."""
    producers = {node.output[0]: node.input[0] for node in graph.node
                 if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input and node.output}
    aliases = {}
    for output, source in producers.items():
        for _ in range(len(producers)):
            if source in initializers or source not in producers:
                break
            source = producers[source]
        if source in initializers:
            aliases[output] = source
    return aliases


def _gemm_bias(node: onnx.NodeProto, aliases: dict[str, str]) -> str:
    """The initializer a Gemm's C is ("" when it has none; C itself when no Identity hides it)."""
    if len(node.input) < 3 or not node.input[2]:
        return ""
    return aliases.get(node.input[2], node.input[2])


def _gemm_refusal(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], n: int, bias: str) -> str | None:
    """Why a Gemm is not a plain X @ B (+ bias [N]) that the op computes (None when it is)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
        return "Gemm with transA=1 (its input is transposed)"
    if attrs.get("transB", 0):
        return "Gemm with transB=1 (its weight is stored [N, K], the op reads [K, N])"
    if attrs.get("alpha", 1.0) != 1.0:
        return "Gemm with alpha != 1"
    if bias:
        if attrs.get("beta", 1.0) != 1.0:
            return "Gemm with beta != 1"
        tensor = initializers.get(bias)
        if tensor is None or list(tensor.dims) != [n]:
            return "Gemm whose C is not a constant [N] vector"
        if tensor.data_type != initializers[node.input[1]].data_type:
            return "Gemm whose C has another type than its weight"
    return None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


def find_candidates(
    graph: onnx.GraphProto,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> tuple[list[Candidate], list[Skipped]]:
    """Return the gateable MatMuls of `graph` (top level only) and the refused ones with reasons.

    include/exclude: fnmatch patterns (or substrings) over node names. With include,
    only matching nodes are considered, whatever their role.
    """
    include = list(include or [])
    exclude = list(exclude or [])
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    aliases = _constant_aliases(graph, initializers) if any(_is_gemm(n) for n in graph.node) else {}
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for index, node in enumerate(graph.node):
        quantized = nbits.is_matmul_nbits(node)
        gemm = _is_gemm(node)
        if not quantized and not gemm and (node.op_type != "MatMul" or node.domain not in ("", "ai.onnx")):
            continue
        name = node_display_name(node)
        if LOWERED_MATMUL.search(name):
            skipped.append(Skipped(name, "already gated (standard-ops lowering)"))
            continue
        role = roles.classify(name)
        if include:
            if not _matches(name, include):
                continue
        elif role is None:
            reason = "LM head or embedding" if roles.is_excluded_by_name(name) else "not a decoder projection"
            skipped.append(Skipped(name, reason))
            continue
        if _matches(name, exclude):
            skipped.append(Skipped(name, "matches --exclude"))
            continue
        if quantized:
            source = nbits.read_source(node, initializers, graph_inputs)
            if isinstance(source, str):
                skipped.append(Skipped(name, source))
                continue
            candidates.append(Candidate(node_name=name, role=role, weight_name=source.b, k=source.k, n=source.n,
                                        dtype=source.scale_type, index=index, quantized=source))
            continue
        weight_name = node.input[1]
        weight = initializers.get(weight_name)
        if weight is None:
            skipped.append(Skipped(name, "weight is not a constant initializer"))
            continue
        if weight_name in graph_inputs:
            skipped.append(Skipped(name, "weight is also a graph input and may change at run time"))
            continue
        if len(weight.dims) != 2:
            skipped.append(Skipped(name, f"weight has rank {len(weight.dims)}, not 2"))
            continue
        if weight.data_type not in GATEABLE_TYPES:
            type_name = onnx.TensorProto.DataType.Name(weight.data_type)
            skipped.append(Skipped(name, f"weight type {type_name} is not float32, float16 or bfloat16"))
            continue
        bias = _gemm_bias(node, aliases) if gemm else ""
        refusal = _gemm_refusal(node, initializers, int(weight.dims[1]), bias) if gemm else None
        if refusal is not None:
            skipped.append(Skipped(name, refusal))
            continue
        candidates.append(
            Candidate(
                node_name=name,
                role=role,
                weight_name=weight_name,
                k=int(weight.dims[0]),
                n=int(weight.dims[1]),
                dtype=weight.data_type,
                index=index,
                bias=bias,
            )
        )
    return candidates, skipped


def load_weight(candidate: Candidate, initializers: dict[str, onnx.TensorProto], base_dir: str = "") -> np.ndarray:
    """A candidate's [K, N] weight: the initializer as stored, or a 4-bit weight dequantized to float32.

    base_dir: the model's folder, to read weights kept in external files.
    """
    if candidate.quantized is not None:
        return nbits.load_feature_major(candidate.quantized, initializers, base_dir).dequantize()
    return numpy_helper.to_array(initializers[candidate.weight_name], base_dir=base_dir)
