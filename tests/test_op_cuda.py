"""The CUDA kernels of `WinaSparseMatMul` against the NumPy oracle.

Runs single-op models (tests/helpers/op_models.py) on ONNX Runtime's CUDAExecutionProvider
with CPU fallback disabled, so a node that had no CUDA kernel would fail the session
instead of silently running the CPU kernel. Skipped (with the reason) where
onnxruntime has no CUDAExecutionProvider: CI and CPU-only machines.

The kernels have three paths, all covered here: the fused decode kernel (up to 8
tokens), the prefill path (more tokens), and the top-k select before either, whose
keys live in registers up to K = 16384 and are re-read from memory above.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip(
        "onnxruntime has no CUDAExecutionProvider (CPU-only build or no GPU): install "
        "onnxruntime-gpu on a machine with an NVIDIA GPU to run the CUDA op tests",
        allow_module_level=True,
    )

from wina_onnx import reference  # noqa: E402

from helpers.op_models import DTYPES, assert_close, run, session, wina_model  # noqa: E402

pytestmark = pytest.mark.gpu

# Token counts: empty, decode (1 to 8 tokens in the fused kernel), prefill (more).
TOKENS = (0, 1, 3, 8, 9, 64)
# (K, N): K and N off the block sizes (64-column thread groups x 16-byte vectors,
# 32-row slabs, 1024-key select blocks); 5000 and 20000 take the other top-k variants;
# N = 77 and 3 take the unvectorised path in every dtype.
SHAPES = ((1, 1), (17, 3), (64, 77), (192, 1000), (1000, 576), (5000, 264), (20000, 40))
SPARSITIES = (0.0, 0.5, 0.9)


def _load_cuda_libraries():
    """Make the CUDA 13 libraries of the CUDA EP loadable (torch's, else ORT's preload)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()


_load_cuda_libraries()


def cuda_session(model):
    sess = session(
        model,
        providers=["CUDAExecutionProvider"],
        config={"session.disable_cpu_ep_fallback": "1"},
    )
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    return sess


def make_weights(rng, k, n, dtype):
    b = (rng.standard_normal((k, n)) / np.sqrt(max(k, 1))).astype(np.float32).astype(dtype)
    return b, reference.weight_row_norms(b)


def gating_for(gating, sparsity, x, score_scale):
    """The gating input that masks about `sparsity` of the features of x."""
    if gating == "topk":
        return {"k": int(round((1.0 - sparsity) * x.shape[-1]))}
    if sparsity == 0.0:
        return {"threshold": -1.0}
    scores = reference.gate_scores(x, score_scale)
    finite = scores[np.isfinite(scores)]
    return {"threshold": float(np.quantile(finite, sparsity)) if finite.size else 0.0}



def test_runs_on_the_cuda_provider():
    """With CPU fallback off, the session only builds and runs if the CUDA kernel is registered
    (get_providers() still lists the CPU provider: ORT always appends it)."""
    rng = np.random.default_rng(0)
    b, scale = make_weights(rng, 32, 16, np.float16)
    sess = cuda_session(wina_model(b, scale, gating="threshold", threshold=0.5))
    x = rng.standard_normal((2, 32)).astype(np.float16)
    assert_close(run(sess, x), reference.wina_sparse_matmul(x, b, scale, threshold=0.5), "float16")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_reference(shape, dtype_name):
    k, n = shape
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(1000 * k + n)
    b, scale = make_weights(rng, k, n, dtype)
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    x_all = rng.standard_normal((max(TOKENS), k)).astype(np.float32).astype(dtype)
    for gi, gating in enumerate(("topk", "threshold")):
        for si, sparsity in enumerate(SPARSITIES):
            with_bias = (gi + si) % 2 == 0
            params = gating_for(gating, sparsity, x_all, scale)
            sess = cuda_session(
                wina_model(b, scale, gating=gating, bias=bias if with_bias else None, x_rank=None, **params)
            )
            for m in TOKENS:
                x = x_all[:m]
                if m == 8:
                    x = x.reshape(2, 4, k)  # rank 3: every leading index is a token
                y = run(sess, x)
                expected = reference.wina_sparse_matmul(x, b, scale, bias=bias if with_bias else None, **params)
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
    x = (rng.integers(-4, 5, size=(20, k)) * 0.5).astype(np.float32).astype(dtype)
    scale = rng.choice(np.array([0.5, 1.0, 2.0], dtype=np.float32), size=k)
    for sparsity in (0.1, 0.5, 0.7, 0.9):
        params = gating_for(gating, sparsity, x, scale)
        sess = cuda_session(wina_model(b, scale, gating=gating, **params))
        for m in (1, 2, 9, 20):
            y = run(sess, x[:m])
            expected = reference.wina_sparse_matmul(x[:m], b, scale, **params)
            np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("k", [3000, 17000])
