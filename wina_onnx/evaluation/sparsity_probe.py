"""Measure the sparsity an optimized model actually applies on some text.

Top-k gates mask exactly K - k features per token. Threshold gates mask a fraction that
depends on the text; this runs the model with the input of every WinaSparseMatMul
exposed (and of every WinaSparseMatMulGroup, per weight, and WinaSparseMatMulNBits) and counts, per gate, the scores at or below its threshold (the op keeps a
feature when its score is strictly above; a NaN score counts as +inf and is kept).
The model-level figure weights each gate by its weight bytes, which is what a decode
step skips reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import reference, schema
from ..modelio import load_model


@dataclass(frozen=True)
class GateProbe:
    """One gate: its input tensor, score scale, threshold or k, and weight bytes."""

    node_name: str
    x: str
    scale: np.ndarray
    threshold: float | None
    keep: int | None
    weight_bytes: int


def _is_gate(node: onnx.NodeProto) -> bool:
    return node.domain == schema.DOMAIN and node.op_type in (schema.OP_TYPE, schema.GROUP_OP_TYPE,
                                                             schema.NBITS_OP_TYPE)


def _item_bytes(weight: onnx.TensorProto) -> int:
    return 4 if weight.data_type == onnx.TensorProto.FLOAT else 2


def _nbits_gate(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> GateProbe:
    """A WinaSparseMatMulNBits gate; its weight bytes are those of its codes, scales and zero points."""
    inputs = list(node.input) + [""] * (schema.NBITS_NUM_INPUTS - len(node.input))
    scale = numpy_helper.to_array(inits[inputs[schema.NBITS_INPUT_SCORE_SCALE]]).astype(np.float32)
    threshold = keep = None
    if inputs[schema.NBITS_INPUT_THRESHOLD]:
        threshold = float(numpy_helper.to_array(inits[inputs[schema.NBITS_INPUT_THRESHOLD]]).reshape(-1)[0])
    if inputs[schema.NBITS_INPUT_K]:
        keep = int(numpy_helper.to_array(inits[inputs[schema.NBITS_INPUT_K]]).reshape(-1)[0])
    weight_bytes = 0
    for index in (schema.NBITS_INPUT_B, schema.NBITS_INPUT_SCALES, schema.NBITS_INPUT_ZERO_POINTS):
        if inputs[index]:
            tensor = inits[inputs[index]]
            item = 1 if tensor.data_type == onnx.TensorProto.UINT8 else _item_bytes(tensor)
            weight_bytes += int(np.prod(tensor.dims)) * item
    return GateProbe(node.name, node.input[0], scale, threshold, keep, weight_bytes)


def _group_gates(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[GateProbe]:
    """One probe per weight of a WinaSparseMatMulGroup, named after the gate it replaced."""
    scales = numpy_helper.to_array(inits[node.input[schema.GROUP_INPUT_SCORE_SCALE]]).astype(np.float32)
    thresholds = numpy_helper.to_array(inits[node.input[schema.GROUP_INPUT_THRESHOLD]]).reshape(-1)
    members = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "members"), [])
    probes = []
    for s in range(scales.shape[0]):
        weight = inits[node.input[schema.GROUP_FIRST_WEIGHT + s]]
        name = members[s].decode() if s < len(members) else f"{node.name}[{s}]"
        probes.append(GateProbe(name, node.input[0], scales[s], float(thresholds[s]), None,
                                int(np.prod(weight.dims)) * _item_bytes(weight)))
    return probes


def _gates(model: onnx.ModelProto) -> list[GateProbe]:
    inits = {init.name: init for init in model.graph.initializer}
    probes = []
    for node in model.graph.node:
        if not _is_gate(node):
            continue
        if node.op_type == schema.GROUP_OP_TYPE:
            probes.extend(_group_gates(node, inits))
            continue
        if node.op_type == schema.NBITS_OP_TYPE:
            probes.append(_nbits_gate(node, inits))
            continue
        weight = inits[node.input[1]]
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        threshold = keep = None
        if len(node.input) > 3 and node.input[3]:
            threshold = float(numpy_helper.to_array(inits[node.input[3]]).reshape(-1)[0])
        if len(node.input) > 4 and node.input[4]:
            keep = int(numpy_helper.to_array(inits[node.input[4]]).reshape(-1)[0])
        probes.append(GateProbe(node.name, node.input[0], scale, threshold, keep,
                                int(np.prod(weight.dims)) * _item_bytes(weight)))
    return probes


def measure_sparsity(model_path: str | Path, token_ids: np.ndarray, *, windows: int = 2, window: int = 512,
                     threads: int | None = None) -> dict:
    """Fraction of features masked per gate and weighted by weight bytes, over `windows` windows.

    Returns {"weighted": float, "mean": float, "gates": {node: fraction}, "tokens": int}.
    """
    import onnxruntime as ort

    from ..library import register_library
    from ..passes.nbits import activation_type
    from ..runtime.session import CausalLM, session_options

    model = load_model(Path(model_path))
    probes = _gates(model)
    if not probes:
        raise ValueError(f"{model_path} has no {schema.OP_TYPE} node")
    existing = {o.name for o in model.graph.output}
    elem_types = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if _is_gate(node) and node.input[0] not in existing:
            if node.op_type == schema.GROUP_OP_TYPE:
                elem = elem_types[node.input[schema.GROUP_FIRST_WEIGHT]]  # x has the weight's type
            else:  # the weight's type, or the scales' for 4-bit weights
                elem = activation_type(node, elem_types)
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], elem, None))
            existing.add(node.input[0])
    options = session_options(threads=threads)
    register_library(options)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    lm = CausalLM(session, Path(model_path).parent)
    names = sorted({p.x for p in probes})
    masked = {p.node_name: 0.0 for p in probes}
    rows = {p.node_name: 0 for p in probes}
    token_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    count = min(windows, len(token_ids) // window)
    for w in range(count):
        ids = token_ids[w * window:(w + 1) * window][None, :]
        outputs = dict(zip(names, session.run(names, lm.feeds(ids))))
        for p in probes:
            x = outputs[p.x].astype(np.float32).reshape(-1, p.scale.shape[0])
            if p.keep is not None:
                masked[p.node_name] += x.shape[0] * (1.0 - min(p.keep, x.shape[1]) / x.shape[1])
            else:
                keep = reference.keep_mask(x, p.scale, threshold=p.threshold)
                masked[p.node_name] += float((~keep).mean(axis=1).sum())
            rows[p.node_name] += x.shape[0]
    fractions = {name: masked[name] / max(rows[name], 1) for name in masked}
    total = sum(p.weight_bytes for p in probes)
    return {
        "weighted": sum(fractions[p.node_name] * p.weight_bytes for p in probes) / total,
        "mean": float(np.mean(list(fractions.values()))),
        "gates": fractions,
        "tokens": count * window,
    }
