"""The WINA pass: replace each eligible MatMul y = x @ B by a gated `WinaSparseMatMul`.

For B of shape [K, N] (ONNX MatMul layout, row i = input feature i) the score scale is
||B[i, :]||_2, the L2 norm over axis 1 (PyTorch's `weight.norm(dim=0)` on the [N, K]
Linear weight) in WINA mode, and 1 in TEAL mode. The gate keeps, per token,

    top-k:      k = K - round(sparsity * K) features with the largest |x_i| * scale_i
    threshold:  the features whose score exceeds the calibrated threshold, i.e. the
                `sparsity` quantile of that MatMul's score distribution on calibration text.

The rewrite is in place on the GraphProto: the new node keeps the MatMul's name and
output, so the graph stays topologically sorted and calibration keys stay valid.

A 4-bit MatMulNBits (com.microsoft) becomes `WinaSparseMatMulNBits` with its codes,
scales and zero points re-packed feature-major (passes.nbits); its score scale is the
norm of the dequantized rows, and its bias and accuracy_level are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import schema
from ..errors import ConfigError

from . import nbits
from .allocation import Allocation
from .candidates import Candidate, find_candidates
from .lower_standard_ops import StandardOpsLowering
from .names import NameSpace
from .result import PassResult

PASS_NAME = "wina_gate"
BACKENDS = (BACKEND_CUSTOM_OP, BACKEND_ONNX) = ("custom-op", "onnx")
# all: weight norms in every WINA score; reference: only where one input feeds several
# weights (the k and gate projections), as WINA's reference code does.
NORM_ON_CHOICES = (NORM_ON_ALL, NORM_ON_REFERENCE) = ("all", "reference")
_REFERENCE_NORM_ROLES = {"k_proj", "gate_proj", "qkv_proj", "gate_up_proj"}
DEFAULT_SPARSITY = 0.5


class Thresholds(Protocol):
    """Calibrated thresholds, as threshold gating reads them (calibrate.calibration.Calibration is one)."""

    source: str  # what text they were calibrated on (recorded in the model's metadata)
    transformed: bool  # calibrated on the model rotated by passes.rotate

    def threshold(self, node_name: str, mode: str, sparsity: float) -> float:
        """The score threshold that skips `sparsity` of this node's features in `mode`."""
        ...

    def check_covers(self, node_names: Iterable[str]) -> None:
        """Raise ConfigError when a node has no calibration."""
        ...


@dataclass
class GateConfig:
    """Options of the WINA pass (plain data; `wina_onnx.recipe` chooses them for optimize).

    gating: "threshold" or "topk"; None: threshold where `calibration` gives thresholds,
    else top-k (the recipe's fallback). group: one WinaSparseMatMulGroup per input
    (passes.group_gates, run by optimize_model); None: where it applies (threshold
    gating, custom-op backend). transform: rotate the residual stream first (passes.rotate,
    run by optimize_model).
    """

    mode: str = schema.MODE_WINA
    gating: str | None = None
    allocation: Allocation = field(default_factory=lambda: Allocation.uniform(DEFAULT_SPARSITY))
    backend: str = BACKEND_CUSTOM_OP
    norm_on: str = NORM_ON_REFERENCE
    transform: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    calibration: Thresholds | None = None
    group: bool | None = None

    def __post_init__(self) -> None:
        if self.gating is None:
            self.gating = schema.GATING_THRESHOLD if self.calibration is not None else schema.GATING_TOPK
        if self.group is None:
            self.group = self.gating == schema.GATING_THRESHOLD and self.backend == BACKEND_CUSTOM_OP

    def validate(self) -> None:
        """Raise ConfigError for an inconsistent configuration."""
        for what, value, choices in (("mode", self.mode, schema.MODES), ("gating", self.gating, schema.GATINGS),
                                     ("backend", self.backend, BACKENDS),
                                     ("norm-on", self.norm_on, NORM_ON_CHOICES)):
            if value not in choices:
                raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
        if self.group and (self.gating != schema.GATING_THRESHOLD or self.backend != BACKEND_CUSTOM_OP):
            raise ConfigError("--group needs threshold gating and the custom-op backend "
                              f"(got gating {self.gating!r}, backend {self.backend!r})")
        if self.gating == schema.GATING_THRESHOLD and self.calibration is None:
            raise ConfigError("threshold gating needs a calibration file (wina-onnx calibrate, then --calibration)")


