"""Group the threshold gates that read the same input into one `WinaSparseMatMulGroup`.

q/k/v read the same normalised hidden state, and so do gate/up. After the WINA pass each is
its own `WinaSparseMatMul`; this pass replaces each such set by one node that computes
exactly the same outputs (each weight keeps its own score scale, threshold and bias) with
one scoring pass and, on CUDA, one launch over all the weights' columns.

Only threshold gates whose weight, score scale, threshold and bias are initializers are
grouped (top-k gates and anything computed at run time stay as they are). The weights are
not copied: the group node reads the same initializers. Run it last, after any threshold
refinement, since it replaces the per-node threshold initializers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import schema
from ..gates import read_gate

from .names import NameSpace
from .result import PassResult



PASS_NAME = "group_gates"


@dataclass(frozen=True)
class GroupRecord:
    """One group node and the names of the WinaSparseMatMul nodes it replaced."""

    node_name: str
    members: list[str]


def groups_of(result: PassResult[GroupRecord]) -> list[list[str]]:
    """The member names of each group node (as optimize records them in the metadata)."""
    return [list(r.members) for r in result.records]


def _headline(records: list[GroupRecord]) -> str:
    if not records:
        return "no gates share an input: nothing grouped"
    sizes = sorted({len(r.members) for r in records})
    return (f"{sum(len(r.members) for r in records)} gates in {len(records)} group node(s) "
            f"(sizes {', '.join(map(str, sizes))})")


@dataclass(frozen=True)
class _Gate:
    index: int
    node: onnx.NodeProto
    weight: str
    scale: str
    threshold: str
    bias: str  # "" when absent


def _groupable(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> _Gate | None:
    gate = read_gate(node)
    if gate is None or gate.op_type != schema.OP_TYPE or gate.gating != schema.GATING_THRESHOLD:
        return None
    weight, scale, threshold, bias = gate.weights[0], gate.score_scale, gate.threshold, gate.bias
    if gate.k or not all(n in inits for n in (weight, scale, threshold)):
        return None
    if bias and bias not in inits:
        return None
    if len(inits[weight].dims) != 2 or int(np.prod(inits[threshold].dims, dtype=np.int64)) != 1:
        return None
    return _Gate(0, node, weight, scale, threshold, bias)


def _common_prefix(names: list[str]) -> str:
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else prefix


def group_shared_inputs(model: onnx.ModelProto, *, max_weights: int = schema.GROUP_MAX_WEIGHTS,
                        base_dir: str = "") -> PassResult[GroupRecord]:
    """Replace, in place, every set of >= 2 groupable gates reading the same X by one group node.

    Gates are grouped by (X, weight element type, whether they have a bias), in graph order,
    at most `max_weights` to a node. The group node takes the place of the first gate of its
    set: it needs only X and initializers, so the graph stays topologically sorted.
    base_dir: the model's folder, when it was loaded without its external data (the score
    scales and thresholds are then read from there; the weights are never read).
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    sets: dict[tuple, list[_Gate]] = {}
    for index, node in enumerate(graph.node):
        gate = _groupable(node, inits)
        if gate is None:
            continue
        key = (node.input[0], inits[gate.weight].data_type, bool(gate.bias))
        sets.setdefault(key, []).append(_Gate(index, node, gate.weight, gate.scale, gate.threshold, gate.bias))
    chunks = [
        members[i:i + max_weights]
        for members in sets.values()
        for i in range(0, len(members), max_weights)
    ]
    chunks = [c for c in chunks if len(c) >= 2]
    report: PassResult[GroupRecord] = PassResult(PASS_NAME, headline=_headline([]))
    if not chunks:
        return report

    names = NameSpace(graph)
    replaced: set[int] = set()
    placed: dict[int, onnx.NodeProto] = {}
    for chunk in chunks:
        member_names = [g.node.name for g in chunk]
        base = _common_prefix(member_names) or (chunk[0].node.name + "/")
        scale = np.stack([numpy_helper.to_array(inits[g.scale], base_dir).astype(np.float32) for g in chunk])
        threshold = np.array([numpy_helper.to_array(inits[g.threshold], base_dir).reshape(()) for g in chunk],
                             dtype=np.float32)
        scale_name = names.fresh(f"{base}wina_group_score_scale")
        threshold_name = names.fresh(f"{base}wina_group_threshold")
        graph.initializer.append(numpy_helper.from_array(scale, scale_name))
        graph.initializer.append(numpy_helper.from_array(threshold, threshold_name))
        weights = [g.weight for g in chunk] + [g.bias for g in chunk if g.bias]
        group_name = names.fresh(f"{base}WinaSparseMatMulGroup")
        node = helper.make_node(
            schema.GROUP_OP_TYPE,
            [chunk[0].node.input[0], scale_name, threshold_name, *weights],
            [g.node.output[0] for g in chunk],
            name=group_name,
            domain=schema.DOMAIN,
        )
        node.attribute.append(helper.make_attribute(schema.GROUP_ATTR_MEMBERS, member_names))
        placed[chunk[0].index] = node
        replaced.update(g.index for g in chunk)
        report.records.append(GroupRecord(group_name, member_names))

    new_nodes = []
    for index, node in enumerate(graph.node):
        if index in placed:
            new_nodes.append(placed[index])
        elif index not in replaced:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph, {g.scale for c in chunks for g in c} | {g.threshold for c in chunks for g in c})
    report.headline = _headline(report.records)
    return report


def _drop_unused_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the initializers in `candidates` that no node (or graph output) reads any more."""
    used = _inputs_read(graph) | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name not in candidates or init.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _inputs_read(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of `graph` or of its subgraphs reads."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _inputs_read(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    names |= _inputs_read(sub)
    return names
