"""Closed-loop thresholds: re-read each gate's score distribution inside the gated model.

`calibrate` histograms the scores of the dense model. Once the early layers are gated,
the later layers see different inputs: on SmolLM2 uniform 50% thresholds skip 51.9% of
the weight bytes (benchmarks/results/quality.json). Refinement runs the gated model over calibration text with the input of
every threshold gate exposed, histograms each gate's scores and resets its threshold to
the quantile of its target sparsity. Each round runs with the thresholds of the round
before, so the upstream gates' changes are seen by the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .. import schema
from .calibration import histogram_of, quantile
from ..errors import ConfigError
from ..modelio import PROTOBUF_LIMIT
from ..progress import Progress


@dataclass(frozen=True)
class Refinement:
    """Calibration text (token ids) and how much of it each refinement round reads."""

    token_ids: np.ndarray
    windows: int = 16
    window: int = 256
    rounds: int = 1
    threads: int | None = None
    model_dir: Path | None = None  # the model's folder: its config files give the KV cache's sizes


@dataclass(frozen=True)
class _Gate:
    node: onnx.NodeProto
    scale: np.ndarray
    sparsity: float
    threshold_input: int  # position of the threshold among the node's inputs


# Score scale and threshold positions of the gates refinement resets (float and 4-bit weights).
_GATE_INPUTS = {
    schema.OP_TYPE: (schema.INPUT_SCORE_SCALE, schema.INPUT_THRESHOLD),
    schema.NBITS_OP_TYPE: (schema.NBITS_INPUT_SCORE_SCALE, schema.NBITS_INPUT_THRESHOLD),
}


def _threshold_gates(model: onnx.ModelProto, sparsities: dict[str, float]) -> list[_Gate]:
    inits = {init.name: init for init in model.graph.initializer}
    gates = []
    for node in model.graph.node:
        if node.op_type not in _GATE_INPUTS or node.domain != schema.DOMAIN:
            continue
        scale_input, threshold_input = _GATE_INPUTS[node.op_type]
        if len(node.input) <= threshold_input or not node.input[threshold_input] or node.name not in sparsities:
            continue  # a top-k gate, or one this pass did not make
        scale = numpy_helper.to_array(inits[node.input[scale_input]]).astype(np.float32)
        gates.append(_Gate(node, scale, sparsities[node.name], threshold_input))
    return gates


def _session(model: onnx.ModelProto, gates: list[_Gate], threads: int | None):
    import onnxruntime as ort

    from ..library import register_library
    from ..passes.nbits import activation_type
    from ..runtime.session import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    weight_types = {init.name: init.data_type for init in model.graph.initializer}
    exposed = {o.name for o in probe.graph.output}
    for gate in gates:
        x = gate.node.input[0]
        if x not in exposed:  # x has the weight's element type (the scales' for 4-bit weights)
            probe.graph.output.append(onnx.helper.make_tensor_value_info(x, activation_type(gate.node, weight_types), None))
            exposed.add(x)
    options = register_library(session_options(threads=threads))
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])


def refine_thresholds(model: onnx.ModelProto, sparsities: dict[str, float], refinement: Refinement, *,
                      progress: bool = True) -> dict[str, float]:
    """Reset the threshold of every threshold gate of `model`, in place; returns the new ones.

    sparsities: target sparsity of each gate, by node name (the pass's GateRecords).
    """
    from ..runtime.session import CausalLM

    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise ConfigError("threshold refinement runs the model from memory and needs it under 2 GiB")
    gates = _threshold_gates(model, sparsities)
    if not gates:
        raise ConfigError("threshold refinement needs threshold gates (--gating threshold)")
    token_ids = np.asarray(refinement.token_ids, dtype=np.int64).reshape(-1)
    count = min(refinement.windows, len(token_ids) // refinement.window)
    if count < 1:
        raise ConfigError(f"the refinement text has {len(token_ids)} tokens, fewer than one window "
                          f"of {refinement.window}")
    inits = {init.name: init for init in model.graph.initializer}
    thresholds: dict[str, float] = {}
    for round_index in range(refinement.rounds):
        session = _session(model, gates, refinement.threads)
        lm = CausalLM(session, refinement.model_dir)
        names = sorted({g.node.input[0] for g in gates})
        counts = {g.node.name: None for g in gates}
        bar = Progress(f"refine thresholds {round_index + 1}/{refinement.rounds}", total=count, enabled=progress)
        for w in range(count):
            ids = token_ids[w * refinement.window:(w + 1) * refinement.window][None, :]
            outputs = dict(zip(names, session.run(names, lm.feeds(ids))))
            for gate in gates:
                x = outputs[gate.node.input[0]].astype(np.float32).reshape(-1, gate.scale.shape[0])
                hist = histogram_of(np.abs(x) * gate.scale[None, :])
                previous = counts[gate.node.name]
                counts[gate.node.name] = hist if previous is None else previous + hist
            bar.step()
        bar.done(f"{len(gates)} gates")
        del session
        for gate in gates:
            value = quantile(counts[gate.node.name], gate.sparsity) if gate.sparsity > 0 else -1.0
            name = gate.node.input[gate.threshold_input]
            inits[name].CopyFrom(numpy_helper.from_array(np.array([value], dtype=np.float32), name))
            thresholds[gate.node.name] = value
    return thresholds