def test_topk_ties_at_large_k(k):
    """Top-k ties across select chunks, in the register and the re-reading variant."""
    rng = np.random.default_rng(k)
    x = (rng.integers(-3, 4, size=(10, k)) * 0.25).astype(np.float32)
    b = rng.standard_normal((k, 8)).astype(np.float32)
    scale = np.ones(k, np.float32)
    for kk in (1, k // 3, k // 2, k - 1):
        sess = cuda_session(wina_model(b, scale, gating="topk", k=kk))
        for m in (1, 10):
            y = run(sess, x[:m])
            assert_close(y, reference.wina_sparse_matmul(x[:m], b, scale, k=kk), "float32", f"k={kk} m={m}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 3, 20])
def test_all_masked_gives_bias(m, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(3)
    b, scale = make_weights(rng, 100, 70, dtype)
    bias = rng.standard_normal(70).astype(np.float32).astype(dtype)
    x = rng.standard_normal((m, 100)).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": -5}, {"threshold": np.inf}, {"threshold": np.nan}):
        gating = "topk" if "k" in params else "threshold"
        y = run(cuda_session(wina_model(b, scale, gating=gating, **params)), x)
        np.testing.assert_array_equal(y.astype(np.float32), np.zeros((m, 70), np.float32))
        y = run(cuda_session(wina_model(b, scale, gating=gating, bias=bias, **params)), x)
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
        y = run(cuda_session(wina_model(b, scale, gating=gating, **params)), x)
        assert_close(y, dense, dtype_name, str(params))


@pytest.mark.parametrize("m", [1, 6, 12])
def test_ties_at_the_kth_score_keep_lower_indices(m):
    k = 12
    x = np.tile(np.array([1, -3, 2, -2, 2, 3, -2, 1, 2, 0, -3, 2], np.float32), (m, 1))
    b = np.eye(k, dtype=np.float32)
    scale = np.ones(k, np.float32)
    y = run(cuda_session(wina_model(b, scale, gating="topk", k=5)), x)
    expected = np.zeros_like(x)
    expected[:, [1, 5, 10, 2, 3]] = x[:, [1, 5, 10, 2, 3]]
    np.testing.assert_array_equal(y, expected)
    # -0.0 and +0.0 scores tie as well.
    x0 = np.zeros((m, k), np.float32)
    x0[:, ::2] = -0.0
    neg_scale = -np.ones(k, np.float32)
    y0 = run(cuda_session(wina_model(b, neg_scale, gating="topk", k=5)), x0)
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
        y = run(cuda_session(wina_model(eye, scale, gating=gating, **params)), x)
        expected = reference.wina_sparse_matmul(x, eye, scale, **params)
        np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))
        assert np.isnan(y.astype(np.float32)[:, 7]).all()
    nan_scale = scale.copy()
    nan_scale[3] = np.nan  # a NaN score scale ranks as +inf too
    y = run(cuda_session(wina_model(eye, nan_scale, gating="topk", k=1)), x)
    np.testing.assert_array_equal(
        y.astype(np.float32), reference.wina_sparse_matmul(x, eye, nan_scale, k=1).astype(np.float32)
    )


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_wide_output_matches_reference(dtype_name):
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
        sess = cuda_session(
            wina_model(b, scale, gating=gating, bias=bias if with_bias else None, x_rank=None, **params)
        )
        for m in (1, 2, 3):
            x = x_all[:m]
            y = run(sess, x)
            expected = reference.wina_sparse_matmul(x, b, scale, bias=bias if with_bias else None, **params)
            assert_close(y, expected, dtype_name, f"{gating} bias={with_bias} m={m}")
            np.testing.assert_array_equal(run(sess, x).view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_result_is_deterministic(dtype_name):
    """No atomics on the data: the same input gives the same bits, decode and prefill."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(6)
    b, scale = make_weights(rng, 2048, 512, dtype)
    sess = cuda_session(wina_model(b, scale, gating="topk", k=700, x_rank=None))
    for m in (1, 4, 33):
        x = rng.standard_normal((m, 2048)).astype(np.float32).astype(dtype)
        y1, y2 = run(sess, x), run(sess, x)
        np.testing.assert_array_equal(y1.view(np.uint8), y2.view(np.uint8))


def test_matches_the_cpu_kernel():
    """Same model, same input, CPU and CUDA providers: equal within fp16 tolerance."""
    rng = np.random.default_rng(7)
    b, scale = make_weights(rng, 1536, 576, np.float16)
    for gating, params in (("topk", {"k": 500}), ("threshold", {"threshold": 0.6})):
        model = wina_model(b, scale, gating=gating, x_rank=None, **params)
        cpu, gpu = session(model), cuda_session(model)
        for m in (1, 5, 40):
            x = rng.standard_normal((m, 1536)).astype(np.float16)
            assert_close(run(gpu, x), run(cpu, x), "float16", f"{gating} m={m}")


def test_empty_feature_dimension_and_rank_one():
    b = np.zeros((0, 6), np.float32)
    bias = np.arange(6, dtype=np.float32)
    y = run(cuda_session(wina_model(b, np.zeros(0, np.float32), gating="topk", k=2, bias=bias)), np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (3, 6)))
    rng = np.random.default_rng(10)
    b, scale = make_weights(rng, 30, 8, np.float32)
    x = rng.standard_normal(30).astype(np.float32)
    y = run(cuda_session(wina_model(b, scale, gating="topk", k=9, x_rank=None)), x)
    assert_close(y, reference.wina_sparse_matmul(x, b, scale, k=9), "float32")


def test_errors_are_reported_like_the_cpu_op():
    b, scale = make_weights(np.random.default_rng(0), 8, 4, np.float32)
    with pytest.raises(Exception) as info:
        run(cuda_session(wina_model(b, scale, gating="topk", threshold=0.5)), np.ones((2, 8), np.float32))
    assert "needs input 'k'" in str(info.value)
    with pytest.raises(Exception) as info:
        run(cuda_session(wina_model(b, scale, gating="topk", k=3, x_rank=None)), np.ones((2, 9), np.float32))
    assert "shape mismatch" in str(info.value)
