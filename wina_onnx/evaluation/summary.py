"""What an optimized model gates: one row per WinaSparseMatMul, with totals (`wina-onnx inspect`).

Read from the model's metadata_props (written by `optimize`) and the initializer headers;
no weights are loaded. Bytes skipped per token are the weight rows a decode step does
not read: exactly (K - k) / K of the weight for top-k gating, and the calibrated
sparsity (the expected fraction, on text like the calibration text) for thresholds.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import ConfigError
from ..gates import read_gates
from ..optimize import read_metadata
from ..schema import DOMAIN, MATMUL_NBITS_DOMAIN, MATMUL_NBITS_OP_TYPE, NBITS_OP_TYPE

_ROLE_RE = re.compile(r"^L(\d+)\.(.+)$")
# Each gate's score, as the table and --json show it: WINA's, or TEAL's |x| alone. A WINA model
# has both kinds (--norm-on reference puts the weight norms in the k/gate scores only).
SCORE_NORM = "|x|*||row||"
SCORE_ABS = "|x|"


@dataclass
class GateRow:
    """One gated MatMul."""

    node: str
    layer: int | None
    role: str  # the projection kind, e.g. "q_proj"
    K: int
    N: int
    score: str  # SCORE_NORM (|x_i| * ||B[i, :]||) or SCORE_ABS (|x_i|)
    gating: str
    sparsity: float
    k: int | None
    threshold: float | None
    weight_bytes: int
    bytes_skipped: float  # per token
    bits: int | None = None  # 4 for a 4-bit weight (WinaSparseMatMulNBits), None for a float one


@dataclass
class ModelSummary:
    """The gated MatMuls of a model and the totals."""

    version: str | None
    config: dict
    gates: list[GateRow]
    model_weight_bytes: int  # every float initializer of the model and the 4-bit codes, gated or not
    groups: list[list[str]] = field(default_factory=list)  # per WinaSparseMatMulGroup node, the gates it holds

    @property
    def gated_weight_bytes(self) -> int:
        """Weight bytes of the gated MatMuls."""
        return sum(g.weight_bytes for g in self.gates)

    @property
    def bytes_skipped(self) -> float:
        """Weight bytes not read per decoded token, over all gated MatMuls."""
        return sum(g.bytes_skipped for g in self.gates)

    def totals(self) -> dict:
        """The totals as a dict (also in --json)."""
        gated = self.gated_weight_bytes
        return {
            "gated": len(self.gates),
            "gated_weight_bytes": gated,
            "bytes_skipped_per_token": self.bytes_skipped,
            "gated_fraction_skipped": self.bytes_skipped / gated if gated else 0.0,
            "model_weight_bytes": self.model_weight_bytes,
            "model_fraction_skipped": self.bytes_skipped / self.model_weight_bytes if self.model_weight_bytes else 0.0,
        }

    def to_json(self) -> dict:
        """version, config, gated (the rows) and totals."""
        return {"version": self.version, "config": self.config, "gated": [asdict(g) for g in self.gates],
                "groups": self.groups, "totals": self.totals()}

    def table(self) -> str:
        """A text table, one row per gate, then the totals."""
        unit, scale = ("MiB", 2**20) if self.model_weight_bytes >= 10 * 2**20 else ("KiB", 2**10)
        header = (f"{'layer':<6}{'role':<14}{'K':>7}{'N':>7}  {'score':<12}{'gating':<10}{'sparsity':>9}"
                  f"{'k':>7}{'threshold':>11}{f'{unit} skipped/token':>20}")
        lines = [f"wina-onnx {self.version}", header]
        for g in self.gates:
            layer = "" if g.layer is None else str(g.layer)
            k = "" if g.k is None else str(g.k)
            thr = "" if g.threshold is None else f"{g.threshold:.4g}"
            lines.append(f"{layer:<6}{g.role:<14}{g.K:>7}{g.N:>7}  {g.score:<12}{g.gating:<10}{g.sparsity:>9.3f}"
                         f"{k:>7}{thr:>11}{g.bytes_skipped / scale:>20.3f}")
        t = self.totals()
        lines.append(
            f"total: {t['gated']} gated MatMuls; {t['bytes_skipped_per_token'] / scale:.3f} of "
            f"{t['gated_weight_bytes'] / scale:.3f} {unit} of their weights not read per token "
            f"({100 * t['gated_fraction_skipped']:.1f}%), {100 * t['model_fraction_skipped']:.1f}% of the model's "
            f"{t['model_weight_bytes'] / scale:.3f} {unit} of weights")
        quantized = sum(1 for g in self.gates if g.bits is not None)
        if quantized:
            lines.append(f"{quantized} of the gates have 4-bit weights (MatMulNBits' codes): their bytes are "
                         "those of the codes, scales and zero points")
        if self.groups:
            lines.append(f"grouped: {sum(len(g) for g in self.groups)} of the gates in {len(self.groups)} "
                         f"WinaSparseMatMulGroup node(s), one per set of gates reading the same input")
        return "\n".join(lines)


def _initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's floating-point initializers, from their headers (no data read)."""
    total = 0
    for init in model.graph.initializer:
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        except (KeyError, ValueError):
            continue
        if dtype.kind != "f" and init.data_type != onnx.TensorProto.BFLOAT16:
            continue
        itemsize = 2 if init.data_type == onnx.TensorProto.BFLOAT16 else dtype.itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total + _nbits_code_bytes(model)


def _nbits_code_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the uint8 initializers (4-bit codes, packed zero points) read by 4-bit products."""
    read = {name for node in model.graph.node
            if (node.op_type, node.domain) in ((NBITS_OP_TYPE, DOMAIN), (MATMUL_NBITS_OP_TYPE, MATMUL_NBITS_DOMAIN))
            for name in node.input}
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer
               if init.name in read and init.data_type == onnx.TensorProto.UINT8)


def _score(gate: dict, config: dict) -> str:
    """A gate's score: from its own record (whether it uses the weight norms), else the model's mode."""
    if "norm" in gate:
        return SCORE_NORM if gate["norm"] else SCORE_ABS
    return SCORE_ABS if config.get("mode") == "teal" else SCORE_NORM


def summarize(model: onnx.ModelProto) -> ModelSummary:
    """The ModelSummary of a model optimized by wina-onnx (ConfigError if it was not)."""
    meta = read_metadata(model)
    if not meta or "gated" not in meta:
        raise ConfigError("the model was not optimized by wina-onnx (no wina_onnx metadata)")
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    rows = []
    for g in meta["gated"]:
        match = _ROLE_RE.match(g["role"])
        layer, role = (int(match.group(1)), match.group(2)) if match else (None, g["role"])
        if g.get("k") is not None:
            fraction = (g["K"] - g["k"]) / g["K"]
        else:
            fraction = g["sparsity"]
        rows.append(GateRow(
            node=g["node"], layer=layer, role=role, K=g["K"], N=g["N"],
            score=_score(g, config),
            gating=config.get("gating", "topk" if g.get("k") is not None else "threshold"),
            sparsity=g["sparsity"], k=g.get("k"), threshold=g.get("threshold"), weight_bytes=g["weight_bytes"],
            bytes_skipped=fraction * g["weight_bytes"], bits=g.get("bits"),
        ))
    groups = [list(gate.members) for gate in read_gates(model.graph.node) if gate.is_group]
    return ModelSummary(version=meta.get("version"), config=config, gates=rows,
                        model_weight_bytes=_initializer_bytes(model), groups=groups)
