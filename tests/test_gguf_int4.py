"""`export --int4`: a GGUF model's own 4-bit codes as MatMulNBits, checked block, layout, model.

* decoding: Q4_0, Q4_1 and Q4_K blocks (scale-0 blocks included) read as MatMulNBits'
  (code - zero point) * scale equal gguf's own dequantization to float32 rounding;
* layout: ONNX Runtime's MatMulNBits on those inputs equals numpy's product;
* a tiny GGUF Llama with every format exports end to end and matches transformers' model;
* the embedded SmolLM2 (Q4_1): every projection becomes MatMulNBits with the float export's
  weights and logits (slow: it uses the exported SmolLM2).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.gguf_models import FOUR_BIT_COUNT, LAYER_TYPES, OUTPUT_TYPE, write_tiny_gguf
from helpers.nbits_models import float_matmul
from onnx import TensorProto, helper, numpy_helper

from wina_onnx import schema
from wina_onnx.export import gguf_int4
from wina_onnx.export.optimum_export import ExportError, default_gguf_path, export_model
from wina_onnx.passes import nbits
from wina_onnx.passes.roles import classify

EPS = float(np.finfo(np.float32).eps)


def _nbits_model(weight: gguf_int4.Int4Weight, accuracy_level: int = 0) -> onnx.ModelProto:
    """One MatMulNBits node y = x @ W.T of an Int4Weight W [N, K]."""
    b, scales, zeros = weight.matmul_nbits_inputs()
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zeros, "zero_points"))
    node = helper.make_node("MatMulNBits", ["x"] + [i.name for i in inits], ["y"], domain="com.microsoft",
                            K=weight.k, N=weight.n, bits=4, block_size=32, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", weight.k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", weight.n])], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _random_weight(kind: str, n: int = 24, k: int = 512, seed: int = 0) -> tuple[gguf_int4.Int4Weight, np.ndarray]:
    """A random GGUF tensor of `kind` (with scale-0 blocks) decoded, and gguf's own float32 [N, K]."""
    import gguf
    from gguf.quants import dequantize
    from helpers.gguf_models import _blocks

    data = _blocks(np.random.default_rng(seed), kind, n, k, 0.2)
    qtype = gguf.GGMLQuantizationType[kind]
    return gguf_int4.decode_blocks(data, kind, n, k), dequantize(data, qtype).reshape(n, k)


@pytest.mark.parametrize("kind", gguf_int4.FOUR_BIT_TYPES)
def test_decoded_blocks_equal_gguf_dequantization(kind: str) -> None:
    weight, expected = _random_weight(kind)
    assert weight.codes.dtype == np.uint8 and weight.codes.max() <= 15
    error = np.abs(weight.dequantize() - expected)
    assert np.all(error <= gguf_int4.TOLERANCE_EPS * EPS * weight.magnitude())
    assert (weight.zero_points is None) == (kind == "Q4_0")
    # The fixture has constant blocks (scale 0 in the file): they are reproduced exactly.
    blocks = expected.reshape(weight.n, -1, 32)
    constant = np.all(blocks == blocks[..., :1], axis=-1)
    assert constant.any()
    assert np.array_equal(weight.dequantize().reshape(blocks.shape)[constant], blocks[constant])


def test_scale_zero_blocks_are_exact() -> None:
    # Q4_1 blocks [d, m, 16 code bytes]: d = 0 with m = 0.75; d = 0 with m = 0; an ordinary block.
    half = lambda v: np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)  # noqa: E731
    codes = np.arange(16, dtype=np.uint8) * 17
    blocks = [np.concatenate([half(0), half(0.75), codes]), np.concatenate([half(0), half(0), codes]),
              np.concatenate([half(0.5), half(-1), codes])]
    weight = gguf_int4.decode_blocks(np.concatenate(blocks)[None], "Q4_1", 1, 96)
    values = weight.dequantize().reshape(3, 32)
    assert np.all(values[0] == 0.75) and np.all(values[1] == 0)
    assert np.all(np.isfinite(weight.zero_points))
    expected = 0.5 * np.concatenate([np.arange(16), np.arange(16)]) - 1  # low nibbles, then high ones
    np.testing.assert_allclose(values[2], expected, rtol=0, atol=4 * EPS * 8.5)


