"""The `WinaSparseMatMul` operator: one place that names its domain, inputs and attributes.

The pass, the NumPy oracle, the standard-ops lowering and the docs all read these
constants, and the C++ library (custom_ops/src/wina_sparse_matmul.h) mirrors them.
The full specification is docs/op-schema.md.

Semantics, per token t (a row of X flattened to [M, K]):

    score[t, i] = |float(X[t, i])| * score_scale[i]          (NaN scores rank as +inf)
    keep[t, i]  = score[t, i] > threshold                    gating = "threshold"
                = i among the k largest scores of row t      gating = "topk"
                  (ties broken towards the lower index, as ONNX TopK does)
    Y[t, :]     = sum_{i: keep[t, i]} float(X[t, i]) * float(B[i, :])  (+ bias), cast to T

B is the ONNX MatMul layout [K, N]: row i holds input feature i's weights, so a
masked feature's row is never read. For WINA, score_scale[i] = ||B[i, :]||_2
(the L2 norm over axis 1); for TEAL it is all ones.
"""

from __future__ import annotations

DOMAIN = "ai.wina"
DOMAIN_VERSION = 1
OP_TYPE = "WinaSparseMatMul"

# Input positions. Optional inputs are given as "" when absent.
INPUT_X = 0
INPUT_B = 1
INPUT_SCORE_SCALE = 2
INPUT_THRESHOLD = 3  # float scalar, required when gating == "threshold"
INPUT_K = 4  # int64 scalar, required when gating == "topk"
INPUT_BIAS = 5  # T [N], optional
NUM_INPUTS = 6

ATTR_GATING = "gating"
GATING_TOPK = "topk"
GATING_THRESHOLD = "threshold"
GATINGS = (GATING_TOPK, GATING_THRESHOLD)

MODE_WINA = "wina"
MODE_TEAL = "teal"
MODES = (MODE_WINA, MODE_TEAL)

# The grouped form: several weights that read the same X in one node (q/k/v, gate/up).
# Per weight s it computes exactly WinaSparseMatMul(X, B_s, score_scale[s], threshold[s],
# bias_s) with threshold gating; one scoring pass and one launch serve them all.
#   inputs:  0 X [..., K]   1 score_scale [S, K] float   2 threshold [S] float
#            3 ... variadic: B_0 .. B_{S-1} ([K, N_s], T), then optionally bias_0 .. bias_{S-1}
#   outputs: Y_0 .. Y_{S-1} ([..., N_s], T)
GROUP_OP_TYPE = "WinaSparseMatMulGroup"
GROUP_INPUT_X = 0
GROUP_INPUT_SCORE_SCALE = 1
GROUP_INPUT_THRESHOLD = 2
GROUP_FIRST_WEIGHT = 3
GROUP_MAX_WEIGHTS = 8  # the CUDA kernel's segment table

# Keys written to ModelProto.metadata_props by the pass.
META_PREFIX = "wina_onnx."
