"""Random ONNX graphs that put the WINA pass in awkward places (tests/test_pass_fuzz.py).

A graph is a chain of blocks on a hidden state h [..., D] (rank 1 to 4). Each block is
drawn from:

  projection   MatMul(h, W) named like a decoder projection, W [D, D'] a constant
  shared       one W read by two projections (q_proj and k_proj) whose outputs are added
  other_use    a projection whose W is also read by another op (ReduceSum of W)
  subgraph     an If whose branches hold projections (a weight of the outer graph and one
               of the branch's own); the pass works on the top graph only
  refused      MatMuls the pass must leave alone: 3-D weight, weight that is a graph
               input, LM head, a weight computed by another node
  unnamed      a projection with no node name
  activation   Relu / Mul / residual Add between blocks

Weights are random, scaled so activations stay near 1 whatever the depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
BLOCKS = ("projection", "shared", "other_use", "subgraph", "refused", "unnamed", "activation")
ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class _Builder:
    rng: np.random.Generator
    dtype: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    counter: int = 0
    gateable: int = 0  # projections the pass should gate
    rank: int = 1  # rank of the hidden state

    def value_info(self, name: str, width: int) -> onnx.ValueInfoProto:
        """Type of a hidden state: the builder's rank, unknown leading dims, last dim `width`."""
        return helper.make_tensor_value_info(name, self.dtype, [None] * (self.rank - 1) + [width])

    @property
    def np_dtype(self) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.dtype)

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def weight(self, k: int, n: int, name: str | None = None) -> str:
        name = name or self.fresh("W")
        w = (self.rng.standard_normal((k, n)) / np.sqrt(k)).astype(self.np_dtype)
        self.inits.append(numpy_helper.from_array(w, name))
        return name

    def proj_name(self, layer: int, role: str | None = None) -> str:
        role = role or str(self.rng.choice(ROLES))
        return f"/model/layers.{layer}/{'mlp' if 'proj' in role and role[0] in 'gud' else 'self_attn'}/{role}/MatMul"


