"""`WinaSparseMatMul` on each execution provider against the NumPy oracle.

Single-op models (tests/helpers/op_models.py) run in ONNX Runtime with the op library and
are compared with wina_onnx.reference.wina_sparse_matmul. Every test takes a `provider`
(tests/helpers/providers.py): "cpu" always runs; "cuda" is marked `gpu`, runs with the CPU
fallback disabled (a node without a CUDA kernel fails instead of silently running on the
CPU) and skips with the reason where ONNX Runtime has no CUDA provider or no GPU.

Cases that belong to one provider are parametrized over that provider only, so their ids
name it: the CPU's instruction-set paths (WINA_ONNX_ISA) and intra-op thread counts; the
CUDA kernels' paths (fused decode up to 8 tokens, prefill above; top-k keys in registers up
to K = 16384, re-read from memory above) and the wide outputs of the cluster and split-K
plans. Where the two providers' case tables differ (shapes, token counts), each keeps its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

import wina_onnx  # noqa: E402
from wina_onnx import reference  # noqa: E402

from helpers.op_models import DTYPES, assert_close, gating_for, make_weights, run, session, wina_model  # noqa: E402
from helpers.providers import CPU, CUDA, ISAS, error_message, provider_cases, provider_session, providers  # noqa: E402

GATINGS = ("topk", "threshold")

# test_matches_reference, per provider: (K, N) shapes, sparsities and the leading dims of X.
# CPU: every pair of SIZES; X of rank 2 and 3 for 0, 1, 2, 7 and 64 tokens.
# CUDA: K and N off the block sizes (64-column thread groups x 16-byte vectors, 32-row slabs,
# 1024-key select blocks); K = 5000 and 20000 take the other top-k variants; N = 77 and 3 the
# unvectorised path in every dtype. Tokens: none, decode (1 to 8 in the fused kernel, 8 as
# rank 3), prefill (more).
SIZES = (1, 3, 17, 64, 192, 576, 1000)
MATCH_SHAPES = {
    CPU: [(k, n) for k in SIZES for n in SIZES],
    CUDA: [(1, 1), (17, 3), (64, 77), (192, 1000), (1000, 576), (5000, 264), (20000, 40)],
}
MATCH_SPARSITIES = {CPU: (0.0, 0.25, 0.5, 0.9, 1.0), CUDA: (0.0, 0.5, 0.9)}
MATCH_LEADING = {
    CPU: [(0,), (1, 0), (1,), (1, 1), (2,), (2, 1), (7,), (1, 7), (64,), (4, 16)],
    CUDA: [(0,), (1,), (3,), (2, 4), (9,), (64,)],
}
# test_keep_set_is_exact: token counts (the CUDA ones reach the prefill path).
KEEP_SET_TOKENS = {CPU: (1, 2, 9), CUDA: (1, 2, 9, 20)}
# Cases with an instruction-set cap: each CPU path, and the CUDA kernels (no cap).
ISA_CASES = provider_cases({CPU: ISAS, CUDA: [None]}, name=lambda isa: isa or "default")


@pytest.fixture(scope="module", autouse=True)
def _library_present():
    wina_onnx.get_library_path()  # raises a clear error when the package was not built


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(("provider", "shape"), provider_cases(MATCH_SHAPES, name=lambda s: f"{s[0]}x{s[1]}"))
def test_matches_reference(provider, shape, dtype_name):
    k, n = shape
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(1000 * k + n)
    b, scale = make_weights(rng, k, n, dtype)
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    leading = MATCH_LEADING[provider]
    x_all = rng.standard_normal((max(math.prod(lead) for lead in leading), k)).astype(np.float32).astype(dtype)
    for gi, gating in enumerate(GATINGS):
        for si, sparsity in enumerate(MATCH_SPARSITIES[provider]):
            with_bias = (gi + si) % 2 == 0
            params = gating_for(gating, sparsity, x_all, scale)
            sess = provider_session(
                wina_model(b, scale, gating=gating, bias=bias if with_bias else None, x_rank=None, **params), provider
            )
            for lead in leading:
                x = x_all[: math.prod(lead)].reshape(*lead, k)
                y = run(sess, x)
                expected = reference.wina_sparse_matmul(x, b, scale, bias=bias if with_bias else None, **params)
                assert_close(y, expected, dtype_name, f"{gating} s={sparsity} bias={with_bias} X{x.shape}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("gating", GATINGS)
@pytest.mark.parametrize("k", [5, 64, 200, 1000])
@pytest.mark.parametrize("provider", providers())
def test_keep_set_is_exact(provider, k, gating, dtype_name):
    """With B = identity, Y is the masked X itself: any wrong keep decision shows."""
    dtype = DTYPES[dtype_name]
    tokens = KEEP_SET_TOKENS[provider]
    rng = np.random.default_rng(k)
    b = np.eye(k, dtype=np.float32).astype(dtype)
    # Few distinct magnitudes, so many scores tie, including at the cut.
    x = (rng.integers(-4, 5, size=(max(tokens), k)) * 0.5).astype(np.float32).astype(dtype)
    scale = rng.choice(np.array([0.5, 1.0, 2.0], dtype=np.float32), size=k)
    for sparsity in (0.1, 0.5, 0.7, 0.9):
        params = gating_for(gating, sparsity, x, scale)
        sess = provider_session(wina_model(b, scale, gating=gating, **params), provider)
        for m in tokens:
            y = run(sess, x[:m])
            expected = reference.wina_sparse_matmul(x[:m], b, scale, **params)
            np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))


@pytest.mark.parametrize(("provider", "isa"), ISA_CASES)
def test_topk_every_k_with_ties(provider, isa):
    """Every k from -1 to K + 1 on rows full of ties (equal scores, -0/+0, NaN)."""
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
        sess = provider_session(wina_model(b, scale, gating="topk", k=k), provider, isa=isa)
        for m in (1, 4):
            with np.errstate(invalid="ignore"):  # inf * 0 in the oracle's dense product
                expected = reference.wina_sparse_matmul(x[:m], b, scale, k=k)
            np.testing.assert_array_equal(run(sess, x[:m]), expected)


@pytest.mark.parametrize(("provider", "isa"), ISA_CASES)
def test_topk_scores_in_one_narrow_band(provider, isa):
    """Scores that differ only in their low bits (the selection's worst case)."""
    k_features = 3000
    rng = np.random.default_rng(12)
    x = (1.0 + rng.integers(0, 50, size=(2, k_features)) * 2.0**-20).astype(np.float32)
    scale = np.ones(k_features, np.float32)
    eye = np.eye(k_features, dtype=np.float32)
    for k in (1, 777, 1500, 2999):
        sess = provider_session(wina_model(eye, scale, gating="topk", k=k), provider, isa=isa)
        for m in (1, 2):
            # With B = I, Y is the masked X: its nonzeros are exactly the kept features.
            y = run(sess, x[:m])
            np.testing.assert_array_equal(y != 0, reference.keep_mask(x[:m], scale, k=k))


@pytest.mark.parametrize("k", [3000, 17000])
@pytest.mark.parametrize("provider", providers())
def test_topk_ties_at_large_k(provider, k):
    """Top-k ties across select chunks (CUDA: in the register and the re-reading variant)."""
    rng = np.random.default_rng(k)
    x = (rng.integers(-3, 4, size=(10, k)) * 0.25).astype(np.float32)
    b = rng.standard_normal((k, 8)).astype(np.float32)
    scale = np.ones(k, np.float32)
    for kk in (1, k // 3, k // 2, k - 1):
        sess = provider_session(wina_model(b, scale, gating="topk", k=kk), provider)
        for m in (1, 10):
            y = run(sess, x[:m])
            assert_close(y, reference.wina_sparse_matmul(x[:m], b, scale, k=kk), "float32", f"k={kk} m={m}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("provider", providers())
def test_masked_result_differs_from_dense(provider, dtype_name):
    """Gating chosen so that the masked product is far from the dense one."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(7)
    k, n = 192, 64
    b, scale = make_weights(rng, k, n, dtype)
    x = rng.standard_normal((5, k)).astype(np.float32).astype(dtype)
    for gating, params in (("topk", {"k": 20}), ("threshold", {"threshold": 1.5})):
        sess = provider_session(wina_model(b, scale, gating=gating, **params), provider)
        for m in (1, 5):
            y = run(sess, x[:m]).astype(np.float32)
            expected = reference.wina_sparse_matmul(x[:m], b, scale, **params).astype(np.float32)
            dense = x[:m].astype(np.float32) @ b.astype(np.float32)
            assert np.abs(expected - dense).max() > 0.2 * np.abs(dense).max()
            assert_close(y.astype(dtype), expected.astype(dtype), dtype_name, gating)


def over_extremes(test):
    """The extreme gates' tests (everything masked, nothing masked): every provider, dtype, 1 / 3 / 20 tokens."""
    for mark in (pytest.mark.parametrize("dtype_name", list(DTYPES)), pytest.mark.parametrize("m", [1, 3, 20]),
                 pytest.mark.parametrize("provider", providers())):
        test = mark(test)
    return test


def extreme_case(seed: int, k: int, n: int, m: int, dtype):
    """Random weights [k, n], their score scale, and m tokens of x, in dtype (and the generator)."""
    rng = np.random.default_rng(seed)
    b, scale = make_weights(rng, k, n, dtype)
    return b, scale, rng.standard_normal((m, k)).astype(np.float32).astype(dtype), rng


@over_extremes
def test_all_masked_gives_bias(provider, m, dtype_name):
    dtype = DTYPES[dtype_name]
    b, scale, x, rng = extreme_case(3, 100, 70, m, dtype)
    bias = rng.standard_normal(70).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": -5}, {"threshold": np.inf}, {"threshold": np.nan}):
        gating = "topk" if "k" in params else "threshold"
        y = run(provider_session(wina_model(b, scale, gating=gating, **params), provider), x)
        np.testing.assert_array_equal(y.astype(np.float32), np.zeros((m, 70), np.float32))
        y = run(provider_session(wina_model(b, scale, gating=gating, bias=bias, **params), provider), x)
        np.testing.assert_array_equal(y, np.broadcast_to(bias, (m, 70)))


@over_extremes
def test_nothing_masked_is_dense(provider, m, dtype_name):
    dtype = DTYPES[dtype_name]
    b, scale, x, _ = extreme_case(4, 130, 90, m, dtype)
    dense = (x.astype(np.float32) @ b.astype(np.float32)).astype(dtype)
    for gating, params in (("topk", {"k": 130}), ("topk", {"k": 10**9}), ("threshold", {"threshold": -1.0})):
        y = run(provider_session(wina_model(b, scale, gating=gating, **params), provider), x)
        assert_close(y, dense, dtype_name, str(params))


@pytest.mark.parametrize("m", [1, 6, 12])
@pytest.mark.parametrize("provider", providers())
def test_ties_at_the_kth_score_keep_lower_indices(provider, m):
    k = 12
    x = np.tile(np.array([1, -3, 2, -2, 2, 3, -2, 1, 2, 0, -3, 2], np.float32), (m, 1))
    b = np.eye(k, dtype=np.float32)
    scale = np.ones(k, np.float32)
    # Scores 3 at indices 1, 5, 10, then 2 at indices 2, 3, 4, 6, 8, 11: k=5 keeps
    # the three 3s and the 2s at indices 2 and 3.
    y = run(provider_session(wina_model(b, scale, gating="topk", k=5), provider), x)
    expected = np.zeros_like(x)
    expected[:, [1, 5, 10, 2, 3]] = x[:, [1, 5, 10, 2, 3]]
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, reference.wina_sparse_matmul(x, b, scale, k=5))
    # -0.0 and +0.0 scores tie as well.
    x0 = np.zeros((m, k), np.float32)
    x0[:, ::2] = -0.0
    neg_scale = -np.ones(k, np.float32)
    y0 = run(provider_session(wina_model(b, neg_scale, gating="topk", k=5), provider), x0)
    np.testing.assert_array_equal(y0, reference.wina_sparse_matmul(x0, b, neg_scale, k=5))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("provider", providers())
def test_nan_in_x_is_kept_and_propagates(provider, m, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(5)
    k = 40
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, 7] = np.nan
    x = x.astype(dtype)
    scale = np.ones(k, np.float32)
    eye = np.eye(k, dtype=np.float32).astype(dtype)
    for gating, params in (("topk", {"k": 3}), ("threshold", {"threshold": 100.0})):
        y = run(provider_session(wina_model(eye, scale, gating=gating, **params), provider), x)
        expected = reference.wina_sparse_matmul(x, eye, scale, **params)
        np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))
        assert np.isnan(y.astype(np.float32)[:, 7]).all()
    # A NaN score scale ranks as +inf too.
    nan_scale = scale.copy()
    nan_scale[3] = np.nan
    y = run(provider_session(wina_model(eye, nan_scale, gating="topk", k=1), provider), x)
    np.testing.assert_array_equal(
        y.astype(np.float32), reference.wina_sparse_matmul(x, eye, nan_scale, k=1).astype(np.float32)
    )


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("provider", providers())
def test_result_is_deterministic(provider, dtype_name):
    """The same input gives the same bits, one token and many (CUDA: no atomics on the data,
    decode and prefill)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(6)
    b, scale = make_weights(rng, 2048, 512, dtype)
    sess = provider_session(wina_model(b, scale, gating="topk", k=700, x_rank=None), provider)
    for m in (1, 4, 33):
        x = rng.standard_normal((m, 2048)).astype(np.float32).astype(dtype)
        y1, y2 = run(sess, x), run(sess, x)
        np.testing.assert_array_equal(y1.view(np.uint8), y2.view(np.uint8))


@pytest.mark.parametrize("provider", providers())
def test_scalar_inputs_of_shape_one(provider):
    rng = np.random.default_rng(9)
    b, scale = make_weights(rng, 50, 20, np.float32)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    y = run(provider_session(wina_model(b, scale, gating="topk", k=np.array([10])), provider), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, k=10), "float32")
    model = wina_model(b, scale, gating="threshold", threshold=np.array([0.7], np.float32))
    y = run(provider_session(model, provider), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, threshold=0.7), "float32")


@pytest.mark.parametrize("provider", providers())
def test_empty_feature_dimension(provider):
    b = np.zeros((0, 6), np.float32)
    scale = np.zeros(0, np.float32)
    bias = np.arange(6, dtype=np.float32)
    x = np.zeros((3, 0), np.float32)
    y = run(provider_session(wina_model(b, scale, gating="topk", k=2, bias=bias), provider), x)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (3, 6)))


@pytest.mark.parametrize("provider", providers())
def test_rank_one_x(provider):
    rng = np.random.default_rng(10)
    b, scale = make_weights(rng, 30, 8, np.float32)
    x = rng.standard_normal(30).astype(np.float32)
    y = run(provider_session(wina_model(b, scale, gating="topk", k=9, x_rank=None), provider), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, k=9), "float32")


# --- CPU only: instruction-set paths and intra-op threads ------------------------------


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 1536, 576), (1, 576, 1536), (64, 576, 1536), (13, 192, 576)])
@pytest.mark.parametrize("provider", providers(CPU))
def test_thread_count_does_not_change_result(provider, shape, dtype_name):
    m, k, n = shape
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(6)
    b, scale = make_weights(rng, k, n, dtype)
    x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
    model = wina_model(b, scale, gating="topk", k=k // 2)
    y1 = run(provider_session(model, provider, threads=1), x)
    y2 = run(provider_session(model, provider, threads=2), x)
    y4 = run(provider_session(model, provider, threads=4), x)
    np.testing.assert_array_equal(y1.view(np.uint8), y2.view(np.uint8))
    np.testing.assert_array_equal(y1.view(np.uint8), y4.view(np.uint8))
    assert_close(y1, reference.wina_sparse_matmul(x, b, scale, k=k // 2), dtype_name)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ISAS}))
def test_every_instruction_set_path(provider, isa, dtype_name):
    """WINA_ONNX_ISA caps the kernels chosen at session creation (falls back on older CPUs)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(8)
    for k, n in ((17, 3), (64, 77), (300, 129), (1000, 1000)):
        b, scale = make_weights(rng, k, n, dtype)
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
        for gating, params in (("topk", {"k": k // 3}), ("threshold", {"threshold": 0.5})):
            sess = provider_session(wina_model(b, scale, gating=gating, bias=bias, **params), provider, isa=isa)
            for m in (1, 2, 11, 40):
                x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
                expected = reference.wina_sparse_matmul(x, b, scale, bias=bias, **params)
                assert_close(run(sess, x), expected, dtype_name, f"{isa} K={k} N={n} M={m}")


# --- CUDA only: the provider itself, the wide-output plans, agreement with the CPU kernel ---


@pytest.mark.parametrize("provider", providers(CUDA))
def test_runs_on_the_cuda_provider(provider):
    """With CPU fallback off, the session only builds and runs if the CUDA kernel is registered."""
    rng = np.random.default_rng(0)
    b, scale = make_weights(rng, 32, 16, np.float16)
    sess = provider_session(wina_model(b, scale, gating="threshold", threshold=0.5), provider)
    x = rng.standard_normal((2, 32)).astype(np.float16)
    assert_close(run(sess, x), reference.wina_sparse_matmul(x, b, scale, threshold=0.5), "float16")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("provider", providers(CUDA))
def test_wide_output_matches_reference(provider, dtype_name):
    """Outputs of 28 column tiles and K = 4096: on an sm_90 GPU of about 132 SMs (H100, H200) up
    to two tokens take the cluster plan (each tile's 8 K slabs added in the cluster's shared
    memory, no reduction kernel), three tokens the split-K plan; both against the oracle, with
    and without a bias, and bit-equal when run twice."""
    dtype = DTYPES[dtype_name]
    k, n = 4096, 28 * (512 if dtype_name != "float32" else 256)
    rng = np.random.default_rng(11)
    b, scale = make_weights(rng, k, n, dtype)
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    x_all = rng.standard_normal((3, k)).astype(np.float32).astype(dtype)
    for gating, with_bias in (("threshold", True), ("topk", False)):
        params = gating_for(gating, 0.5, x_all, scale)
        sess = provider_session(
            wina_model(b, scale, gating=gating, bias=bias if with_bias else None, x_rank=None, **params), provider
        )
        for m in (1, 2, 3):
            x = x_all[:m]
            y = run(sess, x)
            expected = reference.wina_sparse_matmul(x, b, scale, bias=bias if with_bias else None, **params)
            assert_close(y, expected, dtype_name, f"{gating} bias={with_bias} m={m}")
            np.testing.assert_array_equal(run(sess, x).view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("provider", providers(CUDA))
def test_matches_the_cpu_kernel(provider):
    """Same model, same input, CPU and CUDA providers: equal within fp16 tolerance."""
    rng = np.random.default_rng(7)
    b, scale = make_weights(rng, 1536, 576, np.float16)
    for gating, params in (("topk", {"k": 500}), ("threshold", {"threshold": 0.6})):
        model = wina_model(b, scale, gating=gating, x_rank=None, **params)
        cpu, gpu = session(model), provider_session(model, provider)
        for m in (1, 5, 40):
            x = rng.standard_normal((m, 1536)).astype(np.float16)
            assert_close(run(gpu, x), run(cpu, x), "float16", f"{gating} m={m}")


# --- errors: the same checks and messages on every provider --------------------------------


@pytest.mark.parametrize("provider", providers())
def test_error_missing_k_for_topk(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = error_message(run, wina_model(b, scale, gating="topk", threshold=0.5), np.ones((2, 8), np.float32), provider)
    assert "needs input 'k'" in msg and "missing" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_missing_threshold(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = error_message(run, wina_model(b, scale, gating="threshold", k=3), np.ones((2, 8), np.float32), provider)
    assert "needs input 'threshold'" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_bad_gating_attribute(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    msg = error_message(run, wina_model(b, scale, gating="top-k", k=3), np.ones((2, 8), np.float32), provider)
    assert "unknown gating 'top-k'" in msg
    msg = error_message(run, wina_model(b, scale, gating=None, k=3), np.ones((2, 8), np.float32), provider)
    assert "attribute 'gating' is missing" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_b_rank(provider):
    b = np.ones((8, 4, 2), np.float32)
    scale = np.ones(8, np.float32)
    model = wina_model(b, scale, gating="topk", k=3, x_rank=None)
    msg = error_message(run, model, np.ones((2, 8), np.float32), provider)
    assert "input 'B' (index 1) must be a 2-D [K, N] weight" in msg and "rank 3" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_k_mismatch(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    model = wina_model(b, scale, gating="topk", k=3, x_rank=None)
    msg = error_message(run, model, np.ones((2, 9), np.float32), provider)
    assert "shape mismatch" in msg and "input 'B'" in msg and "last dimension = 9" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_score_scale_shape(provider):
    b, _ = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    model = wina_model(b, np.ones(7, np.float32), gating="topk", k=3)
    msg = error_message(run, model, np.ones((2, 8), np.float32), provider)
    assert "input 'score_scale' (index 2) must have shape [8]" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_bias_shape(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    model = wina_model(b, scale, gating="topk", k=3, bias=np.ones(5, np.float32))
    msg = error_message(run, model, np.ones((2, 8), np.float32), provider)
    assert "input 'bias' (index 5) must have shape [4]" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_k_not_scalar(provider):
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    model = wina_model(b, scale, gating="topk", k=np.array([3, 4]))
    msg = error_message(run, model, np.ones((2, 8), np.float32), provider)
    assert "input 'k' (index 4) must be a scalar" in msg


@pytest.mark.parametrize("other", ["B", "bias"])
@pytest.mark.parametrize("provider", providers())
def test_error_type_mismatch(provider, other):
    rng = np.random.default_rng(0)
    b, scale = make_weights(rng, 8, 4, np.float32)
    bias = np.ones(4, np.float32)
    if other == "B":
        b = b.astype(np.float16)
    else:
        bias = bias.astype(np.float16)
    model = wina_model(b, scale, gating="topk", k=3, bias=bias, x_dtype=np.float32)
    msg = error_message(run, model, np.ones((2, 8), np.float32), provider)
    # ORT's type check at session creation or ours at run time, both name the op.
    assert "WinaSparseMatMul" in msg
    assert "no kernel def matches" in msg or "has element type" in msg
