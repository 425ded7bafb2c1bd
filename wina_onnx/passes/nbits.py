"""ONNX Runtime's 4-bit `MatMulNBits` (com.microsoft), read and re-packed for `WinaSparseMatMulNBits`.

`MatMulNBits` as the ONNX Runtime GenAI model builder and `MatMulNBitsQuantizer` write it
(bits = 4, block size G, K input and N output features, nb = ceil(K/G) blocks):

    B            uint8 [N, nb, G/2]    column n's codes, block after block along K; code k of
                                       a block in byte k // 2, low nibble for even k
    scales       T [N * nb] or [N, nb] scale of block b of column n at n * nb + b
    zero_points  uint8 [N, ceil(nb/2)] (packed along the blocks, like B along K),
                 or T [N * nb] / [N, nb]; absent means 8
    weight       W[k, n] = (code - zero_point) * scale

`WinaSparseMatMulNBits` (docs/op-schema.md) keeps the same codes and scales, feature-major:
B [K, ceil(N/2)] (row k holds the N codes of input feature k, packed along N), scales
[nb, N], zero points [nb, ceil(N/2)] packed along N (uint8) or [nb, N] (float). The codes
past K in the last block (padding) are dropped. Nothing is rounded: re-packing moves
nibbles and transposes scales, and `column_major` puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import reference, schema

# MatMulNBits input positions (com.microsoft, version 1).
INPUT_A = 0
INPUT_B = 1
INPUT_SCALES = 2
INPUT_ZERO_POINTS = 3
INPUT_G_IDX = 4
INPUT_BIAS = 5

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def is_matmul_nbits(node: onnx.NodeProto) -> bool:
    """Whether `node` is ONNX Runtime's MatMulNBits."""
    return node.op_type == schema.MATMUL_NBITS_OP_TYPE and node.domain == schema.MATMUL_NBITS_DOMAIN


