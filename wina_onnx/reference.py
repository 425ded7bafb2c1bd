"""NumPy oracle of `WinaSparseMatMul`: the specification every kernel is tested against.

See wina_onnx/schema.py and docs/op-schema.md for the semantics. The oracle favours
clarity over speed: it builds the full keep-mask and multiplies densely in float32.
"""

from __future__ import annotations

import numpy as np

from . import schema


def gate_scores(x: np.ndarray, score_scale: np.ndarray) -> np.ndarray:
    """Return float32 scores |x| * score_scale with NaN mapped to +inf, shape of x."""
    scores = np.abs(x.astype(np.float32)) * score_scale.astype(np.float32)
    return np.where(np.isnan(scores), np.float32(np.inf), scores)


def keep_mask(
    x: np.ndarray,
    score_scale: np.ndarray,
    *,
    threshold: float | None = None,
    k: int | None = None,
) -> np.ndarray:
    """Boolean mask over x (shape [..., K]): True where the feature is kept.

    Exactly one of `threshold` (keep score > threshold) or `k` (keep the k largest
    scores of each row, ties to the lower index) must be given. k is clipped to [0, K].
    """
    if (threshold is None) == (k is None):
        raise ValueError("give exactly one of threshold or k")
    scores = gate_scores(x, score_scale)
    if threshold is not None:
        return scores > np.float32(threshold)
    feature_count = x.shape[-1]
    kk = int(min(max(int(k), 0), feature_count))
    flat = scores.reshape(-1, feature_count)
    mask = np.zeros(flat.shape, dtype=bool)
    if kk > 0 and flat.shape[0] > 0:
        # A stable sort of the negated scores puts equal scores in index order,
        # which is the tie rule of ONNX TopK.
        order = np.argsort(-flat, axis=-1, kind="stable")[:, :kk]
        np.put_along_axis(mask, order, True, axis=-1)
    return mask.reshape(x.shape)


