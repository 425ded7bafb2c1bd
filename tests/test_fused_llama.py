"""The fused Llama builder: runs in ONNX Runtime, the KV cache is consistent, and the WINA
pass, calibration and the IOBinding runtime accept its graph (tiny shape, CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from wina_onnx import schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.testing.fused_llama import LlamaShape, build_fused_llama, node_counts
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig
from wina_onnx.runtime.session import CausalLM, CudaCausalLM

TINY = LlamaShape(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return build_fused_llama(TINY, tmp_path_factory.mktemp("fused") / "dense")


def test_graph_has_the_fused_ops(dense):
    counts = node_counts(dense)
    assert counts["GroupQueryAttention"] == 2
    assert counts["SkipSimplifiedLayerNormalization"] == 4 and counts["SimplifiedLayerNormalization"] == 1
    assert counts["MatMul"] == 7 * 2 + 1
    assert (dense.parent / "model.onnx.data").stat().st_size >= TINY.parameters() * 2


def test_incremental_decoding_matches_one_prefill(dense):
    lm = CausalLM.from_path(dense)
    ids = np.arange(3, 15, dtype=np.int64)[None]
    full, _ = lm.forward(ids)
    logits, past = lm.forward(ids[:, :8])
    for t in range(8, 12):
        logits, past = lm.forward(ids[:, t:t + 1], past)
        np.testing.assert_allclose(logits[0, -1].astype(np.float32), full[0, t].astype(np.float32), atol=2e-3)
    assert past[0][0].shape == (1, TINY.num_key_value_heads, 12, TINY.head_dim)


def test_iobinding_runtime_matches_plain_runs(dense):
    lm = CausalLM.from_path(dense)
    bound = CudaCausalLM(lm, device_type="cpu")  # same binding code, host memory
    ids = np.arange(20, 30, dtype=np.int64)[None]
    ref, past = lm.forward(ids[:, :9])
    ref2, _ = lm.forward(ids[:, 9:], past)
    got, present = bound.forward(ids[:, :9], fetch_logits=True)
    got2, present = bound.forward(ids[:, 9:], present, fetch_logits=True)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got2, ref2)
    assert present[0][0].shape() == [1, TINY.num_key_value_heads, 10, TINY.head_dim]


def test_wina_pass_and_calibration_accept_the_fused_graph(dense, tmp_path):
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, size=64)
    calibration = calibrate_model(dense, token_ids=ids, windows=2, window=32, progress=False)
    assert len(calibration.features) == 14  # every projection; the LM head is refused
    out = tmp_path / "wina" / "model.onnx"
    config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(0.5), calibration=calibration,
                        group=False)
    report = optimize_model(dense, out, config, progress=False)
    assert len(report.records) == 14
    counts = node_counts(out)
    assert counts["WinaSparseMatMul"] == 14 and counts["MatMul"] == 1
    wina = CausalLM.from_path(out)
    logits, _ = wina.forward(ids[None, :16])
    assert np.isfinite(logits.astype(np.float32)).all()


# The int4 variant: the GenAI builder's CUDA int4 graph --------------------------------

@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    return build_fused_llama(TINY, tmp_path_factory.mktemp("fused") / "int4", weights="int4")


def _nbits_nodes(path) -> list:
    model = onnx.load(str(path), load_external_data=False)
    return [n for n in model.graph.node if n.op_type == "MatMulNBits"]


def test_int4_graph_is_the_builders_cuda_layout(int4):
    model = onnx.load(str(int4))
    inits = {t.name: onnx.numpy_helper.to_array(t, base_dir=str(int4.parent)) for t in model.graph.initializer}
    nodes = _nbits_nodes(int4)
    assert len(nodes) == 5 * TINY.num_hidden_layers + 1  # qkv, o, gate, up, down per layer, and the LM head
    assert nodes[0].name == "/model/layers.0/attn/qkv_proj/MatMul_Q4" and nodes[-1].name == "/lm_head/MatMul_Q4"
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert n.domain == "com.microsoft" and len(n.input) == 3  # symmetric: no zero points
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, 0)
        codes, scales = inits[n.input[1]], inits[n.input[2]]
        assert codes.dtype == np.uint8 and codes.shape == (attrs["N"], attrs["K"] // 32, 16)
        assert scales.dtype == np.float16 and scales.shape == (attrs["N"], attrs["K"] // 32)
        assert (scales > 0).all()
    hd = TINY.head_dim
    assert nodes[0].output[0] in [n.input[0] for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert {a.name: a.i for a in nodes[0].attribute}["N"] == (TINY.num_attention_heads + 2 * TINY.num_key_value_heads) * hd
    gqa = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    assert list(gqa.input[1:3]) == ["", ""]  # packed q/k/v
    assert node_counts(int4).get("MatMul", 0) == 0


def test_int4_graph_matches_the_builders_own_int4_model(int4, genai_builder_dirs):
    """Node names, inputs and attributes of every MatMulNBits as the builder writes them (its CPU int4 fixture)."""
    def layout(path):
        return [(n.name.replace("layers.1/", "layers.0/"), len(n.input), sorted(a.name for a in n.attribute),
                 n.input[1].rsplit(".", 1)[-1], n.input[2].rsplit(".", 1)[-1])
                for n in _nbits_nodes(path) if "layers.0/" in n.name or "layers.1/" in n.name or "lm_head" in n.name]

    builder = genai_builder_dirs["int4-cpu"] / "model.onnx"
    ours, theirs = layout(int4), layout(builder)
    assert ours[:5] == theirs[:5] and ours[-1] == theirs[-1]


def test_int4_runs_and_decodes_incrementally(int4):
    lm = CausalLM.from_path(int4)
    ids = np.arange(3, 15, dtype=np.int64)[None]
    full, _ = lm.forward(ids)
    assert np.isfinite(full.astype(np.float32)).all() and full.astype(np.float32).std() > 1e-3
    logits, past = lm.forward(ids[:, :8])
    for t in range(8, 12):
        logits, past = lm.forward(ids[:, t:t + 1], past)
        np.testing.assert_allclose(logits[0, -1].astype(np.float32), full[0, t].astype(np.float32), atol=2e-3)


def test_int4_every_projection_becomes_winasparsematmulnbits(int4, tmp_path):
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, size=64)
    calibration = calibrate_model(int4, token_ids=ids, windows=2, window=32, progress=False)
    out = tmp_path / "wina" / "model.onnx"
    config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(0.5), calibration=calibration,
                        group=False)
    report = optimize_model(int4, out, config, progress=False)
    assert len(report.records) == 5 * TINY.num_hidden_layers
    counts = node_counts(out)
    assert counts[schema.NBITS_OP_TYPE] == 5 * TINY.num_hidden_layers and counts["MatMulNBits"] == 1  # LM head
    logits, _ = CausalLM.from_path(out).forward(ids[None, :16])
    assert np.isfinite(logits.astype(np.float32)).all()


def test_unknown_weight_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="weights must be one of"):
        build_fused_llama(TINY, tmp_path, weights="int8")
    with pytest.raises(ValueError, match="block_size"):
        build_fused_llama(TINY, tmp_path, weights="int4", block_size=48)
