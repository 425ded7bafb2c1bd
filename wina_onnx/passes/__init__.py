"""Graph passes of wina-onnx.

    candidates          which MatMuls may be gated, and why others are refused
    roles               which decoder projection a MatMul is, from its name
    wina_gate           the WINA/TEAL rewrite into WinaSparseMatMul (or standard ops)
    lower_standard_ops  the standard-ops lowering used by --backend onnx
    rotate              WINA's tensor transformation (--transform): a rotated residual stream
    group_gates         threshold gates that read the same input, as one WinaSparseMatMulGroup (--group)
"""

from .candidates import Candidate, Skipped, find_candidates
from .group_gates import GroupReport, group_shared_inputs
from .rotate import TransformError, TransformReport, rotate_residual_stream
from .wina_gate import BACKENDS, NORM_ON_CHOICES, GateConfig, GateRecord, GateReport, apply_wina_gates, uses_norm

__all__ = [
    "BACKENDS",
    "NORM_ON_CHOICES",
    "Candidate",
    "GateConfig",
    "GateRecord",
    "GateReport",
    "GroupReport",
    "Skipped",
    "TransformError",
    "TransformReport",
    "apply_wina_gates",
    "find_candidates",
    "group_shared_inputs",
    "rotate_residual_stream",
    "uses_norm",
]
