"""A GGUF model's own 4-bit weights as ONNX Runtime's `MatMulNBits`, without quantizing again.

`export --int4` first exports the float model (transformers dequantizes the GGUF file,
Optimum exports it), then replaces every MatMul whose weight came from a 4-bit GGUF
tensor by a `MatMulNBits` node (domain com.microsoft, bits 4, block_size 32) holding the
file's codes. The GGUF formats map onto MatMulNBits' `W = (code - zero_point) * scale`
block by block, with no rounding of any code:

    Q4_0   blocks of 32 along K:  w = d * (q - 8)       scale d, zero point 8 (no input: 8
                                                        is MatMulNBits' default)
    Q4_1   blocks of 32 along K:  w = d * q + m         scale d, float zero point -m / d
    Q4_K   super-blocks of 256 with eight 6-bit sub-scales and sub-mins; sub-block j of 32
           is w = (d * sc_j) * q - dmin * min_j        scale d*sc_j, float zero point
                                                        dmin*min_j / (d*sc_j)

A block whose scale is 0 holds one constant c (its minimum): it is written as scale c,
zero point 0 and every code 1 (or scale 0 when c is 0), which is exact. Float zero
points are the scales' type (float32 here).

Each ONNX weight is found from its node name (`/model/layers.3/mlp/down_proj/MatMul` is
module `model.layers.3.mlp.down_proj`, which gguf's own tensor-name map turns into
`blk.3.ffn_down`). llama.cpp stores the rows of Llama's q and k projections permuted for
its rotary embedding; transformers un-permutes them when it dequantizes, and so do we,
on whole rows of codes, scales and zero points (exact: the permutation is along N).
Before a node is replaced, the dequantized codes are compared with the float weight that
transformers produced; a difference beyond float32 rounding stops the export.

ONNX Runtime's CPU MatMulNBits does not pre-pack weights that have float zero points: it
dequantizes B to float on every call and then runs a float GEMM, whatever the
accuracy_level. The result equals the float model to rounding, at a higher cost per call
than the float MatMul; WINA's 4-bit op (WinaSparseMatMulNBits) reads the same codes and
float zero points directly. Q4_0 weights have no zero-point input and take MLAS's packed
int4 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import WinaError
from ..schema import MATMUL_NBITS_DOMAIN, MATMUL_NBITS_OP_TYPE, META_GGUF_INT4

BLOCK_SIZE = 32
BITS = 4
# Default accuracy_level: 0, float activations. ONNX Runtime's CPU kernel ignores it for float
# zero points (Q4_1, Q4_K); for Q4_0 weights level 4 would let it quantize activations to int8.
DEFAULT_ACCURACY_LEVEL = 0
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# A weight is accepted when every element is within this many float32 epsilons of the block's
# magnitude (|scale| * 15 + |offset|): both sides are rounded float32 products and sums.
TOLERANCE_EPS = 4.0
FOUR_BIT_TYPES = ("Q4_0", "Q4_1", "Q4_K")


class GgufInt4Error(WinaError):
    """A GGUF file's 4-bit weights cannot be carried into the ONNX model as MatMulNBits."""


