"""`WinaSparseMatMulNBits` (4-bit weights) on each execution provider against the NumPy oracle
wina_onnx.reference.wina_sparse_matmul_nbits and against ONNX Runtime's MatMulNBits.

Every test takes a `provider` (tests/helpers/providers.py): "cpu" always runs; "cuda" is
marked `gpu`, runs with the CPU fallback disabled (a node without a CUDA kernel fails instead
of running on the CPU) and skips with the reason where ONNX Runtime has no CUDA provider or no
GPU. Models, weights and the oracle: tests/helpers/nbits_op_models.py.

Cases that belong to one provider are parametrized over it only, so their ids name it:
* CPU: every instruction-set path (WINA_ONNX_ISA), block sizes 16 to 512, zero points absent /
  packed uint8 / float, float32 / float16 / bfloat16, both gatings, 0, 1 and many tokens, and
  accuracy_level 0 (float arithmetic) and 4 (the decode, which also runs up to 8 tokens one by
  one, quantizes x to int8 per block with AVX2 or AVX-512 VNNI; its error is checked against
  the bound that quantization allows), and the thread pool's size;
* CUDA: the fused 4-bit decode kernel (one and two tokens) and the dequantize-then-GEMM path
  (more) for block sizes 16 to 256 on shapes of several column tiles and K slabs (top-k goes
  through the float op's select kernel).
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ort = pytest.importorskip("onnxruntime")

from helpers.nbits_models import initializers, matmul_nbits_model, nbits_node, quantized_matmul  # noqa: E402
from helpers.nbits_op_models import (  # noqa: E402
    ZERO_KINDS, assert_within, gating_params, int8_error_bound, nbits_model, oracle, random_weight, run_op,
)
from helpers.op_models import DTYPES, TOLERANCE, assert_close, gating_for  # noqa: E402
from helpers.providers import CPU, CUDA, ISAS, provider_cases, provider_session, providers  # noqa: E402

from wina_onnx.passes import nbits  # noqa: E402

EXAMPLES = int(os.environ.get("WINA_ONNX_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("WINA_ONNX_HYPOTHESIS_RANDOM") != "1",
)
# Cases with an instruction-set cap: each CPU path, and the CUDA kernels (no cap).
ISA_CASES = provider_cases({CPU: ISAS, CUDA: [None]}, name=lambda isa: isa or "default")


def gating_param(gating: str, sparsity: float, x: np.ndarray, score_scale: np.ndarray):
    """The k or threshold that masks about `sparsity` of x's features."""
    (value,) = gating_for(gating, sparsity, x, score_scale).values()
    return value


# --- the oracle over shapes, layouts, dtypes and paths ----------------------------------

# CPU (K, N, block): odd N, K not a multiple of the block, K smaller than the block, one block,
# a block larger than the int8 path takes (512).
CPU_SHAPES = ((1, 1, 16), (5, 3, 16), (17, 33, 16), (31, 65, 32), (64, 128, 32), (96, 257, 64), (40, 96, 128),
              (300, 129, 256), (576, 1536, 32), (200, 31, 16), (1100, 20, 512))
CPU_TOKENS = ((0,), (1,), (1, 1), (5,), (2, 4), (2, 19), (40,))


@pytest.mark.parametrize("accuracy_level", [0, 4])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ISAS}))
def test_matches_oracle_on_each_instruction_set(provider: str, isa: str, dtype_name: str, accuracy_level: int) -> None:
    dtype = DTYPES[dtype_name]
    for case, (k, n, block) in enumerate(CPU_SHAPES):
        rng = np.random.default_rng(case)
        zero_kind = ZERO_KINDS[case % 3]
        weight = random_weight(rng, k, n, block, zero_kind, dtype)
        score_scale = weight.row_norms()
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype) if case % 2 else None
        for gating in ("topk", "threshold"):
            sess = provider_session(nbits_model(weight, score_scale, gating=gating, dtype=dtype,
                                                accuracy_level=accuracy_level, bias=bias), provider, isa=isa)
            for lead in CPU_TOKENS:
                x = rng.standard_normal((*lead, k)).astype(np.float32).astype(dtype)
                for sparsity in (0.0, 0.5, 0.9):
                    param = gating_param(gating, sparsity, x, score_scale)
                    params = gating_params(gating, param)
                    y = run_op(sess, x, gating, param)
                    want = oracle(x, weight, score_scale, bias, **params)
                    extra = 0.0
                    if accuracy_level == 4:  # up to a few tokens run the (int8) decode each
                        extra = int8_error_bound(x, weight, score_scale, **params)
                    assert_within(y, want, dtype_name, f"{isa} K={k} N={n} G={block} zp={zero_kind} {gating} "
                                  f"s={sparsity} lead={lead} acc={accuracy_level}", extra)