def attributes(node: onnx.NodeProto) -> dict[str, int]:
    """The integer attributes of a MatMulNBits node (K, N, bits, block_size, accuracy_level, ...)."""
    return {a.name: int(helper.get_attribute_value(a)) for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


@dataclass(frozen=True)
class NbitsSource:
    """A MatMulNBits node the pass may gate: its weight inputs (initializer names) and attributes."""

    b: str
    scales: str
    zero_points: str  # "" when absent (zero point 8)
    bias: str  # "" when absent
    k: int
    n: int
    block_size: int
    accuracy_level: int
    scale_type: int  # onnx.TensorProto data type of the scales (and of X and Y)
    zero_point_type: int | None  # UINT8 (packed), the scale type (float), or None

    @property
    def blocks(self) -> int:
        """ceil(K / G)."""
        return -(-self.k // self.block_size)

    @property
    def weight_bytes(self) -> int:
        """Bytes a dense product reads: the codes, the scales and the zero points."""
        item = 4 if self.scale_type == onnx.TensorProto.FLOAT else 2
        codes = self.k * -(-self.n // 2)
        scales = self.blocks * self.n * item
        if self.zero_point_type is None:
            zeros = 0
        elif self.zero_point_type == onnx.TensorProto.UINT8:
            zeros = self.blocks * -(-self.n // 2)
        else:
            zeros = self.blocks * self.n * item
        return codes + scales + zeros


def read_source(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], graph_inputs: set[str]
) -> NbitsSource | str:
    """The NbitsSource of a MatMulNBits node, or the one-line reason the pass refuses it."""
    attrs = attributes(node)
    bits, block_size = attrs.get("bits", 4), attrs.get("block_size", 0)
    k, n = attrs.get("K", 0), attrs.get("N", 0)
    if bits != schema.NBITS_BITS:
        return f"MatMulNBits with bits={bits}; only 4-bit weights are gated"
    if _input(node, INPUT_G_IDX):
        return "MatMulNBits with g_idx (act-order) is not supported"
    if attrs.get("weight_prepacked", 0):
        return "MatMulNBits with prepacked weights is not supported"
    if block_size < 16 or block_size & (block_size - 1):
        return f"MatMulNBits block_size {block_size} is not a power of two of 16 or more"
    if k <= 0 or n <= 0:
        return f"MatMulNBits has K={k}, N={n}"
    b, scales, zeros = _input(node, INPUT_B), _input(node, INPUT_SCALES), _input(node, INPUT_ZERO_POINTS)
    for name in (b, scales, zeros):
        if not name:
            continue
        if name not in initializers:
            return "weight is not a constant initializer"
        if name in graph_inputs:
            return "weight is also a graph input and may change at run time"
    blocks = -(-k // block_size)
    b_init, s_init = initializers[b], initializers[scales]
    if b_init.data_type != onnx.TensorProto.UINT8:
        return f"MatMulNBits weight type {onnx.TensorProto.DataType.Name(b_init.data_type)} is not uint8"
    if list(b_init.dims) != [n, blocks, block_size // 2]:
        return f"MatMulNBits weight shape {list(b_init.dims)} is not [N, ceil(K/G), G/2] = [{n}, {blocks}, {block_size // 2}]"
    if s_init.data_type not in FLOAT_TYPES:
        return f"MatMulNBits scale type {onnx.TensorProto.DataType.Name(s_init.data_type)} is not float32, float16 or bfloat16"
    if int(np.prod(s_init.dims)) != n * blocks:
        return f"MatMulNBits scales hold {int(np.prod(s_init.dims))} values, not N * ceil(K/G) = {n * blocks}"
    zero_type = None
    if zeros:
        z_init = initializers[zeros]
        zero_type = z_init.data_type
        size = int(np.prod(z_init.dims))
        if zero_type == onnx.TensorProto.UINT8:
            if size != n * -(-blocks // 2):
                return f"MatMulNBits packed zero points hold {size} bytes, not N * ceil(ceil(K/G)/2) = {n * -(-blocks // 2)}"
        elif zero_type == s_init.data_type:
            if size != n * blocks:
                return f"MatMulNBits zero points hold {size} values, not N * ceil(K/G) = {n * blocks}"
        else:
            return f"MatMulNBits zero point type {onnx.TensorProto.DataType.Name(zero_type)} is neither uint8 nor the scales' type"
    return NbitsSource(
        b=b, scales=scales, zero_points=zeros, bias=_input(node, INPUT_BIAS), k=k, n=n, block_size=block_size,
        accuracy_level=attrs.get("accuracy_level", 0), scale_type=s_init.data_type, zero_point_type=zero_type,
    )


@dataclass
class FeatureMajor:
    """A 4-bit weight in WinaSparseMatMulNBits' layout (docs/op-schema.md)."""

    codes: np.ndarray  # uint8 [K, ceil(N/2)]
    scales: np.ndarray  # T [nb, N]
    zero_points: np.ndarray | None  # uint8 [nb, ceil(N/2)], T [nb, N] or None
    k: int
    n: int
    block_size: int

    def dequantize(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop of the float32 weight [K, N] (reference.dequantize_nbits)."""
        return reference.dequantize_nbits(self.codes, self.scales, self.zero_points, block_size=self.block_size,
                                          n=self.n, start=start, stop=stop)

    def row_norms(self, rows: int = 256) -> np.ndarray:
        """WINA's score scale ||W[i, :]||_2 of the dequantized rows, a few rows at a time."""
        out = np.empty(self.k, dtype=np.float32)
        for start in range(0, self.k, rows):
            out[start:start + rows] = np.linalg.norm(self.dequantize(start, start + rows), axis=1)
        return out


def feature_major(
    b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *, k: int, n: int, block_size: int
) -> FeatureMajor:
    """Re-pack MatMulNBits' B [N, nb, G/2], scales [N * nb] and zero points to the feature-major layout."""
    blocks = -(-k // block_size)
    codes = reference.unpack_nibbles(np.asarray(b, dtype=np.uint8).reshape(n, blocks * block_size // 2), k)
    packed = reference.pack_nibbles(np.ascontiguousarray(codes.T))  # [K, ceil(N/2)]
    scales_fm = np.ascontiguousarray(np.asarray(scales).reshape(n, blocks).T)
    zeros_fm = None
    if zero_points is not None:
        if zero_points.dtype == np.uint8:
            zeros = reference.unpack_nibbles(zero_points.reshape(n, -1), blocks)  # [N, nb]
            zeros_fm = reference.pack_nibbles(np.ascontiguousarray(zeros.T))
        else:
            zeros_fm = np.ascontiguousarray(zero_points.reshape(n, blocks).T)
    return FeatureMajor(packed, scales_fm, zeros_fm, k, n, block_size)


def column_major(weight: FeatureMajor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inverse of feature_major: MatMulNBits' B [N, nb, G/2], scales [N * nb] and zero points
    ([N, ceil(nb/2)] uint8 or [N * nb] float). The padding codes past K are the block's zero
    point (8 without zero points, 0 with float zero points), so they dequantize to 0."""
    k, n, g = weight.k, weight.n, weight.block_size
    blocks = -(-k // g)
    codes = reference.unpack_nibbles(weight.codes, n).T  # [N, K]
    scales = np.ascontiguousarray(weight.scales.T).reshape(-1)
    zero_points = None
    if weight.zero_points is None:
        pad = np.full((n, 1), schema.NBITS_DEFAULT_ZERO_POINT, dtype=np.uint8)
    elif weight.zero_points.dtype == np.uint8:
        zeros = reference.unpack_nibbles(weight.zero_points, n).T  # [N, nb]
        zero_points = reference.pack_nibbles(np.ascontiguousarray(zeros))
        pad = zeros[:, -1:]
    else:
        zero_points = np.ascontiguousarray(weight.zero_points.T).reshape(-1)
        pad = np.zeros((n, 1), dtype=np.uint8)
    full = np.concatenate([codes, np.broadcast_to(pad, (n, blocks * g - k))], axis=1)
    b = reference.pack_nibbles(np.ascontiguousarray(full)).reshape(n, blocks, g // 2)
    return b, scales, zero_points


def dequantize_matmul_nbits(
    b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *, k: int, n: int, block_size: int
) -> np.ndarray:
    """The float32 weight [K, N] of a 4-bit MatMulNBits, read from its own (column-major) layout."""
    blocks = -(-k // block_size)
    codes = reference.unpack_nibbles(np.asarray(b, dtype=np.uint8).reshape(n, -1), k).astype(np.float32)
    block = np.arange(k) // block_size
    scale = np.asarray(scales).astype(np.float32).reshape(n, blocks)[:, block]
    if zero_points is None:
        zero = np.float32(schema.NBITS_DEFAULT_ZERO_POINT)
    elif zero_points.dtype == np.uint8:
        zero = reference.unpack_nibbles(zero_points.reshape(n, -1), blocks).astype(np.float32)[:, block]
    else:
        zero = zero_points.astype(np.float32).reshape(n, blocks)[:, block]
    return np.ascontiguousarray(((codes - zero) * scale).T)


def load_feature_major(
    source: NbitsSource, initializers: dict[str, onnx.TensorProto], base_dir: str = ""
) -> FeatureMajor:
    """Read a MatMulNBits node's weight initializers and re-pack them (feature_major)."""
    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name], base_dir=base_dir)

    zeros = array(source.zero_points) if source.zero_points else None
    return feature_major(array(source.b), array(source.scales), zeros, k=source.k, n=source.n,
                         block_size=source.block_size)


def activation_type(node: onnx.NodeProto, elem_types: dict[str, int]) -> int:
    """Element type of a gated product's input X, from its initializers: the weight's type for
    MatMul and WinaSparseMatMul, the scales' type for the 4-bit ops (their B is uint8)."""
    if is_matmul_nbits(node) or (node.op_type == schema.NBITS_OP_TYPE and node.domain == schema.DOMAIN):
        return elem_types.get(node.input[INPUT_SCALES], onnx.TensorProto.FLOAT)
    return elem_types.get(node.input[1], onnx.TensorProto.FLOAT)
