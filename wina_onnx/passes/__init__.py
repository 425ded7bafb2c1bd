"""Graph passes of wina-onnx: each rewrites an onnx.ModelProto in place, takes plain
options and returns one PassResult (what changed, what was skipped and why).

    result              PassResult, Skipped and Sequential (passes run in order)
    allocation          Allocation: the sparsity of each gated MatMul (plain data, a JSON file)
    candidates          which MatMuls may be gated, and why others are refused
    roles               which decoder projection a MatMul is, from its name
    wina_gate           the WINA/TEAL rewrite into WinaSparseMatMul (or standard ops)
    lower_standard_ops  the standard-ops form of a gate, written by wina_gate for --backend onnx
    nbits               MatMulNBits' 4-bit weights re-packed feature-major, for wina_gate
    rotate              WINA's tensor transformation (--transform): a rotated residual stream
    group_gates         threshold gates that read the same input, as one WinaSparseMatMulGroup (--group)

Nothing here imports the command line, the runtime, the calibration or the evaluation.
"""

from .allocation import Allocation
from .candidates import Candidate, find_candidates
from .group_gates import GroupRecord, group_shared_inputs, groups_of
from .result import GraphPass, PassResult, Sequential, Skipped
from .rotate import RotatedWeight, TransformError, rotate_residual_stream
from .wina_gate import (BACKENDS, NORM_ON_CHOICES, GateConfig, GateRecord, Thresholds, apply_wina_gates,
                        uses_norm)

__all__ = [
    "BACKENDS",
    "NORM_ON_CHOICES",
    "Allocation",
    "Candidate",
    "GateConfig",
    "GateRecord",
    "GraphPass",
    "GroupRecord",
    "PassResult",
    "RotatedWeight",
    "Sequential",
    "Skipped",
    "Thresholds",
    "TransformError",
    "apply_wina_gates",
    "find_candidates",
    "group_shared_inputs",
    "groups_of",
    "rotate_residual_stream",
    "uses_norm",
]
