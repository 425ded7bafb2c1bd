"""WINA's tensor transformation: rotate the residual stream so that gated weights are row-orthogonal.

WINA's selection rule (keep the largest |x_i| * ||B[i, :]||) is optimal when the rows of
B ([K, N], ONNX layout; "columns" in the paper's W x notation) are orthogonal. A decoder
can be rewritten to compute the same function with that property for the weights that
read the residual stream (computational invariance, as in SliceGPT):

  * the scale of every RMSNorm is folded into the projections that read it, so the norm
    becomes rotation-invariant (x / rms(x) commutes with an orthogonal Q);
  * the residual stream entering block j is expressed in the basis Q_j, the left
    singular vectors of that block's key weight diag(w) B (k_proj for attention,
    gate_proj for the MLP, the fused qkv / gate_up where present): the block's readers
    become Q_j^T diag(w) B, whose rows are orthogonal for the key weight;
  * the block's writer (o_proj, down_proj) becomes W Q_j, so the residual sum stays in
    basis Q_j; the embedding table becomes E Q_0;
  * between blocks, the residual is moved from Q_{j-1} to Q_j by one added dense MatMul
    with S_j = Q_{j-1}^T Q_j (the "shortcut" rotations); the final norm's reader (the LM
    head) becomes Q_last^T diag(w) W_lm.

The added MatMuls are the cost of the transformation: (blocks - 1) d x d weights, all
read for every token. The transformed dense model equals the original up to float
rounding (new weights are computed in float64).

Supported graphs: RMSNorm written out in standard ops (as Optimum exports it: Pow,
ReduceMean, Add, Sqrt, Div/Reciprocal, Mul, then Mul by the scale) or as the
SimplifiedLayerNormalization contrib op, with the residual adds as plain Add nodes.
Run it before ONNX Runtime's transformer optimizer, which fuses the residual adds into
SkipSimplifiedLayerNormalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import schema
from ..errors import WinaError

from . import roles
from .result import PassResult

# Which reader of a block defines its basis, in order of preference (WINA's reference code).
_KEY_ROLES = ("k_proj", "qkv_proj", "gate_proj", "gate_up_proj")
# Ops that may read the residual stream besides the norm and the residual Add: they only
# look at its shape, which the rotation keeps.
_SHAPE_OPS = {"Shape", "Size"}
PASS_NAME = "rotate"


class TransformError(WinaError):
    """The graph does not have the structure the transformation needs."""


@dataclass
class RmsNorm:
    """One RMSNorm: the residual tensor it reads, its scale and its (scaled) output."""

    source: str  # tensor the norm reads (the residual, or a Cast of it)
    residual: str  # the residual tensor itself (source without a leading Cast)
    scale_name: str  # 1-D initializer of the scale
    scale_node: onnx.NodeProto  # node that applies the scale (Mul, or the fused norm)
    output: str  # normalized and scaled output, read by the projections


@dataclass(frozen=True)
class RotatedWeight:
    """A constant the rotation replaced: the node that reads it and the new initializer."""

    node_name: str
    weight_name: str


def rotation_facts(blocks: int, hidden_size: int, shortcut_matmuls: int, added_weight_bytes: int) -> dict:
    """The pass-wide facts of a rotation (its result's details, recorded in the model's metadata)."""
    return {
        "method": "residual rotation from the SVD of each block's key weight (k_proj / gate_proj)",
        "blocks": blocks,
        "hidden_size": hidden_size,
        "shortcut_matmuls": shortcut_matmuls,
        "added_weight_bytes_per_token": added_weight_bytes,
    }


def _headline(facts: dict) -> str:
    d = facts["hidden_size"]
    return (f"rotated the residual stream of {facts['blocks']} blocks (hidden size {d}); "
            f"added {facts['shortcut_matmuls']} dense {d}x{d} MatMuls "
            f"({facts['added_weight_bytes_per_token'] / 2**20:.1f} MiB read per token)")


class _Graph:
    """Producer/consumer indexes over a GraphProto, with initializer access."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def array(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor: an initializer, possibly behind Identity nodes."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = self.producer.get(name)
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def op(self, tensor: str) -> str | None:
        node = self.producer.get(tensor)
        return node.op_type if node is not None else None

    def skip_cast(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        return node.input[0] if node is not None and node.op_type == "Cast" else tensor

    def constant_matrix(self, tensor: str) -> np.ndarray | None:
        """A 2-D constant: an initializer, or a Transpose of one (tied LM heads)."""
        value = self.array(tensor)
        if value is not None:
            return value if value.ndim == 2 else None
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Transpose":
            source = self.array(node.input[0])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            if source is not None and source.ndim == 2 and perm == [1, 0]:
                return source.T
        return None


def _match_standard_rms_norm(g: _Graph, node: onnx.NodeProto) -> RmsNorm | None:
    """Mul(scale, Cast?(Mul(x, 1 / Sqrt(ReduceMean(Pow(x, 2)) + eps)))) -> RmsNorm."""
    if node.op_type != "Mul":
        return None
    scale_index = next((i for i, t in enumerate(node.input) if (a := g.array(t)) is not None and a.ndim == 1), None)
    if scale_index is None:
        return None
    normalized = g.skip_cast(node.input[1 - scale_index])
    inner = g.producer.get(normalized)
    if inner is None or inner.op_type != "Mul":
        return None
    for x, inv in (inner.input, reversed(inner.input)):
        if _is_inverse_rms_of(g, inv, x):
            return RmsNorm(source=x, residual=g.skip_cast(x), scale_name=node.input[scale_index],
                           scale_node=node, output=node.output[0])
    return None


def _is_inverse_rms_of(g: _Graph, tensor: str, x: str) -> bool:
    """Whether `tensor` is 1 / sqrt(mean(x^2) + eps) (or rsqrt written as Div/Reciprocal)."""
    node = g.producer.get(tensor)
    if node is None:
        return False
    if node.op_type == "Div":
        node = g.producer.get(node.input[1])
    elif node.op_type == "Reciprocal":
        node = g.producer.get(node.input[0])
    else:
        return False
    if node is None or node.op_type != "Sqrt":
        return False
    node = g.producer.get(node.input[0])
    if node is not None and node.op_type == "Add":
        node = next((g.producer[t] for t in node.input if g.op(t) == "ReduceMean"), None)
    if node is None or node.op_type != "ReduceMean":
        return False
    power = g.producer.get(node.input[0])
    return power is not None and power.op_type == "Pow" and power.input[0] == x


def find_rms_norms(graph: onnx.GraphProto) -> list[RmsNorm]:
    """The RMSNorms of the graph in topological order (Optimum's pattern or the fused op)."""
    g = _Graph(graph)
    norms: list[RmsNorm] = []
    for node in graph.node:
        if node.op_type == "SkipSimplifiedLayerNormalization":
            raise TransformError(
                "the model's residual adds are fused into SkipSimplifiedLayerNormalization; "
                "apply --transform to the model before ONNX Runtime's transformer optimizer"
            )
        if node.op_type == "SimplifiedLayerNormalization" and g.array(node.input[1]) is not None:
            norms.append(RmsNorm(source=node.input[0], residual=g.skip_cast(node.input[0]),
                                 scale_name=node.input[1], scale_node=node, output=node.output[0]))
            continue
        match = _match_standard_rms_norm(g, node)
        if match is not None:
            norms.append(match)
    return norms


def _readers(g: _Graph, norm: RmsNorm) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """The MatMuls reading the norm's output, with their constant weights."""
    readers = []
    for node in g.consumers.get(norm.output, []):
        if node.op_type in _SHAPE_OPS:
            continue
        weight = g.constant_matrix(node.input[1]) if node.op_type == "MatMul" and node.input[0] == norm.output else None
        if weight is None:
            raise TransformError(
                f"the output of the norm {norm.scale_node.name or norm.output} feeds {node.op_type} "
                f"{node.name!r}, not a MatMul with a constant 2-D weight; the transformation cannot fold it"
            )
        readers.append((node, weight))
    if not readers:
        raise TransformError(f"nothing reads the norm {norm.scale_node.name or norm.output}")
    return readers


def _basis(readers: list[tuple[onnx.NodeProto, np.ndarray]], scale: np.ndarray) -> np.ndarray:
    """Q: the left singular vectors of diag(scale) B_key, in float64 ([d, d])."""
    by_role = {}
    for node, weight in readers:
        role = roles.classify(node.name or node.output[0])
        if role is not None:
            by_role.setdefault(role.kind, weight)
    key = next((by_role[r] for r in _KEY_ROLES if r in by_role), None)
    if key is None:  # unknown roles: make the concatenation of all readers row-orthogonal
        key = np.concatenate([w for _, w in readers], axis=1)
    scaled = scale[:, None] * key.astype(np.float64)
    # The left singular vectors of M are the eigenvectors of M M^T ([d, d]): much cheaper
    # than a full SVD when N > d. Ordered by decreasing singular value, as an SVD would.
    _, vectors = np.linalg.eigh(scaled @ scaled.T)
    return vectors[:, ::-1]


def _writer(g: _Graph, residual_sum: str, previous: RmsNorm) -> tuple[onnx.NodeProto, str | None]:
    """For `residual_sum` = previous residual + block output, the block's output MatMul and bias."""
    add = g.producer.get(residual_sum)
    if add is None or add.op_type != "Add":
        raise TransformError(f"the residual {residual_sum!r} is not produced by an Add")
    inputs = list(add.input)
    skip = {previous.source, previous.residual}
    others = [t for t in inputs if t not in skip]
    if len(others) != 1 or len(inputs) != 2:
        raise TransformError(f"the residual Add {add.name!r} does not add a block output to the previous residual")
    block_out, bias = others[0], None
    node = g.producer.get(block_out)
    if node is not None and node.op_type == "Add":
        bias = next((t for t in node.input if (a := g.array(t)) is not None and a.ndim == 1), None)
        if bias is not None:
            node = g.producer.get(next(t for t in node.input if t != bias))
    if node is None or node.op_type != "MatMul" or g.array(node.input[1]) is None:
        raise TransformError(f"the block output added by {add.name!r} is not a MatMul with a constant weight")
    return node, bias


def _check_residual_consumers(g: _Graph, norm: RmsNorm, residual_add: onnx.NodeProto | None) -> None:
    """Only the norm, the next residual Add and shape ops may read the residual stream."""
    allowed_ids = {id(residual_add)} if residual_add is not None else set()
    for tensor in {norm.residual, norm.source}:
        for node in g.consumers.get(tensor, []):
            if id(node) in allowed_ids or node.op_type in _SHAPE_OPS:
                continue
            if tensor == norm.residual and node.output and node.output[0] == norm.source:
                continue  # the Cast into the norm
            if node.op_type in ("Pow", "Mul", "SimplifiedLayerNormalization"):
                continue  # the norm itself (rotation-invariant sum of squares, then scaling)
            raise TransformError(
                f"the residual stream {tensor!r} is read by {node.op_type} {node.name!r}, "
                "which the rotation would change"
            )
        if tensor in g.outputs:
            raise TransformError(f"the residual stream {tensor!r} is a graph output")


def rotate_residual_stream(model: onnx.ModelProto) -> PassResult[RotatedWeight]:
    """Apply the tensor transformation to `model` in place (see the module docstring).

    The result's records are the replaced weights; its details the sizes and the cost
    (rotation_facts), also written to the model's metadata (schema.META_TRANSFORM).
    """
    graph = model.graph
    if any(p.key == schema.META_TRANSFORM for p in model.metadata_props):
        raise TransformError("the model was already transformed; transform the original model")
    norms = find_rms_norms(graph)
    if len(norms) < 2:
        raise TransformError(f"found {len(norms)} RMSNorm(s); the transformation needs a decoder with RMSNorms")
    g = _Graph(graph)
    first = g.producer.get(norms[0].residual)
    if first is None or first.op_type != "Gather" or g.array(first.input[0]) is None:
        raise TransformError("the first norm does not read an embedding lookup (Gather of a constant table)")
    d = int(g.array(norms[0].scale_name).shape[0])
    records: list[RotatedWeight] = []
    shortcuts, added_bytes = 0, 0
    new_inits: list[onnx.TensorProto] = []
    inserted: dict[str, onnx.NodeProto] = {}  # residual tensor -> shortcut MatMul after its producer
    renames: dict[tuple[int, int], str] = {}  # (id(node), input index) -> new tensor

    def replace_weight(node: onnx.NodeProto, index: int, value: np.ndarray, dtype: np.dtype) -> None:
        name = f"{node.input[index]}_wina_rotated_{len(new_inits)}"
        new_inits.append(numpy_helper.from_array(value.astype(dtype), name))
        renames[(id(node), index)] = name
        records.append(RotatedWeight(node.name, name))

    bases: list[np.ndarray] = []
    for j, norm in enumerate(norms):
        scale = g.array(norm.scale_name).astype(np.float64)
        if scale.shape != (d,):
            raise TransformError(f"norm scale {norm.scale_name!r} has shape {scale.shape}, expected ({d},)")
        readers = _readers(g, norm)
        last = j == len(norms) - 1
        q = bases[-1] if last else _basis(readers, scale)
        for node, weight in readers:
            replace_weight(node, 1, q.T @ (scale[:, None] * weight.astype(np.float64)), weight.dtype)
        # The scale now lives in the readers; the norm multiplies by exactly one.
        ones = numpy_helper.from_array(np.ones(d, dtype=g.array(norm.scale_name).dtype), f"{norm.scale_name}_wina_folded")
        new_inits.append(ones)
        index = list(norm.scale_node.input).index(norm.scale_name)
        renames[(id(norm.scale_node), index)] = ones.name
        if j == 0:
            table = g.array(first.input[0])
            replace_weight(first, 0, table.astype(np.float64) @ q, table.dtype)
        else:
            previous = norms[j - 1]
            writer, bias = _writer(g, norm.residual, previous)
            q_prev = bases[-1]
            weight = g.array(writer.input[1])
            replace_weight(writer, 1, weight.astype(np.float64) @ q_prev, weight.dtype)
            if bias is not None:
                bias_node = next(n for n in g.consumers[writer.output[0]] if n.op_type == "Add")
                b = g.array(bias)
                replace_weight(bias_node, list(bias_node.input).index(bias), b.astype(np.float64) @ q_prev, b.dtype)
            _check_residual_consumers(g, previous, g.producer[norm.residual])
            if not last:
                shortcut = f"{norm.residual}_wina_shortcut"
                s_name = f"{norm.scale_name}_wina_shortcut_rotation"
                new_inits.append(numpy_helper.from_array((q_prev.T @ q).astype(weight.dtype), s_name))
                prefix = (norm.scale_node.name or norm.output).rsplit("/", 1)[0]
                inserted[norm.residual] = helper.make_node(
                    "MatMul", [norm.residual, s_name], [shortcut], name=f"{prefix}/wina_shortcut/MatMul")
                shortcuts += 1
                added_bytes += d * d * weight.dtype.itemsize
        if not last:
            bases.append(q)
    _check_residual_consumers(g, norms[-1], None)
    _rewire(graph, renames, inserted)
    graph.initializer.extend(new_inits)
    _drop_unused(graph)
    facts = rotation_facts(len(norms) - 1, d, shortcuts, added_bytes)
    model.metadata_props.add(key=schema.META_TRANSFORM, value=_json(facts))
    return PassResult(PASS_NAME, records=records, headline=_headline(facts), details=facts)


def _rewire(graph: onnx.GraphProto, renames: dict[tuple[int, int], str], inserted: dict[str, onnx.NodeProto]) -> None:
    """Point inputs at the new weights; read each rotated residual through its shortcut MatMul."""
    shortcut_of = {residual: node.output[0] for residual, node in inserted.items()}
    nodes: list[onnx.NodeProto] = []
    by_node: dict[int, list[tuple[int, str]]] = {}
    for (node_id, index), name in renames.items():
        by_node.setdefault(node_id, []).append((index, name))
    for node in graph.node:
        for index, name in by_node.get(id(node), []):
            node.input[index] = name
        for i, name in enumerate(node.input):
            if name in shortcut_of:
                node.input[i] = shortcut_of[name]
        nodes.append(node)
        for out in node.output:
            if out in inserted:
                nodes.append(inserted[out])
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (a tied head's Transpose) and dead initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.output and not any(o in used for o in n.output)
                and n.op_type in ("Transpose", "Identity", "Cast")]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    _used_in_subgraphs(graph, used)
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _used_in_subgraphs(graph: onnx.GraphProto, used: set[str]) -> None:
    for node in graph.node:
        for attr in node.attribute:
            for sub in list(attr.g.node if attr.HasField("g") else []) + [n for s in attr.graphs for n in s.node]:
                used.update(sub.input)


def _json(value: dict) -> str:
    import json

    return json.dumps(value)
