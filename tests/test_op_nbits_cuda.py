"""The CUDA kernels of `WinaSparseMatMulNBits` against the NumPy oracle and ONNX Runtime's MatMulNBits.

Single-op models on ONNX Runtime's CUDAExecutionProvider with CPU fallback disabled, so a
node without a CUDA kernel fails the session instead of running on the CPU. Covered: the fused
4-bit decode kernel (one and two tokens), the dequantize-then-GEMM path (more tokens), block
sizes 16 to 256, zero points absent / packed uint8 / float, float32 / float16 / bfloat16 X,
both gatings (top-k through the float op's select kernel), and at sparsity 0 ONNX Runtime's own
MatMulNBits on the same codes (re-packed column-major). Skipped (with the reason) where
onnxruntime has no CUDAExecutionProvider.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip(
        "onnxruntime has no CUDAExecutionProvider (CPU-only build or no GPU): install "
        "onnxruntime-gpu on a machine with an NVIDIA GPU to run the CUDA 4-bit op tests",
        allow_module_level=True,
    )

from helpers.nbits_models import matmul_nbits_model  # noqa: E402
from helpers.op_models import DTYPES, TOLERANCE, assert_close, finish_model, onnx_type, run, session  # noqa: E402

from wina_onnx import reference, schema  # noqa: E402
from wina_onnx.passes import nbits  # noqa: E402

pytestmark = pytest.mark.gpu

ZERO_KINDS = ("none", "uint8", "float")
BLOCKS = (16, 32, 64, 128, 256)
# Tokens: none, the fused decode kernel (1, 2), the dequantize-then-GEMM path (more).
TOKENS = (0, 1, 2, 3, 17)


def _load_cuda_libraries():
    """Make the CUDA 13 libraries of the CUDA EP loadable (torch's, else ORT's preload)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()


_load_cuda_libraries()


def cuda_session(model: onnx.ModelProto):
    sess = session(model, providers=["CUDAExecutionProvider"], config={"session.disable_cpu_ep_fallback": "1"})
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    return sess


def random_weight(rng: np.random.Generator, k: int, n: int, block: int, zero_kind: str, dtype) -> nbits.FeatureMajor:
    """Random feature-major codes, scales (T) and zero points of the given kind."""
    blocks, half = -(-k // block), -(-n // 2)
    codes = rng.integers(0, 256, (k, half), dtype=np.uint8)
    scales = (rng.standard_normal((blocks, n)) * 0.1).astype(np.float32).astype(dtype)
    zeros = None
    if zero_kind == "uint8":
        zeros = rng.integers(0, 256, (blocks, half), dtype=np.uint8)
    elif zero_kind == "float":
        zeros = rng.uniform(0.0, 15.0, (blocks, n)).astype(np.float32).astype(dtype)
    return nbits.FeatureMajor(codes, scales, zeros, k, n, block)


def nbits_model(weight: nbits.FeatureMajor, score_scale: np.ndarray, dtype, *, gating: str,
                threshold: float | None = None, k: int | None = None, bias: np.ndarray | None = None):
    """Y = WinaSparseMatMulNBits(X, ...): X [..., K] a graph input, everything else initializers."""
    elem = onnx_type(dtype)
    inits = [numpy_helper.from_array(weight.codes, "B"), numpy_helper.from_array(weight.scales, "scales"),
             numpy_helper.from_array(score_scale.astype(np.float32), "score_scale")]
    inputs = ["X", "B", "scales", "", "score_scale", "", "", ""]
    if weight.zero_points is not None:
        inits.append(numpy_helper.from_array(weight.zero_points, "zero_points"))
        inputs[schema.NBITS_INPUT_ZERO_POINTS] = "zero_points"
    if gating == "topk":
        inits.append(numpy_helper.from_array(np.array(k, np.int64), "k"))
        inputs[schema.NBITS_INPUT_K] = "k"
    else:
        inits.append(numpy_helper.from_array(np.array(threshold, np.float32), "threshold"))
        inputs[schema.NBITS_INPUT_THRESHOLD] = "threshold"
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs[schema.NBITS_INPUT_BIAS] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(schema.NBITS_OP_TYPE, inputs, ["Y"], name="gate", domain=schema.DOMAIN,
                            gating=gating, K=weight.k, N=weight.n, bits=4, block_size=weight.block_size)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("X", elem, None)],
                              [helper.make_tensor_value_info("Y", elem, None)], inits)
    return finish_model(graph)


