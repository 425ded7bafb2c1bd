"""The 4-bit path without the op library: re-packing MatMulNBits feature-major (lossless, and
its exact inverse), the NumPy oracle of WinaSparseMatMulNBits against ONNX Runtime's own
MatMulNBits at sparsity 0, its gating against the float oracle, and which nodes are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.nbits_models import initializers, matmul_nbits_model, nbits_node, quantized_matmul, run
from onnx import numpy_helper

from wina_onnx import reference
from wina_onnx.passes import nbits

# (K, N, block size, symmetric, HQQ: float zero points): odd N, K not a multiple of G,
# K smaller than one block, every block size MatMulNBits takes.
CASES = [
    (100, 33, 32, False, False),
    (100, 33, 32, True, False),
    (64, 16, 16, True, False),
    (300, 7, 128, False, False),
    (40, 5, 64, False, False),
    (520, 24, 256, True, False),
    (200, 17, 16, False, False),
    (96, 9, 64, False, True),
    (150, 11, 32, False, True),
]
IDS = [f"K{k}-N{n}-G{g}-{'hqq' if h else 'sym' if s else 'asym'}" for k, n, g, s, h in CASES]


def _arrays(model: onnx.ModelProto):
    node = nbits_node(model)
    inits = initializers(model)
    source = nbits.read_source(node, inits, set())
    assert isinstance(source, nbits.NbitsSource), source

    def array(name: str):
        return numpy_helper.to_array(inits[name]) if name else None

    return source, array(source.b), array(source.scales), array(source.zero_points)


def _dequantize_original(source, b, scales, zeros) -> np.ndarray:
    return nbits.dequantize_matmul_nbits(b, scales, zeros, k=source.k, n=source.n, block_size=source.block_size)


@pytest.mark.parametrize("k, n, g, symmetric, hqq", CASES, ids=IDS)
def test_repacking_keeps_every_code_and_scale(k: int, n: int, g: int, symmetric: bool, hqq: bool) -> None:
    model = quantized_matmul(k, n, block_size=g, symmetric=symmetric, hqq=hqq)
    source, b, scales, zeros = _arrays(model)
    assert (source.zero_point_type is None) == symmetric
    weight = nbits.feature_major(b, scales, zeros, k=k, n=n, block_size=g)
    assert weight.codes.shape == (k, -(-n // 2)) and weight.scales.shape == (-(-k // g), n)
    # (a) the re-packed weight dequantizes to exactly the node's weight
    original = _dequantize_original(source, b, scales, zeros)
    np.testing.assert_array_equal(weight.dequantize(), original)
    # ... and ONNX Runtime agrees on what the node's weight is (x = identity reads it out).
    np.testing.assert_allclose(run(model, np.eye(k, dtype=np.float32)), original, rtol=1e-6, atol=1e-6)
    # The inverse gives the node's codes (all of K), scales and zero points back.
    b2, scales2, zeros2 = nbits.column_major(weight)
    codes = reference.unpack_nibbles(b.reshape(n, -1), k)
    np.testing.assert_array_equal(reference.unpack_nibbles(b2.reshape(n, -1), k), codes)
    np.testing.assert_array_equal(scales2, scales.reshape(-1))
    if zeros is not None and zeros.dtype == np.uint8:
        blocks = -(-k // g)
        np.testing.assert_array_equal(reference.unpack_nibbles(zeros2, blocks),
                                      reference.unpack_nibbles(zeros.reshape(n, -1), blocks))
    elif zeros is not None:
        np.testing.assert_array_equal(zeros2, zeros.reshape(-1))
    np.testing.assert_array_equal(_dequantize_original(source, b2, scales2, zeros2), original)
    again = nbits.feature_major(b2, scales2, zeros2, k=k, n=n, block_size=g)
    for got, want in ((again.codes, weight.codes), (again.scales, weight.scales), (again.zero_points, weight.zero_points)):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k, n, g, symmetric, hqq", CASES, ids=IDS)
@pytest.mark.parametrize("shape", [(5,), (2, 3), (0,)], ids=["2d", "3d", "empty"])
def test_oracle_at_sparsity_zero_equals_ort_matmul_nbits(k, n, g, symmetric, hqq, shape) -> None:
    model = quantized_matmul(k, n, block_size=g, symmetric=symmetric, hqq=hqq, bias=True, seed=3)
    source, b, scales, zeros = _arrays(model)
    bias = numpy_helper.to_array(initializers(model)[source.bias])
    weight = nbits.feature_major(b, scales, zeros, k=k, n=n, block_size=g)
    x = np.random.default_rng(1).standard_normal((*shape, k)).astype(np.float32)
    expected = run(model, x)  # ONNX Runtime's MatMulNBits, accuracy_level 0
    ones = np.ones(k, np.float32)
    for gate in ({"threshold": -1.0}, {"k": k}):
        y = reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, ones,
                                               block_size=g, n=n, bias=bias, **gate)
        assert y.shape == expected.shape and y.dtype == np.float32
        scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
        np.testing.assert_allclose(y, expected, rtol=0, atol=2e-6 * scale * np.sqrt(k))


def test_oracle_at_sparsity_zero_equals_ort_matmul_nbits_in_float16() -> None:
    k, n, g = 160, 21, 32
    model = quantized_matmul(k, n, block_size=g, dtype=np.float16, seed=5)
    source, b, scales, zeros = _arrays(model)
    assert scales.dtype == np.float16
    weight = nbits.feature_major(b, scales, zeros, k=k, n=n, block_size=g)
    x = np.random.default_rng(2).standard_normal((4, k)).astype(np.float16)
    expected = run(model, x).astype(np.float32)
    y = reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, np.ones(k, np.float32),
                                           block_size=g, n=n, threshold=-1.0)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=0, atol=1e-2 * float(np.abs(expected).max()))


@pytest.mark.parametrize("k, n, g, symmetric, hqq", CASES, ids=IDS)
def test_oracle_gating_equals_the_float_oracle_on_the_dequantized_weight(k, n, g, symmetric, hqq) -> None:
    model = quantized_matmul(k, n, block_size=g, symmetric=symmetric, hqq=hqq, seed=7)
    _, b, scales, zeros = _arrays(model)
    weight = nbits.feature_major(b, scales, zeros, k=k, n=n, block_size=g)
    dense = weight.dequantize()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, k)).astype(np.float32)
    x[0, : k // 3] = 0.0  # ties
    x[1, 1] = np.nan
    for score_scale in (weight.row_norms(), np.ones(k, np.float32)):
        for gate in ({"k": k // 2}, {"k": 1}, {"k": 0}, {"threshold": float(np.median(np.abs(x[2:]) * score_scale))}):
            y = reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, score_scale,
                                                   block_size=g, n=n, **gate)
            want = reference.wina_sparse_matmul(x, dense, score_scale, **gate)
            np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(weight.row_norms(), reference.weight_row_norms(dense), rtol=1e-6)


@st.composite
def _feature_major(draw) -> nbits.FeatureMajor:
    g = draw(st.sampled_from([16, 32, 64, 128, 256]))
    k = draw(st.integers(1, 3 * g))
    n = draw(st.integers(1, 40))
    zeros_kind = draw(st.sampled_from(["none", "uint8", "float"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    blocks = -(-k // g)
    codes = reference.pack_nibbles(rng.integers(0, 16, (k, n), dtype=np.uint8))
    scales = rng.standard_normal((blocks, n)).astype(np.float32)
    zeros = {"none": None,
             "uint8": reference.pack_nibbles(rng.integers(0, 16, (blocks, n), dtype=np.uint8)),
             "float": rng.uniform(0, 15, (blocks, n)).astype(np.float32)}[zeros_kind]
    return nbits.FeatureMajor(codes, scales, zeros, k, n, g)


@settings(max_examples=60, deadline=None)
@given(_feature_major())
def test_feature_major_and_column_major_are_inverses(weight: nbits.FeatureMajor) -> None:
    b, scales, zeros = nbits.column_major(weight)
    blocks = -(-weight.k // weight.block_size)
    assert b.shape == (weight.n, blocks, weight.block_size // 2) and scales.shape == (weight.n * blocks,)
    back = nbits.feature_major(b, scales, zeros, k=weight.k, n=weight.n, block_size=weight.block_size)
    np.testing.assert_array_equal(back.codes, weight.codes)
    np.testing.assert_array_equal(back.scales, weight.scales)
    if weight.zero_points is None:
        assert back.zero_points is None
    else:
        np.testing.assert_array_equal(back.zero_points, weight.zero_points)
    dense = nbits.dequantize_matmul_nbits(b, scales, zeros, k=weight.k, n=weight.n, block_size=weight.block_size)
    np.testing.assert_array_equal(dense, weight.dequantize())


@settings(max_examples=40, deadline=None)
@given(_feature_major(), st.sampled_from(["float32", "float16"]), st.integers(0, 5), st.integers(0, 2**31))
def test_oracle_at_sparsity_zero_equals_ort_on_any_layout(weight: nbits.FeatureMajor, dtype: str, tokens: int,
                                                          seed: int) -> None:
    """Random codes, scales and zero points of any shape and block size, written as MatMulNBits:
    ONNX Runtime's product equals the oracle's on the feature-major form."""
    dtype = np.dtype(dtype)
    weight.scales = (weight.scales * 0.1).astype(dtype)
    if weight.zero_points is not None and weight.zero_points.dtype != np.uint8:
        weight.zero_points = weight.zero_points.astype(dtype)
    b, scales, zeros = nbits.column_major(weight)
    model = matmul_nbits_model(b, scales, zeros, k=weight.k, n=weight.n, block_size=weight.block_size, dtype=dtype)
    x = np.random.default_rng(seed).standard_normal((tokens, weight.k)).astype(dtype)
    expected = run(model, x).astype(np.float32)
    y = reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points,
                                           np.ones(weight.k, np.float32), block_size=weight.block_size,
                                           n=weight.n, k=weight.k)
    assert y.dtype == dtype and y.shape == expected.shape
    exact = np.abs(x.astype(np.float32)) @ np.abs(weight.dequantize())  # the size of the sums
    tolerance = (1e-5 if dtype == np.float32 else 2e-3) * exact + 1e-6
    assert np.all(np.abs(y.astype(np.float32) - expected) <= tolerance)


def test_unsupported_matmul_nbits_are_refused_with_a_reason() -> None:
    inits = initializers(quantized_matmul(64, 8, block_size=32))
    base = nbits_node(quantized_matmul(64, 8, block_size=32))

    def reason(edit) -> str:
        node = onnx.NodeProto()
        node.CopyFrom(base)
        edit(node)
        result = nbits.read_source(node, inits, set())
        assert isinstance(result, str)
        return result

    def set_attr(name: str, value: int):
        def edit(node):
            attr = next((a for a in node.attribute if a.name == name), None)
            if attr is None:
                node.attribute.append(onnx.helper.make_attribute(name, value))
            else:
                attr.i = value
        return edit

    assert reason(set_attr("bits", 8)) == "MatMulNBits with bits=8; only 4-bit weights are gated"
    assert reason(lambda node: node.input.append("g_idx")) == "MatMulNBits with g_idx (act-order) is not supported"
    assert "prepacked" in reason(set_attr("weight_prepacked", 1))
    assert "block_size 24" in reason(set_attr("block_size", 24))
    assert "[8, 2, 16]" in reason(set_attr("K", 65))  # the shape no longer fits K
    assert reason(lambda node: node.input.__setitem__(1, "runtime_b")) == "weight is not a constant initializer"
    assert nbits.read_source(base, inits, {base.input[1]}) == "weight is also a graph input and may change at run time"
    eight_bit = quantized_matmul(64, 8, block_size=32, bits=8)
    assert nbits.read_source(nbits_node(eight_bit), initializers(eight_bit), set()) == \
        "MatMulNBits with bits=8; only 4-bit weights are gated"


def test_dequantize_refuses_shapes_that_do_not_fit() -> None:
    codes = np.zeros((40, 3), np.uint8)
    with pytest.raises(ValueError, match="B must be"):
        reference.dequantize_nbits(codes, np.ones((2, 5), np.float32), None, block_size=32, n=7)
    with pytest.raises(ValueError, match="scales must be"):
        reference.dequantize_nbits(codes, np.ones((1, 5), np.float32), None, block_size=32, n=5)
    with pytest.raises(ValueError, match="zero points"):
        reference.dequantize_nbits(codes, np.ones((2, 5), np.float32), np.zeros((2, 2), np.uint8), block_size=32, n=5)
