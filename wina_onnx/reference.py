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
