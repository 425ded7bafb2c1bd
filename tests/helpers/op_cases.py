"""Random `WinaSparseMatMul` cases for property tests: shapes, dtypes, gatings and hostile inputs.

A case is drawn by hypothesis (tests/test_op_properties.py): the structure (M, K, N,
leading dims, dtype, gating, k or threshold, which special values appear) comes from
hypothesis so it shrinks, the bulk values from a NumPy generator seeded by it.

Special values mixed into X: NaN, +-inf, subnormals of the dtype, +-0 and a few
repeated magnitudes, so that scores tie exactly, at the k-th score or at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from wina_onnx import reference

DTYPE_NAMES = ("float32", "float16", "bfloat16")
NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# The smallest positive subnormal of each dtype, as a float32.
SUBNORMAL = {"float32": 1e-45, "float16": 6e-8, "bfloat16": 1e-40}
# Relative error allowed against the oracle, per dtype: the summation order (fp32) and
# one rounding of the result (fp16, bf16).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
SPECIALS = ("nan", "inf", "subnormal", "zero", "ties")


@dataclass
class OpCase:
    """One call of the op: inputs, gating and what to expect."""

    x: np.ndarray
    b: np.ndarray
    score_scale: np.ndarray
    gating: str
    k: int | None
    threshold: float | None
    bias: np.ndarray | None
    dtype_name: str

    def expected(self) -> np.ndarray:
        """The oracle's Y."""
        with np.errstate(invalid="ignore", over="ignore"):
            return reference.wina_sparse_matmul(
                self.x, self.b, self.score_scale, threshold=self.threshold, k=self.k, bias=self.bias
            )

    def params(self) -> dict:
        """The gating input: {"k": ...} or {"threshold": ...}."""
        return {"k": self.k} if self.gating == "topk" else {"threshold": self.threshold}


def _x_values(rng: np.random.Generator, shape: tuple[int, ...], specials: frozenset[str], dtype_name: str) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if not x.size:
        return x
    pick = lambda p: rng.random(shape) < p  # noqa: E731
    if "ties" in specials:  # a few magnitudes only: exact score ties everywhere
        x = np.where(pick(0.7), rng.choice(np.float32([0.5, -0.5, 1.0, -1.0, 2.0]), size=shape), x)
    if "zero" in specials:
        x = np.where(pick(0.2), rng.choice(np.float32([0.0, -0.0]), size=shape), x)
    if "subnormal" in specials:
        tiny = np.float32(SUBNORMAL[dtype_name]) * rng.integers(1, 4, size=shape).astype(np.float32)
        x = np.where(pick(0.2), tiny * rng.choice(np.float32([1, -1]), size=shape), x)
    if "inf" in specials:
        x = np.where(pick(0.05), rng.choice(np.float32([np.inf, -np.inf]), size=shape), x)
    if "nan" in specials:
        x = np.where(pick(0.05), np.float32(np.nan), x)
    return x


def _scale_values(rng: np.random.Generator, k: int, kind: str) -> np.ndarray:
    if kind == "ones":
        return np.ones(k, np.float32)
    if kind == "few":  # repeated values: ties across features with different |x|
        return rng.choice(np.float32([0.0, 0.5, 1.0, 2.0]), size=k)
    if kind == "nan":  # a NaN scale ranks its feature as +inf
        scale = rng.uniform(0.1, 2.0, k).astype(np.float32)
        scale[rng.integers(0, k)] = np.nan
        return scale
    return rng.uniform(0.05, 3.0, k).astype(np.float32)


@st.composite
def op_cases(
    draw,
    *,
    dtypes: tuple[str, ...] = DTYPE_NAMES,
    k_range: tuple[int, int] | None = None,
    max_m: int = 6,
    finite: bool = False,
    identity_b: bool = False,
    clip_k: bool = False,
) -> OpCase:
    """Strategy of OpCase.

    finite: no NaN or inf in X (for exact keep-set checks); identity_b: B = I, so Y is
    the masked X itself; clip_k: k within [0, K] (the standard-ops lowering, whose
    TopK refuses other k).
    """
    dtype_name = draw(st.sampled_from(dtypes))
    dtype = NUMPY_DTYPES[dtype_name]
    k_lo, k_hi = k_range or (1, 80)
    k = draw(st.one_of(st.just(1), st.integers(k_lo, k_hi)))
    n = k if identity_b else draw(st.one_of(st.just(1), st.integers(1, 24)))
    m = draw(st.integers(0, max_m))
    lead = draw(st.sampled_from([(m,), (1, m), (m, 1)]))
    allowed = tuple(s for s in SPECIALS if not (finite and s in ("nan", "inf")))
    specials = frozenset(draw(st.sets(st.sampled_from(allowed), max_size=len(allowed))))
    scale_kind = draw(st.sampled_from(["random", "ones", "few"] + ([] if finite else ["nan"])))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    x = _x_values(rng, (*lead, k), specials, dtype_name).astype(dtype)
    scale = _scale_values(rng, k, scale_kind)
    if identity_b:
        b = np.eye(k, dtype=np.float32).astype(dtype)
    else:
        b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32).astype(dtype)
    bias = None
    if not identity_b and draw(st.booleans()):
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype)

    gating = draw(st.sampled_from(["topk", "threshold"]))
    keep, threshold = None, None
    if gating == "topk":
        keep = draw(st.integers(0, k) if clip_k else st.integers(-2, k + 2))
    else:
        with np.errstate(invalid="ignore"):
            scores = reference.gate_scores(x, scale).ravel()
        choice = draw(st.sampled_from(["score", "quantile", "zero", "negative", "inf", "nan"]))
        if choice == "score" and scores.size:  # exactly one of the scores: a tie at the threshold
            threshold = float(scores[draw(st.integers(0, scores.size - 1))])
        elif choice == "quantile" and np.isfinite(scores).any():
            threshold = float(np.quantile(scores[np.isfinite(scores)], draw(st.floats(0.0, 1.0))))
        else:
            threshold = {"zero": 0.0, "negative": -1.0, "inf": float("inf"), "nan": float("nan")}.get(choice, 0.5)
    return OpCase(x=x, b=b, score_scale=scale, gating=gating, k=keep, threshold=threshold, bias=bias,
                  dtype_name=dtype_name)


def assert_matches(y: np.ndarray, case: OpCase, context: str = "") -> None:
    """Y equals the oracle: same shape and dtype, NaN and inf at the same places,
    finite values within the dtype's tolerance relative to the output scale."""
    expected = case.expected()
    assert y.shape == expected.shape and y.dtype == expected.dtype, context
    if not y.size:
        return
    got, want = y.astype(np.float32), expected.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN positions {context}")
    inf = np.isinf(want)
    np.testing.assert_array_equal(np.isinf(got), inf, err_msg=f"inf positions {context}")
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"inf signs {context}")
    finite = np.isfinite(want)
    if finite.any():
        scale = max(float(np.abs(want[finite]).max()), 1e-3)
        err = float(np.abs(got[finite] - want[finite]).max())
        assert err <= TOLERANCE[case.dtype_name] * scale, f"{context}: max error {err} vs scale {scale}"