@dataclass(frozen=True)
class GateRecord:
    """One rewritten MatMul: what it gates and how."""

    node_name: str
    label: str
    k: int
    n: int
    sparsity: float
    keep_count: int | None  # top-k
    threshold: float | None  # threshold gating
    uses_norm: bool
    weight_bytes: int
    bits: int | None = None  # 4 for a MatMulNBits weight, None for a float one
    block_size: int | None = None  # its block size G

    def to_json(self) -> dict:
        """A JSON-friendly dict."""
        out = {
            "node": self.node_name,
            "role": self.label,
            "K": self.k,
            "N": self.n,
            "sparsity": self.sparsity,
            "k": self.keep_count,
            "threshold": self.threshold,
            "norm": self.uses_norm,
            "weight_bytes": self.weight_bytes,
        }
        if self.bits is not None:
            out.update(bits=self.bits, block_size=self.block_size)
        return out


def gate_headline(records: list[GateRecord]) -> str:
    """The first line of the gate pass's summary: how many MatMuls, how many weight bytes."""
    line = f"gated {len(records)} MatMul(s)"
    if records:
        total = sum(r.weight_bytes for r in records)
        skipped = sum(r.sparsity * r.weight_bytes for r in records)  # expected bytes not read per token
        line += f" holding {total / 2**20:.1f} MiB of weights; {skipped / 2**20:.1f} MiB not read per token"
    return line


def keep_count(k: int, sparsity: float) -> int:
    """Features kept by top-k gating of K features at `sparsity`."""
    return k - int(round(sparsity * k))


def uses_norm(mode: str, norm_on: str, role_kind: str | None) -> bool:
    """Whether a gate of this role scores with the weight norms (else with |x| alone)."""
    if mode == schema.MODE_TEAL:
        return False
    if norm_on == NORM_ON_ALL:
        return True
    return role_kind in _REFERENCE_NORM_ROLES


def _uses_norm(config: GateConfig, candidate: Candidate) -> bool:
    return uses_norm(config.mode, config.norm_on, candidate.role.kind if candidate.role is not None else None)


def apply_wina_gates(model: onnx.ModelProto, config: GateConfig) -> PassResult[GateRecord]:
    """Rewrite `model` in place; return what was gated (GateRecords) and what was skipped."""
    config.validate()
    graph = model.graph
    candidates, skipped = find_candidates(graph, include=config.include, exclude=config.exclude)
    report: PassResult[GateRecord] = PassResult(PASS_NAME, skipped=list(skipped), item="MatMul",
                                                headline=gate_headline([]))
    if not candidates:
        return report
    if config.calibration is not None:
        config.calibration.check_covers([c.node_name for c in candidates])
    initializers = {init.name: init for init in graph.initializer}
    # By position, not name: node names need not be unique.
    by_index = {c.index: c for c in candidates}
    names = NameSpace(graph)
    lowering = StandardOpsLowering(graph, names) if config.backend == BACKEND_ONNX else None
    scales: dict[tuple[str, bool], str] = {}
    packed = _Repacked(graph, initializers, names)
    new_nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        candidate = by_index.get(index)
        if candidate is None:
            new_nodes.append(node)
            continue
        record, gate_inputs = _gate_inputs(config, candidate, initializers, scales, graph, names, packed)
        report.records.append(record)
        x, weight = node.input[0], node.input[1]
        if candidate.quantized is not None:
            if lowering is not None:
                new_nodes.extend(lowering.emit_nbits(
                    prefix=candidate.node_name + "/wina", node=node, score_scale=gate_inputs["scale"],
                    dtype=candidate.dtype, threshold=gate_inputs.get("threshold"), k=gate_inputs.get("k")))
            else:
                new_nodes.append(_nbits_gate(config, candidate, node, gate_inputs, packed))
        elif lowering is not None:
            new_nodes.extend(
                lowering.emit(
                    prefix=candidate.node_name + "/wina",
                    x=x,
                    weight=weight,
                    score_scale=gate_inputs["scale"],
                    output=node.output[0],
                    dtype=candidate.dtype,
                    threshold=gate_inputs.get("threshold"),
                    k=gate_inputs.get("k"),
                    bias=candidate.bias or None,
                )
            )
        else:
            bias = [candidate.bias] if candidate.bias else []  # a Gemm's C
            new_nodes.append(
                helper.make_node(
                    schema.OP_TYPE,
                    [x, weight, gate_inputs["scale"], gate_inputs.get("threshold", ""), gate_inputs.get("k", "")]
                    + bias,
                    list(node.output),
                    name=node.name or candidate.node_name,
                    domain=schema.DOMAIN,
                    gating=config.gating,
                )
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    packed.drop_replaced()
    if config.backend == BACKEND_CUSTOM_OP and not any(o.domain == schema.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION))
    report.headline = gate_headline(report.records)
    return report