@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ["avx2", "avx512"]}))
def test_int8_path_is_not_the_float_path(provider: str, isa: str) -> None:
    """With AVX2, or AVX-512 with VNNI and VBMI, the one-token path at accuracy_level 4
    quantizes x: its result differs from level 0's (so the tests above exercise it) yet
    stays in the bound."""
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    needs = {"avx2": ["avx2", "fma", "f16c"], "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                                                        "avx512vbmi"]}[isa]
    if not all(flag in flags for flag in needs):
        pytest.skip(f"this CPU lacks one of {needs}: accuracy_level 4 runs another path")
    rng = np.random.default_rng(5)
    weight = random_weight(rng, 256, 512, 32, "none", np.float32)
    score_scale = weight.row_norms()
    x = rng.standard_normal((1, 256)).astype(np.float32)
    ys = [run_op(provider_session(nbits_model(weight, score_scale, gating="topk", dtype=np.float32,
                                              accuracy_level=level), provider, isa=isa), x, "topk", 128)
          for level in (0, 4)]
    assert not np.array_equal(ys[0], ys[1])
    assert_within(ys[1], ys[0], "float32", "int8 vs float", int8_error_bound(x, weight, score_scale, k=128))


@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ISAS}))
def test_threads_do_not_change_the_result(provider: str, isa: str) -> None:
    """The decode split depends on the shapes and the kept set only, not on the pool size."""
    rng = np.random.default_rng(11)
    weight = random_weight(rng, 1024, 1000, 32, "uint8", np.float32)
    score_scale = weight.row_norms()
    model = nbits_model(weight, score_scale, gating="threshold", dtype=np.float32, accuracy_level=4)
    for lead in ((1,), (33,)):
        x = rng.standard_normal((*lead, 1024)).astype(np.float32)
        ys = [run_op(provider_session(model, provider, threads=threads, isa=isa), x, "threshold", 0.3)
              for threads in (1, 2, 3)]
        assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])


@pytest.mark.parametrize("provider", providers())
def test_non_finite_x_gives_non_finite_outputs(provider: str) -> None:
    """A kept NaN or inf makes every output of its token non-finite, as in the oracle (the
    per-block factoring s * (sum x c - z sum x) may turn the oracle's inf into NaN)."""
    rng = np.random.default_rng(3)
    weight = random_weight(rng, 64, 40, 16, "float", np.float32)
    score_scale = weight.row_norms()
    for level in (0, 4):
        sess = provider_session(nbits_model(weight, score_scale, gating="topk", dtype=np.float32,
                                            accuracy_level=level), provider)
        for lead in ((1,), (6,)):
            x = rng.standard_normal((*lead, 64)).astype(np.float32)
            x.reshape(-1, 64)[0, 7] = np.inf
            x.reshape(-1, 64)[-1, 40] = np.nan
            y = run_op(sess, x, "topk", 32)
            want = oracle(x, weight, score_scale, k=32)
            np.testing.assert_array_equal(np.isfinite(y), np.isfinite(want))
            rows = np.isfinite(want).all(axis=-1)  # tokens without a kept NaN or inf
            assert (~rows).sum() == (1 if lead == (1,) else 2)
            if rows.any():
                extra = int8_error_bound(x[rows], weight, score_scale, k=32) if level == 4 else 0.0
                assert_within(y[rows], want[rows], "float32", f"finite tokens, level {level}", extra)


# --- sparsity 0 is ONNX Runtime's MatMulNBits --------------------------------------------


