"""The fused Llama builder: runs in ONNX Runtime, the KV cache is consistent, and the WINA
pass, calibration and the IOBinding runtime accept its graph (tiny shape, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from wina_onnx import schema
from wina_onnx.allocation import Allocation
from wina_onnx.calibration import calibrate_model
from wina_onnx.fused_llama import LlamaShape, build_fused_llama, node_counts
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig
from wina_onnx.runtime import CausalLM, CudaCausalLM

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
    config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(0.5), calibration=calibration)
    report = optimize_model(dense, out, config, progress=False)
    assert len(report.gated) == 14
    counts = node_counts(out)
    assert counts["WinaSparseMatMul"] == 14 and counts["MatMul"] == 1
    wina = CausalLM.from_path(out)
    logits, _ = wina.forward(ids[None, :16])
    assert np.isfinite(logits.astype(np.float32)).all()