def _row_norms(weight: np.ndarray, rows: int = 256) -> np.ndarray:
    """L2 norm of each row of the [K, N] weight in float32, a few rows at a time
    (a float32 copy of a whole 7B-model weight would be hundreds of MiB)."""
    out = np.empty(weight.shape[0], dtype=np.float32)
    for start in range(0, weight.shape[0], rows):
        out[start:start + rows] = np.linalg.norm(weight[start:start + rows].astype(np.float32), axis=1)
    return out


def _gate_inputs(
    config: GateConfig,
    candidate: Candidate,
    initializers: dict[str, onnx.TensorProto],
    scales: dict[tuple[str, bool], str],
    graph: onnx.GraphProto,
    names: NameSpace,
    packed: "_Repacked",
) -> tuple[GateRecord, dict[str, str]]:
    """Create the initializers a gate reads (scale, k or threshold); describe the gate."""
    sparsity = config.allocation.for_node(candidate.node_name)
    norm_scaled = _uses_norm(config, candidate)
    # One norm vector per weight; one vector of ones per K, shared by every TEAL gate.
    scale_key = (candidate.weight_name, True) if norm_scaled else (f"ones_{candidate.k}", False)
    if scale_key not in scales:
        if norm_scaled and candidate.quantized is not None:
            scale = packed.weight(candidate.quantized).row_norms()
            name = names.fresh(f"{candidate.weight_name}_wina_row_norm")
        elif norm_scaled:
            scale = _row_norms(numpy_helper.to_array(initializers[candidate.weight_name]))
            name = names.fresh(f"{candidate.weight_name}_wina_row_norm")
        else:
            scale = np.ones(candidate.k, dtype=np.float32)
            name = names.fresh(f"wina_ones_{candidate.k}")
        graph.initializer.append(numpy_helper.from_array(scale, name))
        scales[scale_key] = name
    inputs = {"scale": scales[scale_key]}
    keep, threshold = None, None
    if config.gating == schema.GATING_TOPK:
        keep = keep_count(candidate.k, sparsity)
        inputs["k"] = names.fresh(f"{candidate.node_name}/wina_k")
        graph.initializer.append(numpy_helper.from_array(np.array([keep], dtype=np.int64), inputs["k"]))
    else:
        mode = schema.MODE_WINA if norm_scaled else schema.MODE_TEAL
        threshold = config.calibration.threshold(candidate.node_name, mode, sparsity)
        inputs["threshold"] = names.fresh(f"{candidate.node_name}/wina_threshold")
        graph.initializer.append(numpy_helper.from_array(np.array([threshold], dtype=np.float32), inputs["threshold"]))
    record = GateRecord(
        node_name=candidate.node_name,
        label=candidate.label,
        k=candidate.k,
        n=candidate.n,
        sparsity=sparsity,
        keep_count=keep,
        threshold=threshold,
        uses_norm=norm_scaled,
        weight_bytes=candidate.weight_bytes,
        bits=schema.NBITS_BITS if candidate.quantized is not None else None,
        block_size=candidate.quantized.block_size if candidate.quantized is not None else None,
    )
    return record, inputs


