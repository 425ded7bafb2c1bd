"""The WINA pass on 4-bit models: the tiny random Llama exported by Optimum, its projections
quantized by ONNX Runtime's MatMulNBitsQuantizer (as `optimize --quantize int4` does).

Pinned here, without the op library: MatMulNBits projections are candidates with their
roles; the rewrite into WinaSparseMatMulNBits keeps names, outputs, every code and scale
(re-packed) and the bias, with score scales from the dequantized rows; unsupported nodes
are refused with their reason; the standard-ops lowering of a 4-bit gate computes the
oracle and reproduces the dense int4 model at sparsity 0; calibration and greedy curves
run inside the int4 model; `optimize --quantize int4` writes what `inspect` describes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from helpers.nbits_models import initializers, nbits_node, quantized_matmul, run
from onnx import numpy_helper

from wina_onnx import reference, schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.data import default_text
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.calibrate.greedy import ActivationSample
from wina_onnx.modelio import load_model
from wina_onnx.optimize import _check, optimize_model, read_metadata
from wina_onnx.passes import GateConfig, apply_wina_gates, find_candidates
from wina_onnx.passes import nbits
from wina_onnx.export.quantize import QuantizeConfig, quantize_model_file
from wina_onnx.runtime.session import CausalLM, load_session, load_tokenizer

ROLES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# accuracy_level 0 (float arithmetic) so that dense comparisons are within float rounding.
INT4 = QuantizeConfig(block_size=32, symmetric=False, accuracy_level=0)


@pytest.fixture(scope="module")
def int4_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """The tiny Llama with its projections as 4-bit MatMulNBits (zero points), tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny-int4")
    quantize_model_file(tiny_llama_dir / "model.onnx", folder / "model.onnx", INT4)
    for sidecar in tiny_llama_dir.glob("*.json"):
        shutil.copy2(sidecar, folder / sidecar.name)
    return folder


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


def _logits(path: Path, ids: np.ndarray) -> np.ndarray:
    lm = CausalLM(load_session(path, threads=2, optimization_level="disable"))
    return lm.forward(ids[None, :])[0][0]


def test_matmul_nbits_projections_are_candidates_with_their_roles(int4_dir: Path) -> None:
    model = load_model(int4_dir / "model.onnx")
    candidates, skipped = find_candidates(model.graph)
    assert len(candidates) == 14 and all(c.quantized is not None for c in candidates)
    assert all(c.node_name.endswith("/MatMul_Q4") for c in candidates)
    assert sorted((c.role.layer, c.role.kind) for c in candidates) == sorted(
        (layer, role) for layer in (0, 1) for role in ROLES)
    down = next(c for c in candidates if c.label == "L1.down_proj")
    assert (down.k, down.n, down.quantized.block_size, down.dtype) == (160, 64, 32, onnx.TensorProto.FLOAT)
    assert down.quantized.zero_point_type == onnx.TensorProto.UINT8
    # codes [K, N/2] + scales [K/G, N] float32 + zero points [K/G, N/2]
    assert down.weight_bytes == 160 * 32 + 5 * 64 * 4 + 5 * 32
    assert {s.node_name: s.reason for s in skipped}["/lm_head/MatMul"] == "LM head or embedding"