def wina_sparse_matmul(
    x: np.ndarray,
    b: np.ndarray,
    score_scale: np.ndarray,
    *,
    threshold: float | None = None,
    k: int | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Reference `WinaSparseMatMul`: (x masked per token) @ b (+ bias), in x's dtype.

    x: [..., K]; b: [K, N]; score_scale: [K] float32; bias: [N] or None.
    Accumulates in float32 whatever the input dtype, as the kernels do.
    """
    if b.ndim != 2 or x.shape[-1] != b.shape[0]:
        raise ValueError(f"shapes do not fit: x {x.shape}, b {b.shape}")
    if score_scale.shape != (b.shape[0],):
        raise ValueError(f"score_scale must have shape ({b.shape[0]},), got {score_scale.shape}")
    mask = keep_mask(x, score_scale, threshold=threshold, k=k)
    xm = np.where(mask, x.astype(np.float32), np.float32(0.0))
    y = xm @ b.astype(np.float32)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return y.astype(x.dtype)


def wina_sparse_matmul_group(
    x: np.ndarray,
    score_scale: np.ndarray,
    threshold: np.ndarray,
    weights: list[np.ndarray],
    biases: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Reference `WinaSparseMatMulGroup`: one threshold-gated product per weight.

    score_scale: [S, K]; threshold: [S]; weights: S arrays [K, N_s]; biases: S arrays or None.
    Output s is `wina_sparse_matmul(x, weights[s], score_scale[s], threshold=threshold[s], bias=biases[s])`.
    """
    count = len(weights)
    if score_scale.shape != (count, x.shape[-1]) or np.shape(threshold) != (count,):
        raise ValueError(f"score_scale must be [{count}, K] and threshold [{count}], got {score_scale.shape}, {np.shape(threshold)}")
    if biases is not None and len(biases) != count:
        raise ValueError(f"give one bias per weight ({count}), got {len(biases)}")
    return [
        wina_sparse_matmul(x, w, score_scale[s], threshold=float(threshold[s]), bias=None if biases is None else biases[s])
        for s, w in enumerate(weights)
    ]


def weight_row_norms(b: np.ndarray) -> np.ndarray:
    """WINA's score scale: the L2 norm of each row of the [K, N] weight (axis 1), float32."""
    return np.linalg.norm(b.astype(np.float32), axis=1).astype(np.float32)


def score_scale_for(mode: str, b: np.ndarray) -> np.ndarray:
    """Score scale of a weight for a gating mode: row norms for WINA, ones for TEAL."""
    if mode == schema.MODE_WINA:
        return weight_row_norms(b)
    if mode == schema.MODE_TEAL:
        return np.ones(b.shape[0], dtype=np.float32)
    raise ValueError(f"unknown mode {mode!r}; expected one of {schema.MODES}")


# ----------------------------------------------------------------------------- 4-bit weights
def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """4-bit codes of bytes packed along the last axis, as uint8: byte j holds code 2j in its
    low nibble and code 2j + 1 in its high nibble (MatMulNBits' order); the first `count` codes."""
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    if codes.shape[-1] < count:
        raise ValueError(f"{packed.shape[-1]} bytes hold {codes.shape[-1]} codes, fewer than {count}")
    return codes[..., :count]


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Inverse of unpack_nibbles: pairs of codes (0..15) along the last axis into bytes (an odd
    count is padded with a zero high nibble)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), dtype=np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def dequantize_nbits(
    b_packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    *,
    block_size: int,
    n: int,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Rows start:stop of the float32 weight [K, N] of a `WinaSparseMatMulNBits` (feature-major).

    W[i, j] = (code[i, j] - zero_point[i // G, j]) * scale[i // G, j] in float32, where
    b_packed is uint8 [K, ceil(N/2)], scales T [ceil(K/G), N], zero_points None (8), uint8
    [ceil(K/G), ceil(N/2)] packed like b_packed, or T [ceil(K/G), N].
    """
    k = b_packed.shape[0]
    blocks = -(-k // block_size)
    if b_packed.dtype != np.uint8 or b_packed.shape != (k, -(-n // 2)):
        raise ValueError(f"B must be uint8 [K, ceil(N/2)] = [{k}, {-(-n // 2)}], got {b_packed.dtype} {b_packed.shape}")
    if scales.shape != (blocks, n):
        raise ValueError(f"scales must be [ceil(K/G), N] = [{blocks}, {n}], got {scales.shape}")
    stop = k if stop is None else min(stop, k)
    rows = np.arange(start, stop)
    codes = unpack_nibbles(b_packed[start:stop], n).astype(np.float32)
    scale = scales.astype(np.float32)[rows // block_size]
    if zero_points is None:
        zero = np.float32(schema.NBITS_DEFAULT_ZERO_POINT)
    elif zero_points.dtype == np.uint8:
        if zero_points.shape != (blocks, -(-n // 2)):
            raise ValueError(f"uint8 zero points must be [{blocks}, {-(-n // 2)}], got {zero_points.shape}")
        zero = unpack_nibbles(zero_points, n).astype(np.float32)[rows // block_size]
    else:
        if zero_points.shape != (blocks, n):
            raise ValueError(f"float zero points must be [{blocks}, {n}], got {zero_points.shape}")
        zero = zero_points.astype(np.float32)[rows // block_size]
    return (codes - zero) * scale


def wina_sparse_matmul_nbits(
    x: np.ndarray,
    b_packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    score_scale: np.ndarray,
    *,
    block_size: int,
    n: int,
    threshold: float | None = None,
    k: int | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Reference `WinaSparseMatMulNBits`: `wina_sparse_matmul` of x with the dequantized weight.

    x: [..., K]; b_packed: uint8 [K, ceil(N/2)] feature-major codes; scales: [ceil(K/G), N];
    zero_points: None, uint8 [ceil(K/G), ceil(N/2)] or float [ceil(K/G), N]; score_scale: [K].
    The weight is dequantized in float32 (dequantize_nbits) and the gate, product and
    bias are exactly those of the float op.
    """
    weight = dequantize_nbits(b_packed, scales, zero_points, block_size=block_size, n=n)
    return wina_sparse_matmul(x, weight, score_scale, threshold=threshold, k=k, bias=bias)
