"""`--group` on real exported models: gates sharing an input become WinaSparseMatMulGroup nodes.

Pinned here: q/k/v and gate/up of every layer are grouped (o and down, alone on their
input, are not); the grouped model gives the same logits as the ungrouped one, bit for
bit on the CPU (each weight is still multiplied by the same kernel); the weights are not
copied; top-k, standard-ops and an already grouped model are handled with a clear result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.pipeline_helpers import logits, optimized_copy

from wina_onnx import schema
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.data import default_text
from wina_onnx.errors import ConfigError
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.optimize import read_metadata
from wina_onnx.passes import GateConfig, group_shared_inputs
from wina_onnx.runtime.session import load_tokenizer


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


@pytest.fixture(scope="module")
def calibration(tiny_llama_dir: Path, text_ids: np.ndarray):
    return calibrate_model(tiny_llama_dir / "model.onnx", token_ids=text_ids[:1024], windows=4, window=128,
                           progress=False)


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_grouped_model_gives_the_same_logits(tiny_llama_dir, tmp_path, text_ids, calibration) -> None:
    plain = optimized_copy(tiny_llama_dir, tmp_path / "plain", gating="threshold", calibration=calibration)
    grouped = optimized_copy(tiny_llama_dir, tmp_path / "grouped", gating="threshold", calibration=calibration,
                             group=True)
    layers = 2  # the tiny Llama of conftest.py
    before, after = _ops(plain), _ops(grouped)
    assert before[schema.OP_TYPE] == 7 * layers
    assert after[schema.GROUP_OP_TYPE] == 2 * layers  # q/k/v and gate/up
    assert after[schema.OP_TYPE] == 2 * layers  # o and down stay single
    model = onnx.load(grouped)
    groups = read_metadata(model)["groups"]
    assert sorted(len(g) for g in groups) == [2] * layers + [3] * layers
    node = next(n for n in model.graph.node if n.op_type == schema.GROUP_OP_TYPE)
    assert [a.name for a in node.attribute] == ["members"]
    # The weights are the single gates' initializers, not copies.
    weight_bytes = lambda m: sum(i.ByteSize() for i in m.graph.initializer if len(i.dims) == 2)  # noqa: E731
    assert abs(weight_bytes(model) - weight_bytes(onnx.load(plain))) < 1024 * 1024 * 0.01
    ids = text_ids[:48]
    np.testing.assert_array_equal(logits(grouped, ids), logits(plain, ids))


def test_group_refuses_topk_and_the_standard_ops_backend() -> None:
    with pytest.raises(ConfigError, match="--group needs threshold gating"):
        GateConfig(gating=schema.GATING_TOPK, group=True).validate()
    with pytest.raises(ConfigError, match="custom-op backend"):
        GateConfig(gating=schema.GATING_THRESHOLD, backend="onnx", group=True, calibration=object()).validate()


def test_grouping_twice_changes_nothing(tiny_llama_dir, tmp_path, calibration) -> None:
    grouped = optimized_copy(tiny_llama_dir, tmp_path, gating="threshold", calibration=calibration, group=True)
    model = onnx.load(grouped)
    before = model.SerializeToString()
    report = group_shared_inputs(model)
    assert report.records == [] and "nothing grouped" in report.summary()
    assert model.SerializeToString() == before


def test_at_most_max_weights_per_group(tiny_llama_dir, tmp_path, calibration) -> None:
    plain = optimized_copy(tiny_llama_dir, tmp_path, gating="threshold", calibration=calibration)
    model = onnx.load(plain)
    report = group_shared_inputs(model, max_weights=2)
    # q/k/v (3) become a group of 2 plus a single gate left as it was; gate/up a group of 2.
    assert sorted(len(r.members) for r in report.records) == [2, 2, 2, 2]
    assert sum(n.op_type == schema.OP_TYPE for n in model.graph.node) == 2 * 3
    onnx.checker.check_model(model)


def test_sparsity_probe_reads_group_nodes_per_member(tiny_llama_dir, tmp_path, text_ids, calibration) -> None:
    from wina_onnx.evaluation.sparsity_probe import measure_sparsity

    plain = optimized_copy(tiny_llama_dir, tmp_path / "plain", gating="threshold", calibration=calibration)
    grouped = optimized_copy(tiny_llama_dir, tmp_path / "grouped", gating="threshold", calibration=calibration,
                             group=True)
    before = measure_sparsity(plain, text_ids, windows=1, window=128)
    after = measure_sparsity(grouped, text_ids, windows=1, window=128)
    assert after["gates"].keys() == before["gates"].keys()  # the gates by their original names
    assert after["gates"] == pytest.approx(before["gates"])
    assert after["weighted"] == pytest.approx(before["weighted"])


def test_inspect_says_how_the_gates_are_grouped(tiny_llama_dir, tmp_path, calibration) -> None:
    from wina_onnx.evaluation.summary import summarize

    grouped = optimized_copy(tiny_llama_dir, tmp_path, gating="threshold", calibration=calibration, group=True)
    summary = summarize(onnx.load(grouped, load_external_data=False))
    assert len(summary.gates) == 14  # every gate still has its row
    assert sorted(len(g) for g in summary.groups) == [2, 2, 3, 3]
    assert "grouped: 10 of the gates in 4 WinaSparseMatMulGroup node(s)" in summary.table()
    assert summary.to_json()["groups"] == summary.groups