class _Repacked:
    """The feature-major initializers of the 4-bit weights the pass gates, made once per weight."""

    def __init__(self, graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], names: NameSpace) -> None:
        self.graph, self.initializers, self.names = graph, initializers, names
        self._weights: dict[tuple[str, str, str], nbits.FeatureMajor] = {}
        self._names: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    @staticmethod
    def _key(source: nbits.NbitsSource) -> tuple[str, str, str]:
        return source.b, source.scales, source.zero_points

    def weight(self, source: nbits.NbitsSource) -> nbits.FeatureMajor:
        """The re-packed weight of a MatMulNBits (read and re-packed on first use)."""
        key = self._key(source)
        if key not in self._weights:
            self._weights[key] = nbits.load_feature_major(source, self.initializers)
        return self._weights[key]

    def initializer_names(self, source: nbits.NbitsSource) -> tuple[str, str, str]:
        """Names of the feature-major codes, scales and zero points ("" when absent), added once."""
        key = self._key(source)
        if key not in self._names:
            weight = self.weight(source)
            fresh = self.names.fresh
            arrays = [(fresh(f"{source.b}_feature_major"), weight.codes),
                      (fresh(f"{source.scales}_feature_major"), weight.scales)]
            if weight.zero_points is not None:
                arrays.append((fresh(f"{source.zero_points}_feature_major"), weight.zero_points))
            for name, array in arrays:
                tensor = numpy_helper.from_array(array, name)
                # numpy has no bfloat16 of its own: keep the scales' ONNX type as it was.
                if array is not weight.codes and array.dtype != np.uint8:
                    tensor.data_type = source.scale_type
                self.graph.initializer.append(tensor)
            self._names[key] = (arrays[0][0], arrays[1][0], arrays[2][0] if len(arrays) > 2 else "")
        return self._names[key]

    def drop_replaced(self) -> None:
        """Remove the MatMulNBits initializers that no node reads any more (they were re-packed)."""
        old = {name for key in self._names for name in key if name}
        if not old:
            return
        used = {name for node in self.graph.node for name in node.input}
        used.update(o.name for o in self.graph.output)
        _inputs_of_subgraphs(self.graph, used)
        keep = [init for init in self.graph.initializer if init.name not in old or init.name in used]
        if len(keep) != len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(keep)


def _inputs_of_subgraphs(graph: onnx.GraphProto, used: set[str]) -> None:
    """Add the inputs read inside If/Loop/Scan bodies (outer-scope values among them) to `used`."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                        attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
                used.update(name for inner in sub.node for name in inner.input)
                _inputs_of_subgraphs(sub, used)


def _nbits_gate(config: GateConfig, candidate: Candidate, node: onnx.NodeProto, gate_inputs: dict[str, str],
                packed: _Repacked) -> onnx.NodeProto:
    """The WinaSparseMatMulNBits node replacing the MatMulNBits `node`."""
    source = candidate.quantized
    codes, scales, zeros = packed.initializer_names(source)
    inputs = [node.input[0], codes, scales, zeros, gate_inputs["scale"], gate_inputs.get("threshold", ""),
              gate_inputs.get("k", ""), source.bias]
    while inputs and not inputs[-1]:
        inputs.pop()  # trailing absent optional inputs are left out
    return helper.make_node(
        schema.NBITS_OP_TYPE, inputs, list(node.output), name=node.name or candidate.node_name, domain=schema.DOMAIN,
        gating=config.gating, K=source.k, N=source.n, bits=schema.NBITS_BITS, block_size=source.block_size,
        accuracy_level=source.accuracy_level,
    )