def _block(b: _Builder, kind: str, h: str, d: int, layer: int) -> tuple[str, int]:
    """Append one block reading h [..., d]; return its output and width."""
    rng = b.rng
    if kind == "activation":
        out = b.fresh("act")
        op = str(rng.choice(["Relu", "Mul", "Add"]))
        b.nodes.append(helper.make_node(op, [h] if op == "Relu" else [h, h], [out]))
        if op != "Relu":  # keep the scale bounded
            scaled = b.fresh("half")
            half = b.fresh("c")
            b.inits.append(numpy_helper.from_array(np.array(0.5, b.np_dtype), half))
            b.nodes.append(helper.make_node("Mul", [out, half], [scaled]))
            out = scaled
        return out, d
    n = int(rng.integers(1, 24))
    out = b.fresh("y")
    if kind == "projection":
        b.nodes.append(helper.make_node("MatMul", [h, b.weight(d, n)], [out], name=b.proj_name(layer)))
        b.gateable += 1
        return out, n
    if kind == "unnamed":
        b.nodes.append(helper.make_node("MatMul", [h, b.weight(d, n)], [out]))
        # An unnamed node is known by its output name, which is no projection name: refused.
        return out, n
    if kind == "shared":
        w = b.weight(d, n)
        a1, a2 = b.fresh("q"), b.fresh("k")
        b.nodes.append(helper.make_node("MatMul", [h, w], [a1], name=b.proj_name(layer, "q_proj")))
        b.nodes.append(helper.make_node("MatMul", [h, w], [a2], name=b.proj_name(layer, "k_proj")))
        b.nodes.append(helper.make_node("Add", [a1, a2], [out]))
        b.gateable += 2
        return out, n
    if kind == "other_use":
        w = b.weight(d, n)
        mm, total, axes = b.fresh("mm"), b.fresh("wsum"), b.fresh("axes")
        b.inits.append(numpy_helper.from_array(np.array([0], np.int64), axes))
        b.nodes.append(helper.make_node("MatMul", [h, w], [mm], name=b.proj_name(layer)))
        b.nodes.append(helper.make_node("ReduceSum", [w, axes], [total], keepdims=0))  # [n]
        b.nodes.append(helper.make_node("Add", [mm, total], [out]))
        b.gateable += 1
        return out, n
    if kind == "subgraph":
        cond = b.fresh("cond")
        b.inits.append(numpy_helper.from_array(np.array(bool(rng.integers(0, 2))), cond))
        outer_w = b.weight(d, n)
        branches = []
        for branch in ("then", "else"):
            inner_w = b.fresh(f"{branch}_W")
            wv = (rng.standard_normal((d, n)) / np.sqrt(d)).astype(b.np_dtype)
            branch_out = b.fresh(f"{branch}_out")
            w_used = outer_w if branch == "then" else inner_w
            graph = helper.make_graph(
                [helper.make_node("MatMul", [h, w_used], [branch_out], name=b.proj_name(layer))],
                b.fresh(branch), [], [b.value_info(branch_out, n)],
                [numpy_helper.from_array(wv, inner_w)] if branch == "else" else [],
            )
            branches.append(graph)
        b.nodes.append(helper.make_node("If", [cond], [out], then_branch=branches[0], else_branch=branches[1]))
        return out, n
    # refused: one of the MatMuls the pass must never gate.
    why = str(rng.choice(["rank3", "graph_input", "lm_head", "computed"]))
    if why == "rank3":
        w = b.fresh("W3")
        b.inits.append(numpy_helper.from_array((rng.standard_normal((1, d, n)) / np.sqrt(d)).astype(b.np_dtype), w))
        mm = b.fresh("b3")
        b.nodes.append(helper.make_node("MatMul", [h, w], [mm], name=b.proj_name(layer)))
        b.nodes.append(helper.make_node("Identity", [mm], [out]))
        b.rank = max(b.rank, 2) if b.rank == 1 else max(b.rank, 3)  # broadcast over W's leading 1
        return out, n
    if why == "graph_input":
        w = b.weight(d, n)  # an initializer that is also a graph input (overridable)
        b.inputs.append(helper.make_tensor_value_info(w, b.dtype, [d, n]))
    elif why == "computed":
        w0 = b.weight(d, n)
        w = b.fresh("Wneg")
        b.nodes.append(helper.make_node("Neg", [w0], [w]))
    else:
        w = b.weight(d, n)
    name = "/lm_head/MatMul" if why == "lm_head" else b.proj_name(layer)
    b.nodes.append(helper.make_node("MatMul", [h, w], [out], name=name))
    return out, n


def random_graph(seed: int, *, dtype: int = TensorProto.FLOAT, blocks: int | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray], int]:
    """A random model, its feeds, and how many MatMuls the pass should gate."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, dtype)
    rank = int(rng.integers(1, 5))
    d = int(rng.integers(1, 20))
    lead = [int(v) for v in rng.integers(0 if rank > 1 and rng.random() < 0.1 else 1, 4, size=rank - 1)]
    x = (rng.standard_normal((*lead, d))).astype(b.np_dtype)
    b.inputs.append(helper.make_tensor_value_info("x", dtype, [f"d{i}" for i in range(rank - 1)] + [d]))
    b.feeds["x"] = x
    b.rank = rank
    h, width = "x", d
    outputs: dict[str, onnx.ValueInfoProto] = {}
    for layer in range(blocks or int(rng.integers(1, 7))):
        kind = str(rng.choice(BLOCKS))
        h, width = _block(b, kind, h, width, layer)
        if rng.random() < 0.3:  # some intermediate values are graph outputs too
            outputs[h] = b.value_info(h, width)
    outputs[h] = b.value_info(h, width)
    graph = helper.make_graph(b.nodes, f"fuzz_{seed}", b.inputs, list(outputs.values()), b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model, b.feeds, b.gateable