@dataclass
class Int4Weight:
    """One GGUF weight [N, K] in MatMulNBits terms: W[n, k] = (codes - zero_points) * scales.

    codes: uint8 [N, K], values 0..15; scales and zero_points: float32 [N, K / 32] (one per
    block of 32 input features). zero_points None means 8 for every block (Q4_0).
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    gguf_type: str

    @property
    def n(self) -> int:
        """Output features (rows)."""
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        """Input features (columns)."""
        return self.codes.shape[1]

    def _per_element(self, values: np.ndarray) -> np.ndarray:
        return np.repeat(values, BLOCK_SIZE, axis=1)

    def dequantize(self) -> np.ndarray:
        """The float32 weight [N, K], computed as MatMulNBits defines it."""
        zero = np.float32(8.0) if self.zero_points is None else self._per_element(self.zero_points)
        return (self.codes.astype(np.float32) - zero) * self._per_element(self.scales)

    def magnitude(self) -> np.ndarray:
        """|scale| * 15 + |scale * zero point| per element [N, K]: the size of the block's values,
        against which rounding is judged."""
        zero = np.float32(8.0) if self.zero_points is None else self.zero_points
        mag = np.abs(self.scales) * np.float32(15.0) + np.abs(self.scales * zero)
        return self._per_element(mag)

    def permute_rows(self, order: np.ndarray) -> Int4Weight:
        """The weight with row n taken from row order[n] (codes, scales and zero points alike)."""
        zeros = None if self.zero_points is None else self.zero_points[order]
        return Int4Weight(self.codes[order], self.scales[order], zeros, self.gguf_type)

    def matmul_nbits_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """B uint8 [N, K/32, 16] (code 2j of a block in the low nibble of byte j, 2j+1 in the
        high one), scales float32 [N * K/32] and zero points float32 [N * K/32] or None."""
        pairs = self.codes.reshape(self.n, self.k // BLOCK_SIZE, BLOCK_SIZE // 2, 2)
        b = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
        zeros = None if self.zero_points is None else np.ascontiguousarray(self.zero_points, np.float32).reshape(-1)
        return b, np.ascontiguousarray(self.scales, np.float32).reshape(-1), zeros


def _fp16(raw: np.ndarray) -> np.ndarray:
    """float32 values of little-endian fp16 stored in the last axis (2 bytes) of `raw`."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """The 32 codes of a 16-byte group: low nibbles are codes 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _from_offsets(codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray, gguf_type: str) -> Int4Weight:
    """Int4Weight of w = scale * code + offset per block: zero point -offset / scale; a block with
    scale 0 is the constant `offset` (scale offset, zero point 0, codes 1)."""
    n, blocks = scales.shape
    codes = codes.reshape(n, blocks, BLOCK_SIZE).copy()
    flat = scales == 0
    scales = np.where(flat, offsets, scales).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zeros = np.where(flat, np.float32(0.0), -offsets / np.where(flat, np.float32(1.0), scales))
    codes[flat] = 1
    return Int4Weight(codes.reshape(n, -1), scales, zeros.astype(np.float32), gguf_type)