@pytest.mark.parametrize("kind", gguf_int4.FOUR_BIT_TYPES)
def test_matmul_nbits_layout_in_onnx_runtime(kind: str) -> None:
    weight, expected = _random_weight(kind, n=40, k=256, seed=1)
    x = np.random.default_rng(2).standard_normal((3, weight.k)).astype(np.float32)
    y = _run(_nbits_model(weight), x)
    reference = x.astype(np.float64) @ expected.T.astype(np.float64)
    np.testing.assert_allclose(y, reference, rtol=0, atol=1e-5 * np.abs(x).sum(1, keepdims=True).max()
                               * np.abs(expected).max())
    # The project's own reader of MatMulNBits inputs agrees too.
    b, scales, zeros = weight.matmul_nbits_inputs()
    back = nbits.dequantize_matmul_nbits(b, scales, zeros, k=weight.k, n=weight.n, block_size=32)
    np.testing.assert_array_equal(back, weight.dequantize().T)


def test_float_zero_points_ignore_accuracy_level() -> None:
    """ONNX Runtime's CPU kernel dequantizes weights with float zero points to float on every call:
    accuracy_level 4 (int8 activations) gives the same output as 0."""
    weight, _ = _random_weight("Q4_1", n=64, k=256, seed=3)
    x = np.random.default_rng(4).standard_normal((5, weight.k)).astype(np.float32)
    np.testing.assert_array_equal(_run(_nbits_model(weight, 4), x), _run(_nbits_model(weight, 0), x))


@pytest.mark.parametrize(("n", "heads"), [(576, 9), (192, 3), (256, 4), (128, 2)])
def test_llama_row_order_is_transformers(n: int, heads: int) -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))
    unpermuted = LlamaTensorProcessor()._reverse_permute_weights(rows, heads, heads)
    np.testing.assert_array_equal(gguf_int4.llama_row_order(n, heads), unpermuted[:, 0].astype(int))


def test_module_path() -> None:
    assert gguf_int4.module_path("/model/layers.12/self_attn/q_proj/MatMul") == "model.layers.12.self_attn.q_proj"
    assert gguf_int4.module_path("/lm_head/MatMul") == "lm_head"
    assert gguf_int4.module_path("/model/layers.0/self_attn/Add") is None


# ----------------------------------------------------------------------------- tiny GGUF Llama
def _tiny_gguf(work_dir: Path, name: str, with_tokenizer: bool) -> Path:
    """The tiny GGUF Llama of tests/helpers/gguf_models.py, written once per version of that file."""
    from importlib.metadata import version

    source = (Path(__file__).parent / "helpers" / "gguf_models.py").read_bytes()
    key = hashlib.sha256(source + version("gguf").encode()).hexdigest()[:12]
    folder = work_dir / f"tiny-gguf-{key}"
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{name}.tmp"
        write_tiny_gguf(tmp, default_gguf_path(), with_tokenizer=with_tokenizer)
        tmp.replace(path)
    return path


@pytest.fixture(scope="module")
def tiny_gguf(work_dir: Path) -> Path:
    """The tiny GGUF Llama with SmolLM2's tokenizer: a whole model transformers can load."""
    return _tiny_gguf(work_dir, "tiny.gguf", with_tokenizer=True)


@pytest.fixture(scope="module")
def tiny_gguf_weights(work_dir: Path) -> Path:
    """The same tensors without the tokenizer entries (which take seconds to parse)."""
    return _tiny_gguf(work_dir, "tiny-weights.gguf", with_tokenizer=False)


def _expected_weight(gguf_path: Path, tensor: str) -> np.ndarray:
    """The float [N, K] weight transformers makes of a GGUF tensor (its dequantization and row order)."""
    import gguf
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    reader = gguf.GGUFReader(str(gguf_path))
    found = next(t for t in reader.tensors if t.name == tensor)
    weights = dequantize(found.data, found.tensor_type)
    config = {"num_attention_heads": 4, "num_key_value_heads": 2}
    return LlamaTensorProcessor(config=config).process(weights, tensor).weights


