"""`wina-onnx inspect`: the gated MatMuls of an optimized model, per layer and role, with totals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from helpers.pipeline_helpers import optimized_copy

from wina_onnx import cli
from wina_onnx.passes.allocation import Allocation
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig
from wina_onnx.evaluation.summary import summarize

ROLES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def topk_model(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return optimized_copy(tiny_llama_dir, tmp_path_factory.mktemp("inspect-topk"), sparsity=0.5)


def _inspect(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(["inspect", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_json_rows_and_totals(topk_model: Path, capsys):
    status, out, _ = _inspect(capsys, str(topk_model), "--json")
    assert status == 0
    report = json.loads(out)
    gated = report["gated"]
    assert len(gated) == 14 and {g["layer"] for g in gated} == {0, 1} and {g["role"] for g in gated} == ROLES
    model = onnx.load(topk_model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for g in gated:
        weight = weights[nodes[g["node"]].input[1]]  # B [K, N] of the WinaSparseMatMul
        assert (g["K"], g["N"]) == weight.shape and g["weight_bytes"] == weight.nbytes
        assert g["score"] == "|x|*||row||" and g["gating"] == "topk" and g["k"] == g["K"] // 2
        assert g["bytes_skipped"] == pytest.approx(weight.nbytes * (g["K"] - g["k"]) / g["K"])
    totals = report["totals"]
    assert totals["gated"] == 14
    assert totals["bytes_skipped_per_token"] == pytest.approx(sum(g["bytes_skipped"] for g in gated))
    assert totals["gated_fraction_skipped"] == pytest.approx(0.5)
    float_bytes = sum(w.nbytes for w in weights.values() if w.dtype.kind == "f")
    assert totals["model_weight_bytes"] == float_bytes
    assert report["config"]["sparsity"] == "uniform 0.5"


def test_table(topk_model: Path, capsys):
    status, out, _ = _inspect(capsys, str(topk_model))
    assert status == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    rows = lines[header + 1: header + 15]
    assert [r.split()[:2] for r in rows[:2]] == [["0", "q_proj"], ["0", "k_proj"]]
    assert all(r.split()[4:7] == ["|x|*||row||", "topk", "0.500"] for r in rows)
    assert lines[header + 15].startswith("total: 14 gated MatMuls") and "(50.0%)" in lines[header + 15]
    assert lines[-1].startswith("settings: ")


def test_allocation_and_reference_norms(tiny_llama_dir: Path, tmp_path: Path):
    allocation = Allocation(default=0.25, sparsity={"/model/layers.1/*": 0.75})
    model = tmp_path / "model.onnx"
    optimize_model(tiny_llama_dir / "model.onnx", model, GateConfig(allocation=allocation, norm_on="reference"),
                   progress=False)
    summary = summarize(onnx.load(model, load_external_data=False))
    by = {(g.layer, g.role): g for g in summary.gates}
    assert by[0, "q_proj"].sparsity == 0.25 and by[1, "down_proj"].sparsity == 0.75
    # WINA's reference code uses weight norms only for k_proj and gate_proj: the rest score |x| (TEAL).
    assert {role for (_, role), g in by.items() if g.score == "|x|*||row||"} == {"k_proj", "gate_proj"}
    assert {g.score for g in summary.gates} == {"|x|*||row||", "|x|"}
    table = summary.table()
    assert "teal" not in table and table.count("|x|*||row||") == 4 and table.count("|x| ") == 10
    expected = sum(g.weight_bytes * (g.K - g.k) / g.K for g in summary.gates)
    assert summary.bytes_skipped == pytest.approx(expected)
    assert 0.25 < summary.totals()["gated_fraction_skipped"] < 0.75
    assert np.isclose(summary.totals()["model_fraction_skipped"],
                      summary.bytes_skipped / summary.model_weight_bytes)


def test_dense_model_is_refused(tiny_llama_dir: Path, capsys):
    status, out, err = _inspect(capsys, str(tiny_llama_dir / "model.onnx"))
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "not optimized by wina-onnx" in err
