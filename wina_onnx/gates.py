"""Read the `ai.wina` gate nodes of a graph back: one reader for the three ops.

`read_gate(node)` gives a `Gate`: the op type, the names of the node's inputs by role
(X, weights, score_scale, threshold or k, biases, and for 4-bit weights the scales and
zero points), its attributes and, for a WinaSparseMatMulGroup, the names of the gates it
replaced. The input positions come from schema.py, so nothing else needs them.

A WinaSparseMatMulGroup is one Gate with S weights (S = its number of outputs): its
score_scale is [S, K] and its threshold [S]; `members` name the S gates it replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import onnx
from onnx import helper

from . import schema

GATE_OP_TYPES = (schema.OP_TYPE, schema.GROUP_OP_TYPE, schema.NBITS_OP_TYPE)


def is_gate(node: onnx.NodeProto) -> bool:
    """Whether `node` is one of the ai.wina gate ops."""
    return node.domain == schema.DOMAIN and node.op_type in GATE_OP_TYPES


@dataclass(frozen=True)
class Gate:
    """One gate node, its inputs named by role ("" where an optional input is absent)."""

    node: onnx.NodeProto
    x: str
    weights: tuple[str, ...]  # B [K, N] (the uint8 codes for 4-bit weights); a group: one per weight
    score_scale: str  # float [K]; a group: [S, K]
    threshold: str = ""  # float scalar, "" under top-k gating; a group: [S]
    k: str = ""  # int64 scalar, "" under threshold gating
    biases: tuple[str, ...] = ()  # one per weight ("" for none); () when the node has no bias
    scales: str = ""  # 4-bit weights: the block scales
    zero_points: str = ""  # 4-bit weights: the zero points ("" for the default, 8)
    attributes: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()  # a group: the names of the gates it replaced

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def name(self) -> str:
        """The node's name, or its first output's name when it has none."""
        return self.node.name or (self.node.output[0] if self.node.output else "<unnamed>")

    @property
    def is_group(self) -> bool:
        return self.node.op_type == schema.GROUP_OP_TYPE

    @property
    def is_nbits(self) -> bool:
        return self.node.op_type == schema.NBITS_OP_TYPE

    @property
    def gating(self) -> str:
        """GATING_THRESHOLD or GATING_TOPK ("" where the node lacks the attribute); a group
        always gates by threshold."""
        if self.is_group:
            return schema.GATING_THRESHOLD
        return self.attributes.get(schema.ATTR_GATING, "")

    @property
    def bias(self) -> str:
        """The bias of a single-weight gate ("" for none)."""
        return self.biases[0] if self.biases else ""

    def member_names(self) -> list[str]:
        """One name per weight: the replaced gates' names for a group (`<name>[s]` where the
        node does not record them), the node's own name otherwise."""
        if not self.is_group:
            return [self.name]
        return [self.members[s] if s < len(self.members) else f"{self.name}[{s}]" for s in range(len(self.weights))]

    def weight_inputs(self) -> tuple[str, ...]:
        """The inputs that hold weight bytes: the weights, and for 4-bit ones their scales and zero points."""
        if self.is_nbits:
            return tuple(n for n in (*self.weights, self.scales, self.zero_points) if n)
        return self.weights

    def activation_type(self, elem_types: dict[str, int]) -> int:
        """Element type of X: the weights' (the scales' for 4-bit weights), from `elem_types`
        (tensor name -> TensorProto data type, e.g. of the initializers)."""
        typed = self.scales if self.is_nbits else self.weights[0]
        return elem_types.get(typed, onnx.TensorProto.FLOAT)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attribute.name] = value
    return values


def _padded(node: onnx.NodeProto, count: int) -> list[str]:
    return list(node.input) + [""] * (count - len(node.input))


def read_gate(node: onnx.NodeProto) -> Gate | None:
    """The Gate of `node`, or None when it is not an ai.wina gate op."""
    if not is_gate(node):
        return None
    attributes = _attributes(node)
    if node.op_type == schema.OP_TYPE:
        inputs = _padded(node, schema.NUM_INPUTS)
        bias = inputs[schema.INPUT_BIAS]
        return Gate(node, x=inputs[schema.INPUT_X], weights=(inputs[schema.INPUT_B],),
                    score_scale=inputs[schema.INPUT_SCORE_SCALE], threshold=inputs[schema.INPUT_THRESHOLD],
                    k=inputs[schema.INPUT_K], biases=(bias,) if bias else (), attributes=attributes)
    if node.op_type == schema.NBITS_OP_TYPE:
        inputs = _padded(node, schema.NBITS_NUM_INPUTS)
        bias = inputs[schema.NBITS_INPUT_BIAS]
        return Gate(node, x=inputs[schema.NBITS_INPUT_X], weights=(inputs[schema.NBITS_INPUT_B],),
                    score_scale=inputs[schema.NBITS_INPUT_SCORE_SCALE],
                    threshold=inputs[schema.NBITS_INPUT_THRESHOLD], k=inputs[schema.NBITS_INPUT_K],
                    biases=(bias,) if bias else (), scales=inputs[schema.NBITS_INPUT_SCALES],
                    zero_points=inputs[schema.NBITS_INPUT_ZERO_POINTS], attributes=attributes)
    count = len(node.output)  # the group: one output per weight, then optionally one bias per weight
    first = schema.GROUP_FIRST_WEIGHT
    biases = tuple(node.input[first + count:first + 2 * count])
    return Gate(node, x=node.input[schema.GROUP_INPUT_X], weights=tuple(node.input[first:first + count]),
                score_scale=node.input[schema.GROUP_INPUT_SCORE_SCALE],
                threshold=node.input[schema.GROUP_INPUT_THRESHOLD], biases=biases, attributes=attributes,
                members=tuple(attributes.get(schema.GROUP_ATTR_MEMBERS, ())))


def read_gates(nodes: Iterable[onnx.NodeProto]) -> list[Gate]:
    """The Gate of every gate node among `nodes` (e.g. a graph's), in order."""
    return [gate for gate in map(read_gate, nodes) if gate is not None]