def _one_matmul(weight_nk: np.ndarray, node_name: str) -> onnx.ModelProto:
    return float_matmul(np.ascontiguousarray(weight_nk.T.astype(np.float32)), name=node_name)


def test_tiny_gguf_export_int4_matches_transformers(tiny_gguf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = export_model(str(tiny_gguf), tmp_path / "int4", int4=True, validate=False, progress=False)
    model = onnx.load(str(out))
    nodes = {n.name: n for n in model.graph.node}
    four_bit = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(four_bit) == FOUR_BIT_COUNT
    assert any(op.domain == "com.microsoft" for op in model.opset_import)
    assert dict((p.key, p.value) for p in model.metadata_props)[schema.META_GGUF_INT4].startswith("tiny.gguf")
    modules = {0: "self_attn", 1: "mlp"}
    hf_names = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
                "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
    kinds = {(layer, role): kind for layer, types in enumerate(LAYER_TYPES) for role, kind in types.items()}
    for (layer, role), kind in kinds.items():
        stem = f"/model/layers.{layer}/{modules[role.startswith('ffn')]}/{hf_names[role]}/MatMul"
        if not kind.startswith("Q4"):
            assert nodes[stem].op_type == "MatMul"  # Q8_0 and F16 stay float
            continue
        node = nodes[stem + "_Q4"]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, 0)
        assert len(node.input) == (3 if kind == "Q4_0" else 4)  # Q4_0: zero point 8, MatMulNBits' default
    assert "/lm_head/MatMul_Q4" in nodes and OUTPUT_TYPE.startswith("Q4")

    # Every MatMulNBits weight is the float weight transformers loads, to float32 rounding.
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name).eval()
    state = hf.state_dict()
    inits = {i.name: i for i in model.graph.initializer}
    for node in four_bit:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        arrays = [numpy_helper.to_array(inits[name]) for name in node.input[1:]]
        zeros = arrays[2] if len(arrays) > 2 else None
        weight = nbits.dequantize_matmul_nbits(arrays[0], arrays[1], zeros, k=attrs["K"], n=attrs["N"], block_size=32)
        expected = state[gguf_int4.module_path(node.name.removesuffix("_Q4")) + ".weight"].numpy().T
        np.testing.assert_allclose(weight, expected, rtol=0, atol=8 * EPS * np.abs(expected).max())

    # Logits: the int4 ONNX model in ONNX Runtime against the PyTorch model.
    ids = np.random.default_rng(5).integers(0, 49152, size=(1, 24))
    from wina_onnx.runtime.session import CausalLM

    logits = CausalLM.from_path(out, threads=2).forward(ids)[0]
    with torch.no_grad():
        reference = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits - reference).max() < 2e-4 * np.abs(reference).max()
    assert np.array_equal(logits.argmax(-1), reference.argmax(-1))


def test_codes_are_checked_against_the_float_weight(tiny_gguf_weights: Path) -> None:
    # Layer 0's q_proj (Q4_K, 4 heads) and k_proj (Q4_0, 2 kv heads): transformers' weights pass...
    for role, tensor in (("q_proj", "blk.0.attn_q.weight"), ("k_proj", "blk.0.attn_k.weight")):
        name = f"/model/layers.0/self_attn/{role}/MatMul"
        expected = _expected_weight(tiny_gguf_weights, tensor)
        model = _one_matmul(expected, name)
        report = gguf_int4.replace_with_gguf_int4(model, tiny_gguf_weights)
        assert report.replaced == {name: tensor} and [n.op_type for n in model.graph.node] == ["MatMulNBits"]
        assert [i.name for i in model.graph.initializer if i.name == "W"] == []  # the float weight is gone
        # ...rows in llama.cpp's order, or a single changed value, fail loudly.
        import gguf
        from gguf.quants import dequantize

        reader = gguf.GGUFReader(str(tiny_gguf_weights))
        found = next(t for t in reader.tensors if t.name == tensor)
        for wrong in (dequantize(found.data, found.tensor_type), expected + np.eye(*expected.shape) * 1e-3):
            with pytest.raises(gguf_int4.GgufInt4Error, match="do not reproduce the exported float weight"):
                gguf_int4.replace_with_gguf_int4(_one_matmul(wrong, name), tiny_gguf_weights)


