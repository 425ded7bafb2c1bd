"""Measure the sparsity an optimized model actually applies on some text.

Top-k gates mask exactly K - k features per token. Threshold gates mask a fraction that
depends on the text; this runs the model with the input of every gate exposed
(WinaSparseMatMul, WinaSparseMatMulNBits, and WinaSparseMatMulGroup per weight) and
counts, per gate, the scores at or below its threshold (the op keeps a feature when its
score is strictly above; a NaN score counts as +inf and is kept).
The model-level figure weights each gate by its weight bytes, which is what a decode
step skips reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .. import reference, schema
from ..calibrate.instrument import InstrumentedRun
from ..gates import Gate, read_gates
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


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a weight initializer: 1 per uint8 (4-bit codes, packed zero points), 4 per
    float32, else 2 (float16, bfloat16)."""
    if tensor.data_type == onnx.TensorProto.UINT8:
        item = 1
    else:
        item = 4 if tensor.data_type == onnx.TensorProto.FLOAT else 2
    return int(np.prod(tensor.dims)) * item


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> np.generic | None:
    return numpy_helper.to_array(inits[name]).reshape(-1)[0] if name else None


def _probes(gate: Gate, inits: dict[str, onnx.TensorProto]) -> list[GateProbe]:
    """One probe per weight of the gate (a group's named after the gates it replaced); a 4-bit
    weight's bytes are those of its codes, scales and zero points."""
    scale = numpy_helper.to_array(inits[gate.score_scale]).astype(np.float32)
    if gate.is_group:
        thresholds = numpy_helper.to_array(inits[gate.threshold]).reshape(-1)
        return [GateProbe(name, gate.x, scale[s], float(thresholds[s]), None, _tensor_bytes(inits[weight]))
                for s, (name, weight) in enumerate(zip(gate.member_names(), gate.weights))]
    threshold, keep = _scalar(inits, gate.threshold), _scalar(inits, gate.k)
    return [GateProbe(gate.node.name, gate.x, scale, None if threshold is None else float(threshold),
                      None if keep is None else int(keep),
                      sum(_tensor_bytes(inits[name]) for name in gate.weight_inputs()))]


def measure_sparsity(model_path: str | Path, token_ids: np.ndarray, *, windows: int = 2, window: int = 512,
                     threads: int | None = None) -> dict:
    """Fraction of features masked per gate and weighted by weight bytes, over `windows` windows.

    Returns {"weighted": float, "mean": float, "gates": {node: fraction}, "tokens": int}.
    """
    model = load_model(Path(model_path))
    gates = read_gates(model.graph.node)
    inits = {init.name: init for init in model.graph.initializer}
    probes = [probe for gate in gates for probe in _probes(gate, inits)]
    if not probes:
        raise ValueError(f"{model_path} has no {schema.OP_TYPE} node")
    run = InstrumentedRun(model, [g.node for g in gates], model_dir=Path(model_path).parent, threads=threads)
    del model, inits
    masked = {p.node_name: 0.0 for p in probes}
    rows = {p.node_name: 0 for p in probes}
    token_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    count = min(windows, len(token_ids) // window)
    for outputs in run.windows(token_ids, count, window):
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
