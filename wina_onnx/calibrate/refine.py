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

from ..errors import ConfigError
from ..gates import Gate, read_gates
from ..modelio import PROTOBUF_LIMIT
from ..progress import Progress
from .calibration import histogram_of, quantile
from .instrument import InstrumentedRun, window_count


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
class _Target:
    gate: Gate
    scale: np.ndarray
    sparsity: float


def _threshold_gates(model: onnx.ModelProto, sparsities: dict[str, float]) -> list[_Target]:
    """The single-weight threshold gates (float and 4-bit weights) this pass made."""
    inits = {init.name: init for init in model.graph.initializer}
    targets = []
    for gate in read_gates(model.graph.node):
        if gate.is_group or not gate.threshold or gate.node.name not in sparsities:
            continue  # a top-k gate, or one this pass did not make
        scale = numpy_helper.to_array(inits[gate.score_scale]).astype(np.float32)
        targets.append(_Target(gate, scale, sparsities[gate.node.name]))
    return targets


def refine_thresholds(model: onnx.ModelProto, sparsities: dict[str, float], refinement: Refinement, *,
                      progress: bool = True) -> dict[str, float]:
    """Reset the threshold of every threshold gate of `model`, in place; returns the new ones.

    sparsities: target sparsity of each gate, by node name (the pass's GateRecords).
    """
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise ConfigError("threshold refinement runs the model from memory and needs it under 2 GiB")
    targets = _threshold_gates(model, sparsities)
    if not targets:
        raise ConfigError("threshold refinement needs threshold gates (--gating threshold)")
    token_ids = np.asarray(refinement.token_ids, dtype=np.int64).reshape(-1)
    count = window_count(token_ids, refinement.windows, refinement.window, text="refinement")
    inits = {init.name: init for init in model.graph.initializer}
    thresholds: dict[str, float] = {}
    for round_index in range(refinement.rounds):
        run = InstrumentedRun(model, [t.gate.node for t in targets], model_dir=refinement.model_dir,
                              threads=refinement.threads)
        counts = {t.gate.node.name: None for t in targets}
        bar = Progress(f"refine thresholds {round_index + 1}/{refinement.rounds}", total=count, enabled=progress)
        for outputs in run.windows(token_ids, count, refinement.window):
            for t in targets:
                x = outputs[t.gate.x].astype(np.float32).reshape(-1, t.scale.shape[0])
                hist = histogram_of(np.abs(x) * t.scale[None, :])
                previous = counts[t.gate.node.name]
                counts[t.gate.node.name] = hist if previous is None else previous + hist
            bar.step()
        bar.done(f"{len(targets)} gates")
        del run
        for t in targets:
            value = quantile(counts[t.gate.node.name], t.sparsity) if t.sparsity > 0 else -1.0
            inits[t.gate.threshold].CopyFrom(numpy_helper.from_array(np.array([value], dtype=np.float32),
                                                                     t.gate.threshold))
            thresholds[t.gate.node.name] = value
    return thresholds