def decode_blocks(data: np.ndarray, gguf_type: str, n: int, k: int) -> Int4Weight:
    """Read the raw GGUF blocks of an [N, K] tensor (uint8, N rows of bytes) as an Int4Weight."""
    if k % BLOCK_SIZE:
        raise GgufInt4Error(f"a {gguf_type} row of {k} values is not a whole number of blocks of {BLOCK_SIZE}")
    rows = np.asarray(data, dtype=np.uint8).reshape(n, -1)
    if gguf_type == "Q4_0":  # d (fp16), 16 bytes of codes
        blocks = rows.reshape(n, k // 32, 18)
        d = _fp16(blocks[..., 0:2])
        return Int4Weight(_nibbles(blocks[..., 2:]).reshape(n, k), d, None, gguf_type)
    if gguf_type == "Q4_1":  # d, m (fp16), 16 bytes of codes
        blocks = rows.reshape(n, k // 32, 20)
        d, m = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
        return _from_offsets(_nibbles(blocks[..., 4:]), d, m, gguf_type)
    if gguf_type == "Q4_K":  # d, dmin (fp16), 12 bytes of 6-bit sub-scales and mins, 128 bytes of codes
        from gguf.quants import Q4_K

        if k % 256:
            raise GgufInt4Error(f"a Q4_K row of {k} values is not a whole number of super-blocks of 256")
        supers = rows.reshape(n * (k // 256), 144)
        d, dmin = _fp16(supers[:, 0:2])[:, None], _fp16(supers[:, 2:4])[:, None]
        sub_scales, sub_mins = Q4_K.get_scale_min(np.ascontiguousarray(supers[:, 4:16]))
        scales = d * sub_scales.astype(np.float32)  # [supers, 8]
        offsets = -(dmin * sub_mins.astype(np.float32))
        # 4 groups of 32 bytes; group g holds sub-block 2g in its low nibbles and 2g+1 in its high ones.
        qs = supers[:, 16:].reshape(-1, 4, 1, 32)
        codes = ((qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, k)
        return _from_offsets(codes, scales.reshape(n, -1), offsets.reshape(n, -1), gguf_type)
    raise GgufInt4Error(f"{gguf_type} is not a 4-bit format this export reads ({', '.join(FOUR_BIT_TYPES)})")


def llama_row_order(n: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's permutation of a Llama q/k weight with `heads` heads
    (transformers applies the same one when it dequantizes): new row (h, j, i) is old row
    (h, i, j), for j < 2 halves of the rotary pairs and i < head_dim / 2."""
    if n % (2 * heads):
        raise GgufInt4Error(f"{n} rows do not split into {heads} heads of rotary pairs")
    return np.arange(n).reshape(heads, n // heads // 2, 2).swapaxes(1, 2).reshape(n)


@dataclass
class GgufInt4Report:
    """What `replace_with_gguf_int4` did."""

    replaced: dict[str, str] = field(default_factory=dict)  # node name -> GGUF tensor name
    types: dict[str, int] = field(default_factory=dict)  # GGUF type -> count of replaced weights
    kept_float: dict[str, str] = field(default_factory=dict)  # node name -> GGUF type (not 4-bit)
    max_abs_error: float = 0.0  # largest |MatMulNBits weight - float weight| over all replaced weights
    max_error_ratio: float = 0.0  # largest error / (eps32 * block magnitude)

    def summary(self) -> str:
        """One line for the user."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.types.items()))
        line = f"{len(self.replaced)} projections as MatMulNBits ({kinds}), max weight error {self.max_abs_error:.2g}"
        if self.kept_float:
            others = sorted(set(self.kept_float.values()))
            line += f"; {len(self.kept_float)} stay float (GGUF {', '.join(others)}: not 4-bit)"
        return line


class _GgufFile:
    """The tensors and the few metadata values of a GGUF file that the mapping needs."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise GgufInt4Error(f"{path.name} cannot be read as GGUF: {exc}") from exc
        self.arch = self._string("general.architecture")
        self.tensors = {t.name: t for t in self.reader.tensors}
        blocks = self._int(f"{self.arch}.block_count")
        arch_ids = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in arch_ids:
            raise GgufInt4Error(f"{path.name}: architecture {self.arch!r} is unknown to the gguf package")
        self.names = gguf.get_tensor_name_map(arch_ids[self.arch], blocks)

    def _field(self, key: str):
        field_ = self.reader.fields.get(key)
        if field_ is None:
            raise GgufInt4Error(f"{self.path.name} has no {key} entry")
        return field_.contents()

    def _string(self, key: str) -> str:
        return str(self._field(key))

    def _int(self, key: str) -> int:
        return int(self._field(key))

    def tensor_for_module(self, module: str):
        """The GGUF tensor holding the weight of HF module `module`, or None."""
        name = self.names.get_name(module)
        return None if name is None else self.tensors.get(f"{name}.weight")

    def row_order(self, tensor_name: str, n: int) -> np.ndarray | None:
        """The row permutation transformers applies to this tensor, or None for none."""
        if self.arch != "llama":
            return None
        if ".attn_q." in tensor_name:
            return llama_row_order(n, self._int("llama.attention.head_count"))
        if ".attn_k." in tensor_name:
            heads = self._int("llama.attention.head_count")
            kv_key = "llama.attention.head_count_kv"
            kv = self._int(kv_key) if kv_key in self.reader.fields else heads
            return llama_row_order(n, kv)
        return None


def module_path(node_name: str) -> str | None:
    """HF module path of an exported projection: `/model/layers.0/mlp/up_proj/MatMul` ->
    `model.layers.0.mlp.up_proj`; None for names that do not end in `/MatMul`."""
    if not node_name.endswith("/MatMul"):
        return None
    return node_name.removesuffix("/MatMul").strip("/").replace("/", ".")


def _check(weight: Int4Weight, expected: np.ndarray, where: str, report: GgufInt4Report) -> None:
    """Fail unless `weight` dequantizes to `expected` [N, K] within float32 rounding."""
    if expected.shape != (weight.n, weight.k):
        raise GgufInt4Error(f"{where}: the float weight is {list(expected.shape)}, the GGUF codes "
                            f"[{weight.n}, {weight.k}]")
    error = np.abs(weight.dequantize() - expected)
    bound = np.float32(np.finfo(np.float32).eps) * weight.magnitude()
    ratio = np.max(error / np.maximum(bound, np.finfo(np.float32).tiny))
    if not np.all(np.isfinite(error)) or ratio > TOLERANCE_EPS:
        worst = np.unravel_index(int(np.nanargmax(error / np.maximum(bound, np.finfo(np.float32).tiny))), error.shape)
        raise GgufInt4Error(
            f"{where}: the GGUF codes do not reproduce the exported float weight (max error "
            f"{float(np.nanmax(error)):.3g} at row {worst[0]}, column {worst[1]}, {float(ratio):.3g} x float32 "
            f"rounding); the ONNX weight and the GGUF tensor do not match")
    report.max_abs_error = max(report.max_abs_error, float(error.max()))
    report.max_error_ratio = max(report.max_error_ratio, float(ratio))


def replace_with_gguf_int4(
    model: onnx.ModelProto, gguf_path: str | Path, *, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    base_dir: str = "",
) -> GgufInt4Report:
    """Replace, in place, each MatMul of `model` whose weight comes from a 4-bit tensor of
    `gguf_path` (Q4_0, Q4_1, Q4_K) by a MatMulNBits node with that tensor's codes.

    `model` is the float export of that same GGUF file (Optimum's node names); each weight is
    checked against the dequantized codes first. Raises GgufInt4Error when no weight is 4-bit
    or a weight does not match. base_dir: the model's folder, for weights in external files.
    """
    from ..passes.names import NameSpace

    if accuracy_level not in ACCURACY_LEVELS:
        raise GgufInt4Error(f"accuracy_level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, "
                            f"got {accuracy_level}")
    source = _GgufFile(Path(gguf_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    names = NameSpace(graph)
    report = GgufInt4Report()
    new_nodes: list[onnx.NodeProto] = []
    replaced_weights: set[str] = set()
    for node in graph.node:
        module = module_path(node.name) if node.op_type == "MatMul" and len(node.input) == 2 else None
        weight_name = node.input[1] if module else None
        tensor = source.tensor_for_module(module) if module and weight_name in initializers else None
        if tensor is None:
            new_nodes.append(node)
            continue
        gguf_type = tensor.tensor_type.name
        if gguf_type not in FOUR_BIT_TYPES:
            report.kept_float[node.name] = gguf_type
            new_nodes.append(node)
            continue
        k, n = (int(v) for v in tensor.shape)  # GGUF lists the fastest axis first: [K, N]
        weight = decode_blocks(tensor.data, gguf_type, n, k)
        order = source.row_order(tensor.name, n)
        if order is not None:
            weight = weight.permute_rows(order)
        expected = numpy_helper.to_array(initializers[weight_name], base_dir=base_dir)
        _check(weight, np.asarray(expected, dtype=np.float32).T, f"{node.name} ({tensor.name}, {gguf_type})", report)
        b, scales, zeros = weight.matmul_nbits_inputs()
        stem = weight_name
        inputs = [node.input[0]]
        for suffix, array in (("_Q4", b), ("_scales", scales), ("_zero_points", zeros)):
            if array is None:
                continue
            init_name = names.fresh(stem + suffix)
            graph.initializer.append(numpy_helper.from_array(array, init_name))
            inputs.append(init_name)
        new_nodes.append(helper.make_node(
            MATMUL_NBITS_OP_TYPE, inputs, list(node.output), name=names.fresh(node.name + "_Q4"),
            domain=MATMUL_NBITS_DOMAIN, K=k, N=n, bits=BITS, block_size=BLOCK_SIZE, accuracy_level=accuracy_level))
        replaced_weights.add(weight_name)
        report.replaced[node.name] = tensor.name
        report.types[gguf_type] = report.types.get(gguf_type, 0) + 1
    if not report.replaced:
        types = sorted({t.tensor_type.name for t in source.tensors.values()})
        raise GgufInt4Error(f"{Path(gguf_path).name} has no 4-bit ({', '.join(FOUR_BIT_TYPES)}) projection weight "
                            f"(its tensor types: {', '.join(types)}); export it without --int4")
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Drop the float weights no node reads any more.
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name not in replaced_weights or init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == MATMUL_NBITS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MATMUL_NBITS_DOMAIN, 1))
    kinds = ",".join(f"{kind}:{count}" for kind, count in sorted(report.types.items()))
    _set_metadata(model, META_GGUF_INT4, f"{Path(gguf_path).name} ({kinds}; block {BLOCK_SIZE}; "
                                       f"accuracy_level {accuracy_level})")
    return report


def convert_model_file(
    input_path: str | Path, gguf_path: str | Path, output_path: str | Path, *,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
) -> GgufInt4Report:
    """replace_with_gguf_int4 on the model file `input_path` (the float export of `gguf_path`),
    written to `output_path` (may be the same path; written atomically)."""
    from ..modelio import load_model, save_model_atomic

    input_path = Path(input_path)
    model = load_model(input_path)
    report = replace_with_gguf_int4(model, gguf_path, accuracy_level=accuracy_level, base_dir=str(input_path.parent))
    save_model_atomic(model, Path(output_path))
    return report


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