@pytest.mark.parametrize("k, n, block, symmetric, hqq", [
    (64, 96, 32, True, False), (100, 33, 16, False, False), (130, 70, 64, False, True), (576, 192, 32, True, False),
    (40, 24, 128, False, False), (300, 50, 256, True, False),
])
@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ISAS}))
def test_sparsity_zero_equals_matmul_nbits_of_quantizer_models(provider: str, isa: str, k: int, n: int, block: int,
                                                                symmetric: bool, hqq: bool) -> None:
    """The model MatMulNBitsQuantizer writes, re-packed by the pass, gives MatMulNBits'
    output (accuracy_level 0) within float accumulation tolerance when nothing is masked."""
    model = quantized_matmul(k, n, block_size=block, symmetric=symmetric, hqq=hqq, seed=k + n)
    node = nbits_node(model)
    source = nbits.read_source(node, initializers(model), set())
    assert not isinstance(source, str), source
    weight = nbits.load_feature_major(source, initializers(model))
    reference_model = matmul_nbits_model(*nbits.column_major(weight), k=k, n=n, block_size=block)
    ref_sess = ort.InferenceSession(reference_model.SerializeToString(), providers=["CPUExecutionProvider"])
    score_scale = weight.row_norms()
    sess = provider_session(nbits_model(weight, score_scale, gating="topk", dtype=np.float32), provider, isa=isa)
    rng = np.random.default_rng(k)
    for lead in ((1,), (7,), (2, 33)):
        x = rng.standard_normal((*lead, k)).astype(np.float32)
        want = ref_sess.run(None, {"x": x})[0]
        got = run_op(sess, x, "topk", k)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize(("provider", "isa"), provider_cases({CPU: ISAS}))
def test_sparsity_zero_equals_matmul_nbits_in_float16(provider: str, isa: str) -> None:
    """float16 activations and scales (a GPU-style model on the CPU): the same, within float16 rounding."""
    k, n, block = 160, 21, 32
    model = quantized_matmul(k, n, block_size=block, dtype=np.float16, seed=5)
    source = nbits.read_source(nbits_node(model), initializers(model), set())
    assert not isinstance(source, str), source
    weight = nbits.load_feature_major(source, initializers(model))
    assert weight.scales.dtype == np.float16
    ref_sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = provider_session(nbits_model(weight, weight.row_norms(), gating="threshold", dtype=np.float16), provider,
                            isa=isa)
    for lead in ((1,), (4,), (3, 11)):
        x = np.random.default_rng(len(lead)).standard_normal((*lead, k)).astype(np.float16)
        want = ref_sess.run(None, {"x": x})[0].astype(np.float32)
        got = run_op(sess, x, "threshold", -1.0).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * float(np.abs(want).max()))


# --- one clear line for bad nodes and inputs ----------------------------------------------


@pytest.mark.parametrize("attrs, message", [
    ({"bits": 8}, "only 4-bit weights"),
    ({"block_size": 24}, "power of two of 16 or more"),
    ({"block_size": 8}, "power of two of 16 or more"),
    ({"accuracy_level": 7}, "accuracy_level=7 must be in 0..4"),
    ({"K": -1}, "must be >= 0"),
])
@pytest.mark.parametrize("provider", providers())
def test_bad_attributes_are_refused_in_one_line(provider: str, attrs: dict, message: str) -> None:
    rng = np.random.default_rng(0)
    weight = random_weight(rng, 32, 8, 16, "none", np.float32)
    with pytest.raises(Exception) as info:
        provider_session(nbits_model(weight, weight.row_norms(), gating="topk", dtype=np.float32, attrs=attrs), provider)
    text = str(info.value)
    assert message in text and "WinaSparseMatMulNBits node 'gate'" in text and "\n" not in text.strip()


@pytest.mark.parametrize("provider", providers())
def test_shapes_that_do_not_fit_the_attributes_are_refused_in_one_line(provider: str) -> None:
    rng = np.random.default_rng(0)
    good = random_weight(rng, 40, 10, 16, "uint8", np.float32)
    score_scale = good.row_norms()
    cases = [
        (nbits.FeatureMajor(good.codes[:, :4], good.scales, None, 40, 10, 16), "input 'B' (index 1) must have shape [40, 5]"),
        (nbits.FeatureMajor(good.codes, good.scales[:2], None, 40, 10, 16), "input 'scales' (index 2) must have shape [3, 10]"),
        (nbits.FeatureMajor(good.codes, good.scales, good.zero_points[:, :2], 40, 10, 16),
         "input 'zero_points' (index 3) must have shape [3, 5]"),
        (nbits.FeatureMajor(good.codes, good.scales, np.zeros((3, 9), np.float32), 40, 10, 16),
         "input 'zero_points' (index 3) must have shape [3, 10]"),
        (nbits.FeatureMajor(good.codes, good.scales, np.zeros((3, 10), np.int32), 40, 10, 16), "must be uint8 or float32"),
    ]
    for weight, message in cases:
        sess = provider_session(nbits_model(weight, score_scale, gating="topk", dtype=np.float32), provider)
        with pytest.raises(Exception) as info:
            run_op(sess, rng.standard_normal((1, 40)).astype(np.float32), "topk", 3)
        text = str(info.value)
        assert message in text and "block_size=16" in text or "must be uint8" in text, text
        assert text.count("WinaSparseMatMulNBits node 'gate'") == 1
    sess = provider_session(nbits_model(good, score_scale, gating="topk", dtype=np.float32), provider)
    with pytest.raises(Exception, match="last dimension must be the attribute K=40"):
        run_op(sess, rng.standard_normal((1, 41)).astype(np.float32), "topk", 3)


