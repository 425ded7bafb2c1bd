"""The gate reader (wina_onnx.gates) and the instrumented run (wina_onnx.calibrate.instrument).

The reader is checked against the input positions docs/op-schema.md gives for each op
(written out here, not taken from schema.py), and against what the passes write on the
tiny Llama; the instrumented run against a session of the model with the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.pipeline_helpers import optimized_copy
from onnx import TensorProto, helper

from wina_onnx import get_library_path, schema
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.calibrate.instrument import InstrumentedRun, expose_inputs, window_count
from wina_onnx.data import default_text
from wina_onnx.errors import ConfigError
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.evaluation.report import _matmul_names
from wina_onnx.gates import is_gate, read_gate, read_gates
from wina_onnx.runtime.session import CausalLM, load_tokenizer


def _node(op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, [f"y{i}" for i in range(outputs)], name="gate", domain="ai.wina",
                            **attrs)


def test_single_gate_inputs_by_role() -> None:
    gate = read_gate(_node("WinaSparseMatMul", ["x", "w", "s", "", "k", "b"], gating="topk"))
    assert (gate.x, gate.weights, gate.score_scale, gate.threshold, gate.k, gate.bias) == ("x", ("w",), "s", "", "k", "b")
    assert gate.gating == "topk" and gate.attributes == {"gating": "topk"}
    assert gate.member_names() == ["gate"] and gate.weight_inputs() == ("w",)
    short = read_gate(_node("WinaSparseMatMul", ["x", "w", "s", "t"], gating="threshold"))
    assert (short.threshold, short.k, short.biases, short.bias) == ("t", "", (), "")
    assert read_gate(_node("WinaSparseMatMul", ["x", "w", "s", "t"])).gating == ""  # no attribute: no guess


def test_nbits_gate_inputs_by_role() -> None:
    node = _node("WinaSparseMatMulNBits", ["x", "codes", "scales", "zeros", "s", "t", "", ""], gating="threshold",
                 K=64, N=32, bits=4, block_size=32, accuracy_level=4)
    gate = read_gate(node)
    assert (gate.x, gate.weights, gate.scales, gate.zero_points, gate.score_scale, gate.threshold, gate.k) == (
        "x", ("codes",), "scales", "zeros", "s", "t", "")
    assert gate.is_nbits and not gate.is_group and gate.biases == ()
    assert gate.attributes["block_size"] == 32 and gate.attributes["accuracy_level"] == 4
    assert gate.weight_inputs() == ("codes", "scales", "zeros")
    types = {"codes": TensorProto.UINT8, "scales": TensorProto.FLOAT16}
    assert gate.activation_type(types) == TensorProto.FLOAT16  # X has the scales' type, not the codes'
    no_zeros = read_gate(_node("WinaSparseMatMulNBits", ["x", "codes", "scales", "", "s", "", "k"], gating="topk"))
    assert no_zeros.weight_inputs() == ("codes", "scales") and no_zeros.k == "k"


def test_group_gate_weights_biases_and_members() -> None:
    node = _node("WinaSparseMatMulGroup", ["x", "s", "t", "wq", "wk", "wv", "bq", "bk", "bv"], outputs=3,
                 members=["q", "k", "v"])
    gate = read_gate(node)
    assert (gate.x, gate.score_scale, gate.threshold) == ("x", "s", "t")
    assert gate.weights == ("wq", "wk", "wv") and gate.biases == ("bq", "bk", "bv")
    assert gate.is_group and gate.gating == "threshold" and gate.member_names() == ["q", "k", "v"]
    assert gate.activation_type({"wq": TensorProto.FLOAT16}) == TensorProto.FLOAT16
    unnamed = read_gate(_node("WinaSparseMatMulGroup", ["x", "s", "t", "w0", "w1"], outputs=2))
    assert unnamed.biases == () and unnamed.member_names() == ["gate[0]", "gate[1]"]


def test_other_nodes_are_not_gates() -> None:
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"])
    other_domain = helper.make_node("WinaSparseMatMul", ["x", "w", "s"], ["y"], domain="custom")
    assert read_gate(matmul) is None and read_gate(other_domain) is None
    assert not is_gate(other_domain)
    assert read_gates([matmul, _node("WinaSparseMatMul", ["x", "w", "s"])])[0].x == "x"


def test_metadata_keys_are_the_file_format() -> None:
    """Models written earlier carry these keys: they must read the same."""
    assert (schema.META_VERSION, schema.META_CONFIG, schema.META_GATED, schema.META_GROUPS) == (
        "wina_onnx.version", "wina_onnx.config", "wina_onnx.gated", "wina_onnx.groups")
    assert (schema.META_TRANSFORM, schema.META_GGUF_INT4) == ("wina_onnx.transform", "wina_onnx.gguf_int4")
    assert schema.GROUP_ATTR_MEMBERS == "members"


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


@pytest.fixture(scope="module")
def gated_models(tiny_llama_dir: Path, text_ids: np.ndarray, tmp_path_factory) -> tuple[Path, Path]:
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", token_ids=text_ids[:512], windows=2, window=128,
                                  progress=False)
    out = tmp_path_factory.mktemp("gates")
    plain = optimized_copy(tiny_llama_dir, out / "plain", gating="threshold", calibration=calibration)
    grouped = optimized_copy(tiny_llama_dir, out / "grouped", gating="threshold", calibration=calibration,
                             group=True)
    return plain, grouped


def test_reader_on_what_the_passes_write(gated_models) -> None:
    plain, grouped = (onnx.load(str(p)) for p in gated_models)
    single = {g.name: g for g in read_gates(plain.graph.node)}
    assert len(single) == 14 and all(g.gating == "threshold" for g in single.values())
    gates = read_gates(grouped.graph.node)
    assert sorted(len(g.weights) for g in gates) == [1] * 4 + [2] * 2 + [3] * 2
    inits = {i.name for i in grouped.graph.initializer}
    names = []
    for gate in gates:
        assert {gate.score_scale, gate.threshold, *gate.weights} <= inits
        names += gate.member_names()
        for name, weight in zip(gate.member_names(), gate.weights):
            # Each grouped weight is the one its single gate multiplied, and reads the same X.
            assert (weight, gate.x) == (single[name].weights[0], single[name].x)
    assert sorted(names) == sorted(single)
    # `report --model` places a grouped model's projections under the names they had alone.
    assert sorted(_matmul_names(gated_models[1])) == sorted(_matmul_names(gated_models[0]))
    assert set(single) <= set(_matmul_names(gated_models[1]))


def test_instrumented_run_borrows_the_model(gated_models, text_ids: np.ndarray) -> None:
    model = onnx.load(str(gated_models[1]))
    before = model.SerializeToString()
    gates = read_gates(model.graph.node)
    run = InstrumentedRun(model, [g.node for g in gates], model_dir=gated_models[1].parent, threads=1)
    assert model.SerializeToString() == before  # the added outputs are gone again
    assert set(run.exposed) == {g.name for g in gates} and set(run.exposed.values()) == {g.x for g in gates}
    windows = list(run.windows(text_ids, 2, 32))
    assert len(windows) == 2
    # The same tensors as a session of the model with those outputs added by hand.
    names = sorted({g.x for g in gates})
    expose_inputs(model, [g.node for g in gates])
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lm = CausalLM(session, gated_models[1].parent)
    for w, outputs in enumerate(windows):
        expected = session.run(names, lm.feeds(text_ids[w * 32:(w + 1) * 32][None, :]))
        for name, value in zip(names, expected):
            assert outputs[name].shape == (1, 32, value.shape[-1])
            np.testing.assert_array_equal(outputs[name], value)


def test_instrumented_run_beside_the_model_leaves_nothing(tiny_llama_dir: Path, text_ids: np.ndarray) -> None:
    path = tiny_llama_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == "MatMul" and "down_proj" in n.name)
    files = set(tiny_llama_dir.iterdir())
    run = InstrumentedRun(model, [node], model_dir=tiny_llama_dir, beside=path)
    assert set(tiny_llama_dir.iterdir()) == files
    (outputs,) = run.windows(text_ids, 1, 16)
    assert outputs[node.input[0]].shape[:2] == (1, 16)


def test_window_count() -> None:
    assert window_count(np.zeros(300), 4, 100, text="calibration") == 3
    with pytest.raises(ConfigError, match="the refinement text has 99 tokens, fewer than one window of 100"):
        window_count(np.zeros(99), 4, 100, text="refinement")
