"""`WinaSparseMatMulNBits` (4-bit weights) on each execution provider against the NumPy oracle
wina_onnx.reference.wina_sparse_matmul_nbits and against ONNX Runtime's MatMulNBits.

Every test takes a `provider` (tests/helpers/providers.py): "cpu" always runs; "cuda" is
marked `gpu`, runs with the CPU fallback disabled and skips with the reason where ONNX Runtime
has no CUDA provider or no GPU. Models, weights and the oracle: tests/helpers/nbits_op_models.py.

CPU-only cases (their ids start with "cpu"): every instruction-set path (WINA_ONNX_ISA), block
sizes 16 to 512, zero points absent / packed uint8 / float, float32 / float16 / bfloat16, both
gatings, 0, 1 and many tokens, and accuracy_level 0 (float arithmetic) and 4 (the decode, which
also runs up to 8 tokens one by one, quantizes x to int8 per block with AVX2 or AVX-512 VNNI;
its error is checked against the bound that quantization allows), and the pool size.
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
from helpers.op_models import DTYPES, gating_for  # noqa: E402
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
