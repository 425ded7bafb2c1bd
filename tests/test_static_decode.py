"""The static-cache variant of the fused Llama graph and its bound-once decode runner.

On the CPU provider (tiny shape): the variant computes what the Optimum-style graph
computes, before and after the WINA pass, and the runner that binds its buffers once and
writes each step's inputs in place gives the plain runner's greedy tokens. The CUDA-graph
replay is checked against the same runner without graphs when the CUDA provider is there.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from wina_onnx import schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.testing.fused_llama import (SEQLENS_K, TOTAL_SEQ_LEN, LlamaShape, build_fused_llama, node_counts,
                                   write_static_cache_model)
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig
from wina_onnx.runtime.session import CausalLM
from wina_onnx.runtime.static_decode import StaticCacheLM

TINY = LlamaShape(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
PROMPT = np.array([5, 17, 3, 99, 42, 7, 250, 1, 64], dtype=np.int64)


def plain_greedy(lm: CausalLM, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    logits, past = lm.forward(prompt[None])
    out, seen = [int(np.argmax(logits[0, -1]))], [logits[0, -1]]
    while len(out) < new_tokens:
        logits, past = lm.forward(np.array([[out[-1]]], np.int64), past)
        out.append(int(np.argmax(logits[0, -1])))
        seen.append(logits[0, -1])
    return out, seen


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("static") / "dense"
    dense = build_fused_llama(TINY, folder)
    static = write_static_cache_model(dense, folder / "model_static.onnx")
    return dense, static


def test_static_graph_interface(models):
    _, static = models
    model = onnx.load(str(static), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    assert "attention_mask" not in inputs and "position_ids" not in inputs
    assert inputs[SEQLENS_K].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert len(inputs[TOTAL_SEQ_LEN].type.tensor_type.shape.dim) == 0
    assert inputs["past_key_values.0.key"].type.tensor_type.shape.dim[2].dim_param == "max_sequence_length"
    counts = node_counts(static)
    assert set(counts) - {"total"} == {"Gather", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
                                       "MatMul", "GroupQueryAttention", "Sigmoid", "Mul"}
    for n in model.graph.node:
        if n.op_type == "GroupQueryAttention":
            assert list(n.input[5:7]) == [SEQLENS_K, TOTAL_SEQ_LEN]


def test_builder_writes_the_static_variant(tmp_path):
    path = build_fused_llama(TINY, tmp_path, static_cache=True)
    assert SEQLENS_K in {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def test_bound_once_runner_matches_the_plain_runner(models):
    dense, static = models
    want, want_logits = plain_greedy(CausalLM.from_path(dense), PROMPT, 8)
    runner = StaticCacheLM.from_path(static, max_length=32, cuda_graph=False, device_type="cpu")
    got = runner.greedy(PROMPT, 8)
    assert got == want
    # and the logits of the last step agree (fp16 kernels, same order of work up to the cache layout)
    np.testing.assert_allclose(runner.logits.numpy()[0, 0].astype(np.float32),
                               want_logits[-1].astype(np.float32), atol=2e-3)
    # a second prompt reuses the same buffers from position 0
    assert runner.greedy(PROMPT[:5], 4) == plain_greedy(CausalLM.from_path(dense), PROMPT[:5], 4)[0]


def test_runner_limits(models):
    _, static = models
    runner = StaticCacheLM.from_path(static, max_length=12, cuda_graph=False, device_type="cpu")
    with pytest.raises(RuntimeError, match="prefill first"):
        runner.step(1)
    runner.prefill(PROMPT)
    for token in (1, 2, 3):  # positions 9, 10, 11
        runner.step(token)
    with pytest.raises(RuntimeError, match="full"):
        runner.step(4)
    with pytest.raises(ValueError, match="does not fit"):
        runner.prefill(np.arange(13))


@pytest.fixture(scope="module")
def wina(models, tmp_path_factory):
    dense, _ = models
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, size=64)
    calibration = calibrate_model(dense, token_ids=ids, windows=2, window=32, progress=False)
    out = tmp_path_factory.mktemp("static") / "wina" / "model.onnx"
    config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(0.5), calibration=calibration,
                        group=False)
    optimize_model(dense, out, config, progress=False)
    return out, write_static_cache_model(out, out.parent / "model_static.onnx")


def test_wina_model_converts_and_runs(wina):
    out, static = wina
    assert node_counts(static)["WinaSparseMatMul"] == 14
    want, _ = plain_greedy(CausalLM.from_path(out), PROMPT, 6)
    got = StaticCacheLM.from_path(static, max_length=24, cuda_graph=False, device_type="cpu").greedy(PROMPT, 6)
    assert got == want


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider")
@pytest.mark.parametrize("which", ["dense", "wina"])
def test_cuda_graph_replay_gives_the_plain_tokens(models, wina, which):
    static = models[1] if which == "dense" else wina[1]
    plain = StaticCacheLM.from_path(static, max_length=48, cuda_graph=False)
    want = plain.greedy(PROMPT, 20)
    graphs = StaticCacheLM.from_path(static, max_length=48, cuda_graph=True)
    assert graphs.greedy(PROMPT, 20) == want  # capture during the first steps, replays after
    assert graphs.greedy(PROMPT[:6], 20) == plain.greedy(PROMPT[:6], 20)  # replays from the first step
    assert graphs.greedy(PROMPT, 20, use_graph=False) == want  # node by node in the graph session