# --- properties (hypothesis) ----------------------------------------------------------------


@st.composite
def nbits_cases(draw):
    dtype_name = draw(st.sampled_from(list(DTYPES)))
    k = draw(st.one_of(st.just(1), st.integers(1, 90)))
    n = draw(st.one_of(st.just(1), st.integers(1, 40)))
    block = draw(st.sampled_from([16, 32, 64, 128, 256]))
    zero_kind = draw(st.sampled_from(ZERO_KINDS))
    m = draw(st.integers(0, 6))
    lead = draw(st.sampled_from([(m,), (1, m), (m, 1)]))
    gating = draw(st.sampled_from(["topk", "threshold"]))
    accuracy_level = draw(st.sampled_from([0, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = DTYPES[dtype_name]
    weight = random_weight(rng, k, n, block, zero_kind, dtype)
    scale_kind = draw(st.sampled_from(["norms", "ones", "few"]))
    score_scale = {"norms": weight.row_norms(), "ones": np.ones(k, np.float32),
                   "few": rng.choice(np.float32([0.0, 0.5, 1.0]), size=k)}[scale_kind]
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    if draw(st.booleans()):  # exact ties and zeros
        x = np.where(rng.random(x.shape) < 0.5, rng.choice(np.float32([0.0, -0.0, 0.5, -1.0]), size=x.shape), x)
    x = x.astype(dtype)
    if gating == "topk":
        param = draw(st.integers(-2, k + 2))
    else:
        param = draw(st.sampled_from([-1.0, 0.0, 0.3, 1.0, float("inf"), float("nan")]))
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype) if draw(st.booleans()) else None
    return dtype_name, weight, score_scale, x, gating, param, bias, accuracy_level


@pytest.mark.parametrize(("provider", "isa"), ISA_CASES)
@PROPERTY
@given(case=nbits_cases())
def test_property_matches_oracle(provider: str, isa: str | None, case) -> None:
    dtype_name, weight, score_scale, x, gating, param, bias, accuracy_level = case
    sess = provider_session(nbits_model(weight, score_scale, gating=gating, dtype=DTYPES[dtype_name],
                                        accuracy_level=accuracy_level, bias=bias), provider, isa=isa)
    y = run_op(sess, x, gating, param)
    params = gating_params(gating, param)
    want = oracle(x, weight, score_scale, bias, **params)
    extra = int8_error_bound(x, weight, score_scale, **params) if accuracy_level == 4 else 0.0
    assert_within(y, want, dtype_name, f"{provider} {isa} K={weight.k} N={weight.n} G={weight.block_size} "
                  f"{gating}={param} acc={accuracy_level} x{x.shape}", extra)


@pytest.mark.parametrize("provider", providers())
def test_bfloat16_model_types(provider: str) -> None:
    """bfloat16 X, scales, float zero points and bias: one op object per type serves it."""
    rng = np.random.default_rng(9)
    dtype = np.dtype(ml_dtypes.bfloat16)
    weight = random_weight(rng, 48, 20, 16, "float", dtype)
    score_scale = weight.row_norms()
    bias = rng.standard_normal(20).astype(dtype)
    sess = provider_session(nbits_model(weight, score_scale, gating="threshold", dtype=dtype, bias=bias), provider)
    x = rng.standard_normal((3, 48)).astype(dtype)
    y = run_op(sess, x, "threshold", 0.5)
    assert y.dtype == dtype
    assert_within(y, oracle(x, weight, score_scale, bias, threshold=0.5), "bfloat16", "bf16")


# --- shared cases from the CUDA kernels' tests ------------------------------------------------


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m", [1, 2, 9])
@pytest.mark.parametrize("provider", providers())
def test_ties_nan_and_empty_gates(provider: str, m: int, dtype_name: str) -> None:
    """Few distinct magnitudes (ties at the k-th score), NaN in x (kept, propagates), and gates
    that keep nothing (the bias, or zeros)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(m)
    k, n = 200, 96
    weight = random_weight(rng, k, n, 32, "uint8", dtype)
    score_scale = rng.choice(np.array([0.5, 1.0, 2.0], np.float32), size=k)
    x = (rng.integers(-4, 5, size=(m, k)) * 0.5).astype(np.float32).astype(dtype)
    for kk in (1, 37, 100, 199):
        sess = provider_session(nbits_model(weight, score_scale, gating="topk", dtype=dtype, k=kk), provider)
        assert_close(run_op(sess, x), oracle(x, weight, score_scale, k=kk), dtype_name, f"k={kk}")
    xn = x.copy()
    xn[:, 5] = np.nan
    for params in ({"k": 50}, {"threshold": 0.6}):
        gating = "topk" if "k" in params else "threshold"
        y = run_op(provider_session(nbits_model(weight, score_scale, gating=gating, dtype=dtype, **params), provider), xn)
        assert np.isnan(y.astype(np.float32)).all(), params  # feature 5 (score NaN = +inf) is kept
    bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": -5}, {"threshold": np.inf}, {"threshold": np.nan}):
        gating = "topk" if "k" in params else "threshold"
        y = run_op(provider_session(nbits_model(weight, score_scale, gating=gating, dtype=dtype, **params), provider), x)
        np.testing.assert_array_equal(y.astype(np.float32), np.zeros((m, n), np.float32))
        model = nbits_model(weight, score_scale, gating=gating, dtype=dtype, bias=bias, **params)
        y = run_op(provider_session(model, provider), x)
        np.testing.assert_array_equal(y, np.broadcast_to(bias, (m, n)))


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("provider", providers())
def test_repeated_runs_are_bit_equal(provider: str, m: int) -> None:
    """The same call gives the same bits (CUDA: no atomics on the data, split-K sums in a fixed order)."""
    rng = np.random.default_rng(11)
    weight = random_weight(rng, 4096, 1024, 32, "none", np.float16)
    score_scale = weight.row_norms()
    x = rng.standard_normal((m, 4096)).astype(np.float16)
    sess = provider_session(nbits_model(weight, score_scale, gating="threshold", dtype=np.float16,
                                        **gating_for("threshold", 0.5, x, score_scale)), provider)
    first = run_op(sess, x)
    for _ in range(3):
        np.testing.assert_array_equal(run_op(sess, x), first)


def matmul_nbits_session(weight: nbits.FeatureMajor, dtype, provider: str):
    """ONNX Runtime's own MatMulNBits on `provider`, on the same codes (column-major again)."""
    b, scales, zeros = nbits.column_major(weight)
    model = matmul_nbits_model(b, scales, zeros, k=weight.k, n=weight.n, block_size=weight.block_size, dtype=dtype)
    try:
        return provider_session(model, provider)
    except Exception as e:  # noqa: BLE001 (ORT's MatMulNBits does not take every type on every provider)
        pytest.skip(f"ONNX Runtime's MatMulNBits on {provider} refused this case: {e}")


@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
@pytest.mark.parametrize("zero_kind", ZERO_KINDS)
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("provider", providers())
def test_sparsity_zero_equals_matmul_nbits(provider: str, block: int, zero_kind: str, dtype_name: str) -> None:
    """Re-packing is lossless: with nothing masked the op gives MatMulNBits' product on the same
    provider and codes, within float tolerance plus MatMulNBits' own distance from the exact product
    (ONNX Runtime 1.31's CUDA kernel with float32 X and float zero points is 2e-4 of the scale
    off the float32 product that the oracle and its CPU kernel compute)."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(block + len(zero_kind))
    k, n = 1024, 768
    weight = random_weight(rng, k, n, block, zero_kind, dtype)
    score_scale = weight.row_norms()
    theirs = matmul_nbits_session(weight, dtype, provider)
    for gating, params in (("threshold", {"threshold": -1.0}), ("topk", {"k": k})):
        ours = provider_session(nbits_model(weight, score_scale, gating=gating, dtype=dtype, **params), provider)
        for m in (1, 2, 7):
            x = rng.standard_normal((m, k)).astype(np.float32).astype(dtype)
            exact = oracle(x, weight, score_scale, **params).astype(np.float32)
            want = theirs.run(None, {"x": x})[0].astype(np.float32)
            got = run_op(ours, x).astype(np.float32)
            scale = max(float(np.abs(exact).max()), 1e-3)
            theirs_off = float(np.abs(want - exact).max())
            assert theirs_off <= 1e-2 * scale, f"MatMulNBits itself is off: {theirs_off} of {scale}"
            assert_close(got.astype(dtype), exact.astype(dtype), dtype_name, f"{gating} m={m} (oracle)")
            diff = float(np.abs(got - want).max())
            assert diff <= TOLERANCE[dtype_name] * scale + theirs_off, (
                f"{gating} m={m}: {diff} from MatMulNBits, which is {theirs_off} from exact (scale {scale})")


@pytest.mark.parametrize("provider", providers())
def test_model_input_types_are_checked(provider: str) -> None:
    """A float zero point of another type than X is refused in one line (the CPU op's checks)."""
    rng = np.random.default_rng(5)
    weight = random_weight(rng, 64, 32, 32, "float", np.float32)
    score_scale = weight.row_norms()
    model = nbits_model(weight, score_scale, gating="threshold", dtype=np.float16, threshold=0.1)
    with pytest.raises(Exception, match=r"(?i)zero|type"):
        sess = provider_session(model, provider)
        run_op(sess, np.zeros((1, 64), np.float16))


@pytest.mark.parametrize("provider", providers())
def test_large_k_topk(provider: str) -> None:
    """K past the CUDA select kernel's register variants (more than 16384 features)."""
    rng = np.random.default_rng(8)
    k, n = 17000, 64
    weight = random_weight(rng, k, n, 128, "none", np.float16)
    score_scale = np.ones(k, np.float32)
    x = (rng.integers(-3, 4, size=(2, k)) * 0.25).astype(np.float16)
    for kk in (1, k // 3, k - 1):
        sess = provider_session(nbits_model(weight, score_scale, gating="topk", dtype=np.float16, k=kk), provider)
        assert_close(run_op(sess, x), oracle(x, weight, score_scale, k=kk), "float16", f"k={kk}")


# --- CUDA only: the kernels' block sizes, tile and slab shapes, decode and prefill paths -------

# (K, N) per block size: N odd (a half-used last byte) and not a multiple of 32 (byte loads),
# K off the block size, and shapes wide and deep enough for several column tiles and K slabs.
CUDA_SHAPES = {16: ((40, 77), (1000, 576)), 32: ((96, 64), (4096, 1056)), 64: ((300, 1000), (2048, 513)),
               128: ((1, 33), (1500, 2048)), 256: ((257, 130), (3000, 640))}
# Tokens: none, the fused decode kernel (1, 2; 2 as rank 3), the dequantize-then-GEMM path (more).
CUDA_TOKENS = (0, 1, 2, 3, 17)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("zero_kind", ZERO_KINDS)
@pytest.mark.parametrize(("provider", "block"), provider_cases({CUDA: list(CUDA_SHAPES)}))
def test_matches_oracle_on_each_block_size(provider: str, block: int, zero_kind: str, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(block * 7 + ZERO_KINDS.index(zero_kind) * 3 + list(DTYPES).index(dtype_name))
    for k, n in CUDA_SHAPES[block]:
        weight = random_weight(rng, k, n, block, zero_kind, dtype)
        score_scale = weight.row_norms()
        bias = rng.standard_normal(n).astype(np.float32).astype(dtype)
        x_all = rng.standard_normal((max(CUDA_TOKENS), k)).astype(np.float32).astype(dtype)
        for gi, gating in enumerate(("topk", "threshold")):
            for si, sparsity in enumerate((0.0, 0.5, 0.9)):
                with_bias = (gi + si) % 2 == 0
                params = gating_for(gating, sparsity, x_all, score_scale)
                sess = provider_session(nbits_model(weight, score_scale, gating=gating, dtype=dtype,
                                                    bias=bias if with_bias else None, **params), provider)
                for m in CUDA_TOKENS:
                    x = x_all[:m]
                    if m == 2:
                        x = x.reshape(1, 2, k)  # rank 3: every leading index is a token
                    want = oracle(x, weight, score_scale, bias=bias if with_bias else None, **params)
                    assert_close(run_op(sess, x), want, dtype_name,
                                 f"{k}x{n} G={block} zp={zero_kind} {gating} s={sparsity} bias={with_bias} X{x.shape}")
