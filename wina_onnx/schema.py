"""The `WinaSparseMatMul` operator: one place that names its domain, inputs and attributes.

The pass, the NumPy oracle, the standard-ops lowering and the docs all read these
constants, and the C++ library (custom_ops/src/op_schema.h) mirrors them.
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
GROUP_ATTR_MEMBERS = "members"  # strings: the names of the WinaSparseMatMul nodes the group replaced

# Keys of ModelProto.metadata_props that wina-onnx writes (the strings are part of the file
# format: models written earlier are read by them).
META_PREFIX = "wina_onnx."
META_VERSION = META_PREFIX + "version"  # the package version that optimized the model
META_CONFIG = META_PREFIX + "config"  # JSON: the gating settings
META_GATED = META_PREFIX + "gated"  # JSON: one record per gate
META_GROUPS = META_PREFIX + "groups"  # JSON: the member node names of each WinaSparseMatMulGroup
META_TRANSFORM = META_PREFIX + "transform"  # JSON: the residual-stream rotation (passes.rotate)
META_GGUF_INT4 = META_PREFIX + "gguf_int4"  # text: the GGUF file whose 4-bit codes the model keeps

# The 4-bit form: WinaSparseMatMul over block-quantized weights, re-packed from
# com.microsoft MatMulNBits so that input feature i's codes are one contiguous row.
# Dequantized weight: W[i, n] = (code[i, n] - zero_point[i // G, n]) * scale[i // G, n],
# G = block_size; then exactly WinaSparseMatMul(X, W, score_scale, threshold | k, bias).
#   inputs:  0 X [..., K] T     1 B uint8 [K, ceil(N/2)]: column n of row i in byte n // 2,
#            low nibble for even n (MatMulNBits' nibble order)
#            2 scales T [ceil(K/G), N]
#            3 zero_points: uint8 [ceil(K/G), ceil(N/2)] packed like B, or T [ceil(K/G), N]; "" = 8
#            4 score_scale float [K]   5 threshold float []   6 k int64 []   7 bias T [N]
#   attributes: gating, K, N, bits (4), block_size (G: a power of two, 16 or more),
#               accuracy_level (copied from MatMulNBits; 0 = float arithmetic)
NBITS_OP_TYPE = "WinaSparseMatMulNBits"
NBITS_INPUT_X = 0
NBITS_INPUT_B = 1
NBITS_INPUT_SCALES = 2
NBITS_INPUT_ZERO_POINTS = 3
NBITS_INPUT_SCORE_SCALE = 4
NBITS_INPUT_THRESHOLD = 5
NBITS_INPUT_K = 6
NBITS_INPUT_BIAS = 7
NBITS_NUM_INPUTS = 8
NBITS_ATTR_K = "K"
NBITS_ATTR_N = "N"
NBITS_ATTR_BITS = "bits"
NBITS_ATTR_BLOCK_SIZE = "block_size"
NBITS_ATTR_ACCURACY_LEVEL = "accuracy_level"
NBITS_BITS = 4
NBITS_DEFAULT_ZERO_POINT = 8

# The ONNX Runtime contrib op the pass reads (com.microsoft).
MATMUL_NBITS_DOMAIN = "com.microsoft"
MATMUL_NBITS_OP_TYPE = "MatMulNBits"
