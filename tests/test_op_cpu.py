"""The CPU kernels of `WinaSparseMatMul` (libwina_onnx_ops.so) against the NumPy oracle.

Each test runs single-op models (tests/helpers/op_models.py) in ONNX Runtime with the
installed library and compares with wina_onnx.reference.wina_sparse_matmul.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

import wina_onnx  # noqa: E402
from wina_onnx import reference  # noqa: E402

from helpers.op_models import DTYPES, assert_close, run, session, wina_model  # noqa: E402

SIZES = (1, 3, 17, 64, 192, 576, 1000)
SPARSITIES = (0.0, 0.25, 0.5, 0.9, 1.0)
# (leading dims of X) for each token count M, as rank-2 and rank-3 inputs.
LEADING = {0: [(0,), (1, 0)], 1: [(1,), (1, 1)], 2: [(2,), (2, 1)], 7: [(7,), (1, 7)], 64: [(64,), (4, 16)]}


@pytest.fixture(scope="module", autouse=True)
def _library_present():
    wina_onnx.get_library_path()  # raises a clear error when the package was not built


def make_weights(rng, k, n, dtype):
    b = (rng.standard_normal((k, n)) / np.sqrt(max(k, 1))).astype(np.float32).astype(dtype)
    return b, reference.weight_row_norms(b)


def gating_for(gating, sparsity, x, score_scale):
    """The gating input that masks about `sparsity` of the features of x."""
    k_features = x.shape[-1]
    if gating == "topk":
        return {"k": int(round((1.0 - sparsity) * k_features))}
    if sparsity == 0.0:
        return {"threshold": -1.0}
    scores = reference.gate_scores(x, score_scale)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return {"threshold": 0.0}
    return {"threshold": float(np.quantile(finite, sparsity))}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", SIZES)
def test_matches_reference(k, n, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(1000 * k + n)
    b, scale = make_weights(rng, k, n, dtype)
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    x_all = rng.standard_normal((64, k)).astype(np.float32).astype(dtype)
    for gi, gating in enumerate(("topk", "threshold")):
        for si, sparsity in enumerate(SPARSITIES):
            with_bias = (gi + si) % 2 == 0
            params = gating_for(gating, sparsity, x_all, scale)
            sess = session(
                wina_model(b, scale, gating=gating, bias=bias if with_bias else None, x_rank=None, **params)
            )
            for m, leadings in LEADING.items():
                for lead in leadings:
                    x = x_all[:m].reshape(*lead, k)
                    y = run(sess, x)
                    expected = reference.wina_sparse_matmul(
                        x, b, scale, bias=bias if with_bias else None, **params
                    )
                    assert_close(y, expected, dtype_name, f"{gating} s={sparsity} bias={with_bias} X{x.shape}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("gating", ["topk", "threshold"])
@pytest.mark.parametrize("k", [5, 64, 200, 1000])
def test_keep_set_is_exact(k, gating, dtype_name):
    """With B = identity, Y is the masked X itself: any wrong keep decision shows."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(k)
    b = np.eye(k, dtype=np.float32).astype(dtype)
    # Few distinct magnitudes, so many scores tie, including at the cut.
    x = (rng.integers(-4, 5, size=(9, k)) * 0.5).astype(np.float32).astype(dtype)
    scale = rng.choice(np.array([0.5, 1.0, 2.0], dtype=np.float32), size=k)
    for sparsity in (0.1, 0.5, 0.7, 0.9):
        params = gating_for(gating, sparsity, x, scale)
        sess = session(wina_model(b, scale, gating=gating, **params))
        for m in (1, 2, 9):
            y = run(sess, x[:m])
            expected = reference.wina_sparse_matmul(x[:m], b, scale, **params)
            np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_topk_every_k_with_ties(isa, monkeypatch):
    """Every k from -1 to K + 1 on rows full of ties (equal scores, -0/+0, NaN)."""
    monkeypatch.setenv("WINA_ONNX_ISA", isa)
    k_features = 70
    rng = np.random.default_rng(11)
    x = (rng.integers(-3, 4, size=(4, k_features)) * 0.25).astype(np.float32)
    x[0, 5] = np.nan
    x[1, :] = x[1, 0]
    x[2, 10:20] = -0.0
    x[3, ::3] = np.inf
    scale = rng.choice(np.array([0.5, 1.0], np.float32), size=k_features)
    b = np.eye(k_features, dtype=np.float32)
    for k in range(-1, k_features + 2):
        sess = session(wina_model(b, scale, gating="topk", k=k))
        for m in (1, 4):
            with np.errstate(invalid="ignore"):  # inf * 0 in the oracle's dense product
                expected = reference.wina_sparse_matmul(x[:m], b, scale, k=k)
            np.testing.assert_array_equal(run(sess, x[:m]), expected)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_topk_scores_in_one_narrow_band(isa, monkeypatch):
    """Scores that differ only in their low bits (the selection's worst case)."""
    monkeypatch.setenv("WINA_ONNX_ISA", isa)
    k_features = 3000
    rng = np.random.default_rng(12)
    x = (1.0 + rng.integers(0, 50, size=(2, k_features)) * 2.0**-20).astype(np.float32)
    scale = np.ones(k_features, np.float32)
    eye = np.eye(k_features, dtype=np.float32)
    for k in (1, 777, 1500, 2999):
        sess = session(wina_model(eye, scale, gating="topk", k=k))
        for m in (1, 2):
            # With B = I, Y is the masked X: its nonzeros are exactly the kept features.
            y = run(sess, x[:m])
            np.testing.assert_array_equal(y != 0, reference.keep_mask(x[:m], scale, k=k))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_masked_result_differs_from_dense(dtype_name):
    """Gating chosen so that the masked product is far from the dense one."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(7)
    k, n = 192, 64
    b, scale = make_weights(rng, k, n, dtype)
    x = rng.standard_normal((5, k)).astype(np.float32).astype(dtype)
    for gating, params in (("topk", {"k": 20}), ("threshold", {"threshold": 1.5})):
        sess = session(wina_model(b, scale, gating=gating, **params))
        for m in (1, 5):
            y = run(sess, x[:m]).astype(np.float32)
            expected = reference.wina_sparse_matmul(x[:m], b, scale, **params).astype(np.float32)
            dense = x[:m].astype(np.float32) @ b.astype(np.float32)
            assert np.abs(expected - dense).max() > 0.2 * np.abs(dense).max()
            assert_close(y.astype(dtype), expected.astype(dtype), dtype_name, gating)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 3, 20])
def test_all_masked_gives_bias(m, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(3)
    b, scale = make_weights(rng, 100, 70, dtype)
    bias = rng.standard_normal(70).astype(np.float32).astype(dtype)
    x = rng.standard_normal((m, 100)).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": -5}, {"threshold": np.inf}):
        gating = "topk" if "k" in params else "threshold"
        y = run(session(wina_model(b, scale, gating=gating, **params)), x)
        np.testing.assert_array_equal(y.astype(np.float32), np.zeros((m, 70), np.float32))
        y = run(session(wina_model(b, scale, gating=gating, bias=bias, **params)), x)
        np.testing.assert_array_equal(y, np.broadcast_to(bias, (m, 70)))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 3, 20])
def test_nothing_masked_is_dense(m, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(4)
    b, scale = make_weights(rng, 130, 90, dtype)
    x = rng.standard_normal((m, 130)).astype(np.float32).astype(dtype)
    dense = (x.astype(np.float32) @ b.astype(np.float32)).astype(dtype)
    for gating, params in (("topk", {"k": 130}), ("topk", {"k": 10**9}), ("threshold", {"threshold": -1.0})):
        y = run(session(wina_model(b, scale, gating=gating, **params)), x)
        assert_close(y, dense, dtype_name, str(params))


@pytest.mark.parametrize("m", [1, 6])
def test_ties_at_the_kth_score_keep_lower_indices(m):
    k = 12
    x = np.tile(np.array([1, -3, 2, -2, 2, 3, -2, 1, 2, 0, -3, 2], np.float32), (m, 1))
    b = np.eye(k, dtype=np.float32)
    scale = np.ones(k, np.float32)
    # Scores 3 at indices 1, 5, 10, then 2 at indices 2, 3, 4, 6, 8, 11: k=5 keeps
    # the three 3s and the 2s at indices 2 and 3.
    y = run(session(wina_model(b, scale, gating="topk", k=5)), x)
    expected = np.zeros_like(x)
    expected[:, [1, 5, 10, 2, 3]] = x[:, [1, 5, 10, 2, 3]]
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, reference.wina_sparse_matmul(x, b, scale, k=5))
    # -0.0 and +0.0 scores tie as well.
    x0 = np.zeros((m, k), np.float32)
    x0[:, ::2] = -0.0
    neg_scale = -np.ones(k, np.float32)
    y0 = run(session(wina_model(b, neg_scale, gating="topk", k=5)), x0)
    np.testing.assert_array_equal(y0, reference.wina_sparse_matmul(x0, b, neg_scale, k=5))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 9])
def test_nan_in_x_is_kept_and_propagates(m, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(5)
    k = 40
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, 7] = np.nan
    x = x.astype(dtype)
    scale = np.ones(k, np.float32)
    eye = np.eye(k, dtype=np.float32).astype(dtype)
    for gating, params in (("topk", {"k": 3}), ("threshold", {"threshold": 100.0})):
        y = run(session(wina_model(eye, scale, gating=gating, **params)), x)
        expected = reference.wina_sparse_matmul(x, eye, scale, **params)
        np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))
        assert np.isnan(y.astype(np.float32)[:, 7]).all()
    # A NaN score scale ranks as +inf too.
    nan_scale = scale.copy()
    nan_scale[3] = np.nan
    y = run(session(wina_model(eye, nan_scale, gating="topk", k=1)), x)
    np.testing.assert_array_equal(
        y.astype(np.float32), reference.wina_sparse_matmul(x, eye, nan_scale, k=1).astype(np.float32)
    )


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 1536, 576), (1, 576, 1536), (64, 576, 1536), (13, 192, 576)])
def test_thread_count_does_not_change_result(shape, dtype_name):
    m, k, n = shape
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(6)
    b, scale = make_weights(rng, k, n, dtype)
    x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
    model = wina_model(b, scale, gating="topk", k=k // 2)
    y1 = run(session(model, threads=1), x)
    y2 = run(session(model, threads=2), x)
    y4 = run(session(model, threads=4), x)
    np.testing.assert_array_equal(y1.view(np.uint8), y2.view(np.uint8))
    np.testing.assert_array_equal(y1.view(np.uint8), y4.view(np.uint8))
    assert_close(y1, reference.wina_sparse_matmul(x, b, scale, k=k // 2), dtype_name)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_every_instruction_set_path(isa, dtype_name, monkeypatch):
    """WINA_ONNX_ISA caps the kernels chosen at session creation (falls back on older CPUs)."""
    monkeypatch.setenv("WINA_ONNX_ISA", isa)
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(8)
    for k, n in ((17, 3), (64, 77), (300, 129), (1000, 1000)):
        b, scale = make_weights(rng, k, n, dtype)
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
        for gating, params in (("topk", {"k": k // 3}), ("threshold", {"threshold": 0.5})):
            sess = session(wina_model(b, scale, gating=gating, bias=bias, **params))
            for m in (1, 2, 11, 40):
                x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
                expected = reference.wina_sparse_matmul(x, b, scale, bias=bias, **params)
                assert_close(run(sess, x), expected, dtype_name, f"{isa} K={k} N={n} M={m}")


def test_scalar_inputs_of_shape_one():
    rng = np.random.default_rng(9)
    b, scale = make_weights(rng, 50, 20, np.float32)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    y = run(session(wina_model(b, scale, gating="topk", k=np.array([10]))), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, k=10), "float32")
    y = run(session(wina_model(b, scale, gating="threshold", threshold=np.array([0.7], np.float32))), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, threshold=0.7), "float32")


def test_empty_feature_dimension():
    b = np.zeros((0, 6), np.float32)
    scale = np.zeros(0, np.float32)
    bias = np.arange(6, dtype=np.float32)
    x = np.zeros((3, 0), np.float32)
    y = run(session(wina_model(b, scale, gating="topk", k=2, bias=bias)), x)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (3, 6)))


def test_rank_one_x():
    rng = np.random.default_rng(10)
    b, scale = make_weights(rng, 30, 8, np.float32)
    x = rng.standard_normal(30).astype(np.float32)
    y = run(session(wina_model(b, scale, gating="topk", k=9, x_rank=None)), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, k=9), "float32")


# --- errors -----------------------------------------------------------------------


def run_error(model, x):
    with pytest.raises(Exception) as info:
        run(session(model), x)
    return str(info.value)


def test_error_missing_k_for_topk():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, scale, gating="topk", threshold=0.5), np.ones((2, 8), np.float32))
    assert "needs input 'k'" in msg and "missing" in msg


def test_error_missing_threshold():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, scale, gating="threshold", k=3), np.ones((2, 8), np.float32))
    assert "needs input 'threshold'" in msg


def test_error_bad_gating_attribute():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, scale, gating="top-k", k=3), np.ones((2, 8), np.float32))
    assert "unknown gating 'top-k'" in msg
    msg = run_error(wina_model(b, scale, gating=None, k=3), np.ones((2, 8), np.float32))
    assert "attribute 'gating' is missing" in msg


def test_error_b_rank():
    b = np.ones((8, 4, 2), np.float32)
    scale = np.ones(8, np.float32)
    msg = run_error(wina_model(b, scale, gating="topk", k=3, x_rank=None), np.ones((2, 8), np.float32))
    assert "input 'B' (index 1) must be a 2-D [K, N] weight" in msg and "rank 3" in msg


def test_error_k_mismatch():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, scale, gating="topk", k=3, x_rank=None), np.ones((2, 9), np.float32))
    assert "shape mismatch" in msg and "input 'B'" in msg and "last dimension = 9" in msg


def test_error_score_scale_shape():
    b, _ = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, np.ones(7, np.float32), gating="topk", k=3), np.ones((2, 8), np.float32))
    assert "input 'score_scale' (index 2) must have shape [8]" in msg


def test_error_bias_shape():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(
        wina_model(b, scale, gating="topk", k=3, bias=np.ones(5, np.float32)), np.ones((2, 8), np.float32)
    )
    assert "input 'bias' (index 5) must have shape [4]" in msg


def test_error_k_not_scalar():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = run_error(wina_model(b, scale, gating="topk", k=np.array([3, 4])), np.ones((2, 8), np.float32))
    assert "input 'k' (index 4) must be a scalar" in msg


@pytest.mark.parametrize("other", ["B", "bias"])
def test_error_type_mismatch(other):
    rng = np.random.default_rng(0)
    b, scale = make_weights(rng, 8, 4, np.float32)
    bias = np.ones(4, np.float32)
    if other == "B":
        b = b.astype(np.float16)
    else:
        bias = bias.astype(np.float16)
    model = wina_model(b, scale, gating="topk", k=3, bias=bias, x_dtype=np.float32)
    with pytest.raises(Exception) as info:
        run(session(model), np.ones((2, 8), np.float32))
    msg = str(info.value)
    # ORT's type check at session creation or ours at run time, both name the op.
    assert "WinaSparseMatMul" in msg
    assert "no kernel def matches" in msg or "has element type" in msg