@pytest.mark.parametrize("mode", ["wina", "teal"])
def test_rewrite_keeps_names_outputs_codes_and_scales(int4_dir: Path, mode: str) -> None:
    model = load_model(int4_dir / "model.onnx")
    before = {n.name: n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" not in n.name}
    old_inits = initializers(model)
    report = apply_wina_gates(model, GateConfig(mode=mode, allocation=Allocation.uniform(0.5), norm_on="all"))
    assert len(report.records) == 14 and all(r.bits == 4 and r.block_size == 32 for r in report.records)
    inits = initializers(model)
    gates = [n for n in model.graph.node if n.op_type == schema.NBITS_OP_TYPE]
    assert sorted(n.name for n in gates) == sorted(before)
    for node in gates:
        old = before[node.name]
        assert node.domain == schema.DOMAIN and list(node.output) == list(old.output)
        assert node.input[schema.NBITS_INPUT_X] == old.input[0]
        attrs = nbits.attributes(node)
        old_attrs = nbits.attributes(old)
        assert {key: attrs[key] for key in ("K", "N", "bits", "block_size")} == \
            {key: old_attrs[key] for key in ("K", "N", "bits", "block_size")}
        assert attrs["accuracy_level"] == old_attrs.get("accuracy_level", 0)
        k, n = attrs["K"], attrs["N"]
        array = {i: numpy_helper.to_array(inits[node.input[i]]) for i in range(1, len(node.input)) if node.input[i]}
        original = nbits.dequantize_matmul_nbits(
            *(numpy_helper.to_array(old_inits[name]) for name in old.input[1:4]), k=k, n=n, block_size=32)
        dense = reference.dequantize_nbits(array[1], array[2], array[3], block_size=32, n=n)
        np.testing.assert_array_equal(dense, original)  # no code or scale changed
        scale = array[schema.NBITS_INPUT_SCORE_SCALE]
        if mode == "wina":
            np.testing.assert_allclose(scale, np.linalg.norm(original, axis=1), rtol=1e-6)
        else:
            np.testing.assert_array_equal(scale, np.ones(k, np.float32))
        assert array[schema.NBITS_INPUT_K].tolist() == [k - round(0.5 * k)]
        assert schema.NBITS_INPUT_THRESHOLD >= len(node.input) or not node.input[schema.NBITS_INPUT_THRESHOLD]
    # The column-major weights are gone (re-packed, not copied); the LM head keeps its own.
    assert not {name for old in before.values() for name in old.input[1:4]} & set(inits)
    assert not any(n.op_type == "MatMulNBits" for n in model.graph.node if "lm_head" not in n.name)
    _check(model)


def test_bias_and_float_zero_points_are_kept() -> None:
    model = quantized_matmul(96, 9, block_size=64, hqq=True, bias=True)
    old = nbits_node(model)
    old_inits = initializers(model)
    apply_wina_gates(model, GateConfig(allocation=Allocation.uniform(0.25)))
    (node,) = model.graph.node
    assert node.op_type == schema.NBITS_OP_TYPE and len(node.input) == schema.NBITS_NUM_INPUTS
    assert node.input[schema.NBITS_INPUT_BIAS] == "bias" and "bias" in initializers(model)
    zeros = numpy_helper.to_array(initializers(model)[node.input[schema.NBITS_INPUT_ZERO_POINTS]])
    assert zeros.dtype == np.float32 and zeros.shape == (2, 9)
    np.testing.assert_array_equal(zeros.T.reshape(-1), numpy_helper.to_array(old_inits[old.input[3]]).reshape(-1))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_scales_keep_their_type(dtype) -> None:
    from wina_onnx.calibrate.instrument import expose_inputs

    model = quantized_matmul(96, 10, block_size=32, dtype=dtype)
    old_scales = numpy_helper.to_array(initializers(model)[nbits_node(model).input[2]])
    expected_type = model.graph.input[0].type.tensor_type.elem_type
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    expose_inputs(probe, [nbits_node(probe)])  # x is exposed with the activations' type, not uint8
    assert [o.type.tensor_type.elem_type for o in probe.graph.output if o.name == "x"] == [expected_type]
    apply_wina_gates(model, GateConfig(allocation=Allocation.uniform(0.5)))
    (node,) = model.graph.node
    scales = initializers(model)[node.input[schema.NBITS_INPUT_SCALES]]
    assert scales.data_type == expected_type
    np.testing.assert_array_equal(numpy_helper.to_array(scales).T.reshape(-1), old_scales.reshape(-1))


def test_unsupported_nodes_are_left_alone_with_their_reason() -> None:
    model = quantized_matmul(64, 8, block_size=32, bits=8)
    report = apply_wina_gates(model, GateConfig(allocation=Allocation.uniform(0.5)))
    assert not report.records
    assert "MatMulNBits with bits=8; only 4-bit weights are gated" in report.summary()
    model = quantized_matmul(64, 8, block_size=32)
    node = nbits_node(model)
    node.input.append("g_idx")
    report = apply_wina_gates(model, GateConfig(allocation=Allocation.uniform(0.5)))
    assert not report.records and "g_idx (act-order)" in report.summary()
    assert model.graph.node[0].op_type == "MatMulNBits"


@pytest.mark.parametrize("gating", ["topk", "threshold"])
@pytest.mark.parametrize("hqq", [False, True], ids=["uint8-zero-points", "float-zero-points"])
def test_standard_ops_lowering_of_a_4bit_gate_computes_the_oracle(gating: str, hqq: bool) -> None:
    from wina_onnx.calibrate.calibration import Calibration

    k, n, g = 160, 23, 32
    model = quantized_matmul(k, n, block_size=g, hqq=hqq, bias=True, seed=11)
    node = nbits_node(model)
    inits = initializers(model)
    weight = nbits.load_feature_major(nbits.read_source(node, inits, set()), inits)
    bias = numpy_helper.to_array(inits["bias"])
    x = np.random.default_rng(5).standard_normal((3, 7, k)).astype(np.float32)
    norms = weight.row_norms()
    calibration = Calibration()
    calibration.add(node.name, "wina", (np.abs(x) * norms).reshape(-1, k))
    dense = run(model, x)
    apply_wina_gates(model, GateConfig(norm_on="all", gating=gating, allocation=Allocation.uniform(0.5), backend="onnx",
                                       calibration=calibration if gating == "threshold" else None))
    assert not any(o.domain == schema.DOMAIN for o in model.opset_import)  # runs without the op library
    (product,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert product.name == node.name + "/wina/MatMulNBits" and product.input[1:] == node.input[1:]
    gate = ({"k": k - 80} if gating == "topk"
            else {"threshold": calibration.threshold(node.name, "wina", 0.5)})
    want = reference.wina_sparse_matmul_nbits(x, weight.codes, weight.scales, weight.zero_points, norms,
                                              block_size=g, n=n, bias=bias, **gate)
    got = run(model, x)
    assert np.abs(got - dense).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # Gating the lowered model again finds nothing new to gate.
    again, skipped = find_candidates(model.graph)
    assert not again and skipped[0].reason == "already gated (standard-ops lowering)"


def test_lowered_int4_model_at_sparsity_zero_reproduces_the_dense_int4_logits(int4_dir, tmp_path, text_ids) -> None:
    out = tmp_path / "model.onnx"
    optimize_model(int4_dir / "model.onnx", out, GateConfig(allocation=Allocation.uniform(0.0), backend="onnx"),
                   progress=False)
    for sidecar in int4_dir.glob("*.json"):
        shutil.copy2(sidecar, tmp_path / sidecar.name)
    ids = text_ids[:48]
    np.testing.assert_array_equal(_logits(out, ids), _logits(int4_dir / "model.onnx", ids))


def test_calibration_and_greedy_curves_run_inside_the_int4_model(int4_dir: Path, text_ids: np.ndarray) -> None:
    sample = ActivationSample(rows=64)
    calibration = calibrate_model(int4_dir / "model.onnx", token_ids=text_ids, windows=2, window=64,
                                  progress=False, sample=sample, curves=True)
    model = load_model(int4_dir / "model.onnx")
    names = sorted(c.node_name for c in find_candidates(model.graph)[0])
    assert sorted(calibration.counts) == names and calibration.tokens == 128
    assert all(int(calibration.counts[name]["wina"].sum()) == 128 * calibration.features[name] for name in names)
    # The greedy search weighs every matrix by its stored 4-bit bytes and reaches the target per layer.
    curves = calibration.curves
    candidates = {c.node_name: c for c in find_candidates(model.graph)[0]}
    assert {t.node_name: t.weight_bytes for t in curves.targets} == {
        name: c.weight_bytes for name, c in candidates.items()}
    allocation = curves.allocate(0.5, mode="wina")
    for layer in (0, 1):
        members = [t for t in curves.targets if t.group == f"layer {layer}"]
        total = sum(t.weight_bytes for t in members)
        assert sum(allocation.for_node(t.node_name) * t.weight_bytes for t in members) / total == \
            pytest.approx(0.5, abs=1e-6)
    # The WINA histogram is of |x| * the dequantized rows' norms: its 0.5 quantile gates half the scores.
    weights = {c.node_name: nbits.load_feature_major(c.quantized, initializers(model)) for c in candidates.values()}
    first = names[0]
    assert weights[first].row_norms().shape == (calibration.features[first],)
    config = GateConfig(gating="threshold", allocation=allocation, calibration=calibration)
    report = apply_wina_gates(model, config)
    assert len(report.records) == 14 and all(r.threshold is not None and r.threshold > 0 for r in report.records)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wina_onnx.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)


def test_optimize_quantize_int4_writes_a_gated_4bit_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.onnx"
    result = _cli("optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--quantize", "int4",
                  "--block-size", "16", "--asymmetric", "--backend", "onnx", "--gating", "topk",
                  "--allocate", "uniform", "--sparsity", "0.4", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # the int4 copy is gone
    model = load_model(out)
    products = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(products) == 14 and all(nbits.attributes(n)["block_size"] == 16 for n in products)
    assert all(nbits.attributes(n)["accuracy_level"] == 4 and len(n.input) > 3 and n.input[3] for n in products)
    assert read_metadata(model)["config"]["quantize"] == {"bits": 4, "block_size": 16, "symmetric": False,
                                                         "accuracy_level": 4}
    summary = json.loads(_cli("inspect", str(out), "--json").stdout)
    assert len(summary["gated"]) == 14 and {g["bits"] for g in summary["gated"]} == {4}
    assert summary["totals"]["gated_fraction_skipped"] == pytest.approx(0.4, abs=0.01)
    result = _cli("generate", str(out), "--prompt", "The", "--max-new-tokens", "3", "--threads", "1")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_optimize_quantize_refuses_what_it_cannot_do(tiny_llama_dir: Path, int4_dir: Path, tmp_path: Path) -> None:
    result = _cli("optimize", str(int4_dir / "model.onnx"), "-o", str(tmp_path / "a.onnx"), "--quantize", "int4",
                  "--gating", "topk", "--allocate", "uniform")
    assert result.returncode == 2 and "no float projection MatMul to quantize" in result.stderr
    result = _cli("optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(tmp_path / "b.onnx"),
                  "--quantize", "int4", "--block-size", "24")
    assert result.returncode == 2 and "--block-size must be a power of two" in result.stderr
    result = _cli("optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(tmp_path / "c.onnx"),
                  "--quantize", "int4", "--transform")
    assert result.returncode == 2 and "--transform cannot be combined with --quantize" in result.stderr
    assert not list(tmp_path.iterdir())


def test_genai_builder_int4_model_is_gated(genai_builder_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The GenAI model builder's own int4 CPU model: its MatMul_Q4 projections are gated (the
    rewrite keeps accuracy_level 4), and lowered at sparsity 0 it computes the same logits."""
    folder = genai_builder_dirs["int4-cpu"]
    model = load_model(folder / "model.onnx")
    candidates, skipped = find_candidates(model.graph)
    assert sorted(c.label for c in candidates) == sorted(
        f"L{layer}.{role}" for layer in (0, 1) for role in ("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert all(c.node_name.endswith("/MatMul_Q4") and c.quantized.accuracy_level == 4 for c in candidates)
    assert {s.node_name: s.reason for s in skipped} == {"/lm_head/MatMul_Q4": "LM head or embedding"}
    report = apply_wina_gates(model, GateConfig(allocation=Allocation.uniform(0.5)))
    assert len(report.records) == 10
    gates = [n for n in model.graph.node if n.op_type == schema.NBITS_OP_TYPE]
    assert len(gates) == 10 and all(nbits.attributes(n)["accuracy_level"] == 4 for n in gates)
    out = tmp_path / "model.onnx"
    optimize_model(folder / "model.onnx", out, GateConfig(allocation=Allocation.uniform(0.0), backend="onnx"),
                   progress=False)
    shutil.copy2(folder / "genai_config.json", tmp_path / "genai_config.json")
    ids = np.arange(100, 140)
    np.testing.assert_array_equal(_logits(out, ids), _logits(folder / "model.onnx", ids))