def test_no_four_bit_weight_is_refused(tiny_gguf_weights: Path) -> None:
    # Layer 1's v_proj is Q8_0: nothing to keep as 4 bits.
    weight = _expected_weight(tiny_gguf_weights, "blk.1.attn_v.weight")
    model = _one_matmul(weight, "/model/layers.1/self_attn/v_proj/MatMul")
    with pytest.raises(gguf_int4.GgufInt4Error, match="no 4-bit"):
        gguf_int4.replace_with_gguf_int4(model, tiny_gguf_weights)


def test_int4_refuses_float_sources(tiny_llama_hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="optimize --quantize int4"):
        export_model(str(tiny_llama_hf_dir), tmp_path / "out", int4=True, progress=False)
    with pytest.raises(ExportError, match="--int4 exports only"):
        export_model(str(tiny_llama_hf_dir), tmp_path / "out", accuracy_level=4, progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- SmolLM2 (Q4_1)
@pytest.mark.slow
def test_smollm2_int4_equals_float_export(smollm2_dir: Path, tmp_path: Path) -> None:
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.runtime.session import CausalLM, load_tokenizer

    float_model = onnx.load(str(smollm2_dir / "model.onnx"))
    float_weights = {n.name: n.input[1] for n in float_model.graph.node if n.op_type == "MatMul"}
    int4_model = onnx.ModelProto()
    int4_model.CopyFrom(float_model)
    report = gguf_int4.replace_with_gguf_int4(int4_model, default_gguf_path())
    assert report.types == {"Q4_1": 210} and not report.kept_float
    assert report.max_error_ratio <= gguf_int4.TOLERANCE_EPS

    # Every projection (7 per layer, 30 layers) is MatMulNBits; nothing else changed kind.
    roles = [n for n in int4_model.graph.node if classify(n.name.removesuffix("_Q4"))]
    assert len(roles) == 210 and all(n.op_type == "MatMulNBits" for n in roles)
    assert sum(n.op_type == "MatMul" for n in int4_model.graph.node) == len(float_weights) - 210

    float_inits = {i.name: i for i in float_model.graph.initializer}
    inits = {i.name: i for i in int4_model.graph.initializer}
    worst = 0.0
    for node in roles:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        b, scales, zeros = (numpy_helper.to_array(inits[name]) for name in node.input[1:4])
        assert zeros.dtype == np.float32
        weight = nbits.dequantize_matmul_nbits(b, scales, zeros, k=attrs["K"], n=attrs["N"], block_size=32)
        expected = numpy_helper.to_array(float_inits[float_weights[node.name.removesuffix("_Q4")]])
        worst = max(worst, float(np.abs(weight - expected).max() / np.abs(expected).max()))
    assert worst < 4 * EPS  # relative to each weight's largest value

    path = tmp_path / "model.onnx"
    onnx.save(int4_model, str(path))
    del float_model, int4_model
    for sidecar in smollm2_dir.glob("*.json"):
        (tmp_path / sidecar.name).write_bytes(sidecar.read_bytes())
    text = "The tower is 324 metres tall, about the same height as an 81-storey building."
    ids = tokenize_text(load_tokenizer(smollm2_dir), text)[None]
    dense = CausalLM.from_path(smollm2_dir / "model.onnx", threads=2).forward(ids)[0]
    int4 = CausalLM.from_path(path, threads=2).forward(ids)[0]
    assert np.abs(int4 - dense).max() < 1e-3
    assert np.array_equal(int4.argmax(-1), dense.argmax(-1))


def test_cli_int4_on_a_float_model_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", "export", str(tmp_path / "hf"), "-o",
                             str(tmp_path / "out"), "--int4"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "optimize --quantize int4" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