def oracle(x, weight: nbits.FeatureMajor, score_scale, bias=None, **params) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, score_scale,
                                                  block_size=weight.block_size, n=weight.n, bias=bias, **params)


def gating_for(gating: str, sparsity: float, x: np.ndarray, score_scale: np.ndarray) -> dict:
    """The gating input that masks about `sparsity` of the features of x."""
    if gating == "topk":
        return {"k": int(round((1.0 - sparsity) * x.shape[-1]))}
    if sparsity == 0.0:
        return {"threshold": -1.0}
    scores = reference.gate_scores(x, score_scale)
    finite = scores[np.isfinite(scores)]
    return {"threshold": float(np.quantile(finite, sparsity)) if finite.size else 0.0}


# (K, N) per block size: N odd (a half-used last byte) and not a multiple of 32 (byte loads),
# K off the block size, and shapes wide and deep enough for several column tiles and K slabs.
SHAPES = {16: ((40, 77), (1000, 576)), 32: ((96, 64), (4096, 1056)), 64: ((300, 1000), (2048, 513)),
          128: ((1, 33), (1500, 2048)), 256: ((257, 130), (3000, 640))}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("zero_kind", ZERO_KINDS)
@pytest.mark.parametrize("block", BLOCKS)
def test_matches_oracle(block, zero_kind, dtype_name):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(block * 7 + ZERO_KINDS.index(zero_kind) * 3 + list(DTYPES).index(dtype_name))
    for k, n in SHAPES[block]:
        weight = random_weight(rng, k, n, block, zero_kind, dtype)
        score_scale = weight.row_norms()
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
        x_all = rng.standard_normal((max(TOKENS), k)).astype(np.float32).astype(dtype)
        for gi, gating in enumerate(("topk", "threshold")):
            for si, sparsity in enumerate((0.0, 0.5, 0.9)):
                with_bias = (gi + si) % 2 == 0
                params = gating_for(gating, sparsity, x_all, score_scale)
                sess = cuda_session(nbits_model(weight, score_scale, dtype, gating=gating,
                                                bias=bias if with_bias else None, **params))
                for m in TOKENS:
                    x = x_all[:m]
                    if m == 2:
                        x = x.reshape(1, 2, k)  # rank 3: every leading index is a token
                    want = oracle(x, weight, score_scale, bias=bias if with_bias else None, **params)
                    assert_close(run(sess, x), want, dtype_name,
                                 f"{k}x{n} G={block} zp={zero_kind} {gating} s={sparsity} bias={with_bias} X{x.shape}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 2, 9])
def test_ties_nan_and_empty_gates(m, dtype_name):
    """Few distinct magnitudes (ties at the k-th score), NaN in x (kept, propagates), and gates
    that keep nothing (the bias, or zeros)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(m)
    k, n = 200, 96
    weight = random_weight(rng, k, n, 32, "uint8", dtype)
    score_scale = rng.choice(np.array([0.5, 1.0, 2.0], np.float32), size=k)
    x = (rng.integers(-4, 5, size=(m, k)) * 0.5).astype(np.float32).astype(dtype)
    for kk in (1, 37, 100, 199):
        sess = cuda_session(nbits_model(weight, score_scale, dtype, gating="topk", k=kk))
        assert_close(run(sess, x), oracle(x, weight, score_scale, k=kk), dtype_name, f"k={kk}")
    xn = x.copy()
    xn[:, 5] = np.nan
    for params in ({"k": 50}, {"threshold": 0.6}):
        gating = "topk" if "k" in params else "threshold"
        y = run(cuda_session(nbits_model(weight, score_scale, dtype, gating=gating, **params)), xn)
        assert np.isnan(y.astype(np.float32)).all(), params  # feature 5 (score NaN = +inf) is kept
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": -5}, {"threshold": np.inf}, {"threshold": np.nan}):
        gating = "topk" if "k" in params else "threshold"
        y = run(cuda_session(nbits_model(weight, score_scale, dtype, gating=gating, **params)), x)
        np.testing.assert_array_equal(y.astype(np.float32), np.zeros((m, n), np.float32))
        y = run(cuda_session(nbits_model(weight, score_scale, dtype, gating=gating, bias=bias, **params)), x)
        np.testing.assert_array_equal(y, np.broadcast_to(bias, (m, n)))


@pytest.mark.parametrize("m", [1, 2, 5])
def test_repeated_runs_are_bit_equal(m):
    """No atomics on the data: the same call gives the same bits (split-K sums in a fixed order)."""
    rng = np.random.default_rng(11)
    weight = random_weight(rng, 4096, 1024, 32, "none", np.float16)
    score_scale = weight.row_norms()
    x = rng.standard_normal((m, 4096)).astype(np.float16)
    sess = cuda_session(nbits_model(weight, score_scale, np.float16, gating="threshold",
                                    **gating_for("threshold", 0.5, x, score_scale)))
    first = run(sess, x)
    for _ in range(3):
        np.testing.assert_array_equal(run(sess, x), first)


def matmul_nbits_cuda(weight: nbits.FeatureMajor, dtype):
    """ONNX Runtime's own MatMulNBits on the CUDA provider, on the same codes (column-major again)."""
    b, scales, zeros = nbits.column_major(weight)
    model = matmul_nbits_model(b, scales, zeros, k=weight.k, n=weight.n, block_size=weight.block_size, dtype=dtype)
    try:
        return cuda_session(model)
    except Exception as e:  # noqa: BLE001 (ORT's CUDA MatMulNBits does not take every type)
        pytest.skip(f"ONNX Runtime's CUDA MatMulNBits refused this case: {e}")


@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
@pytest.mark.parametrize("zero_kind", ZERO_KINDS)
@pytest.mark.parametrize("block", [32, 128])
def test_sparsity_zero_equals_matmul_nbits(block, zero_kind, dtype_name):
    """Re-packing is lossless: with nothing masked the op gives MatMulNBits' product on CUDA on
    the same codes, within float tolerance plus MatMulNBits' own distance from the exact product
    (ONNX Runtime 1.31's CUDA kernel with float32 X and float zero points is 2e-4 of the scale
    off the float32 product that the oracle and its CPU kernel compute)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(block + len(zero_kind))
    k, n = 1024, 768
    weight = random_weight(rng, k, n, block, zero_kind, dtype)
    score_scale = weight.row_norms()
    theirs = matmul_nbits_cuda(weight, dtype)
    for gating, params in (("threshold", {"threshold": -1.0}), ("topk", {"k": k})):
        ours = cuda_session(nbits_model(weight, score_scale, dtype, gating=gating, **params))
        for m in (1, 2, 7):
            x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
            exact = oracle(x, weight, score_scale, **params).astype(np.float32)
            want = theirs.run(None, {"x": x})[0].astype(np.float32)
            got = run(ours, x).astype(np.float32)
            scale = max(float(np.abs(exact).max()), 1e-3)
            theirs_off = float(np.abs(want - exact).max())
            assert theirs_off <= 1e-2 * scale, f"MatMulNBits itself is off: {theirs_off} of {scale}"
            assert_close(got.astype(dtype), exact.astype(dtype), dtype_name, f"{gating} m={m} (oracle)")
            diff = float(np.abs(got - want).max())
            assert diff <= TOLERANCE[dtype_name] * scale + theirs_off, (
                f"{gating} m={m}: {diff} from MatMulNBits, which is {theirs_off} from exact (scale {scale})")


def test_model_input_types_are_checked():
    """A float zero point of another type than X is refused in one line (the CPU op's checks)."""
    rng = np.random.default_rng(5)
    weight = random_weight(rng, 64, 32, 32, "float", np.float32)
    score_scale = weight.row_norms()
    model = nbits_model(weight, score_scale, np.float16, gating="threshold", threshold=0.1)
    with pytest.raises(Exception, match=r"(?i)zero|type"):
        sess = cuda_session(model)
        run(sess, np.zeros((1, 64), np.float16))


def test_large_k_topk():
    """K past the select kernel's register variants (more than 16384 features)."""
    rng = np.random.default_rng(8)
    k, n = 17000, 64
    weight = random_weight(rng, k, n, 128, "none", np.float16)
    score_scale = np.ones(k, np.float32)
    x = (rng.integers(-3, 4, size=(2, k)) * 0.25).astype(np.float16)
    for kk in (1, k // 3, k - 1):
        sess = cuda_session(nbits_model(weight, score_scale, np.float16, gating="topk", k=kk))
        assert_close(run(sess, x), oracle(x, weight, score_scale, k=kk), "float16", f"k={kk}")

