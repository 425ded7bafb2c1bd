"""The pass on real exported models: a tiny random Llama (fast) and SmolLM2-135M (slow).

Pinned here: sparsity 0 reproduces the dense logits with both backends; the op library
and the standard-ops lowering agree at real sparsities; the fraction of skipped weight
rows is the requested sparsity (exactly for top-k, within calibration error for
thresholds); calibrate -> optimize -> eval runs through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.pipeline_helpers import logits, measured_sparsity, optimized_copy

from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.data import default_text
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.runtime.session import load_tokenizer


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


def _gated_count(path: Path) -> int:
    return sum(n.op_type == "WinaSparseMatMul" or n.name.endswith("/wina/MatMul") for n in onnx.load(path).graph.node)


@pytest.mark.parametrize("backend", ["custom-op", "onnx"])
def test_tiny_llama_at_sparsity_zero_reproduces_dense_logits(tiny_llama_dir, tmp_path, text_ids, backend) -> None:
    out = optimized_copy(tiny_llama_dir, tmp_path, sparsity=0.0, backend=backend)
    assert _gated_count(out) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    ids = text_ids[:48]
    np.testing.assert_allclose(logits(out, ids), logits(tiny_llama_dir / "model.onnx", ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["wina", "teal"])
def test_tiny_llama_op_library_equals_standard_ops(tiny_llama_dir, tmp_path, text_ids, mode) -> None:
    ids = text_ids[100:164]
    op = optimized_copy(tiny_llama_dir, tmp_path / "op", sparsity=0.5, mode=mode)
    lowered = optimized_copy(tiny_llama_dir, tmp_path / "onnx", sparsity=0.5, mode=mode, backend="onnx")
    dense = logits(tiny_llama_dir / "model.onnx", ids)
    got, want = logits(op, ids), logits(lowered, ids)
    assert np.abs(got - dense).max() > 1e-2  # the gates do change the result ...
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)  # ... identically in both backends


def test_tiny_llama_topk_skips_exactly_the_requested_fraction(tiny_llama_dir, tmp_path, text_ids) -> None:
    out = optimized_copy(tiny_llama_dir, tmp_path, sparsity=0.4)
    # K = 64 or 160: k = K - round(0.4 K) keeps 38 of 64 and 96 of 160 features.
    assert measured_sparsity(out, text_ids[:64]) == pytest.approx(0.4, abs=0.005)


def test_tiny_llama_calibrated_threshold_hits_the_target_on_held_out_text(tiny_llama_dir, tmp_path, text_ids) -> None:
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", token_ids=text_ids[:4096], windows=16, window=256,
                                  progress=False)
    out = optimized_copy(tiny_llama_dir, tmp_path, sparsity=0.5, gating="threshold", calibration=calibration)
    assert abs(measured_sparsity(out, text_ids[-512:]) - 0.5) < 0.03


def test_cli_calibrate_optimize_eval_generate(tiny_llama_dir, tmp_path) -> None:
    def wina(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result

    model = str(tiny_llama_dir / "model.onnx")
    wina("calibrate", model, "-o", "calib.npz", "--windows", "4", "--window", "128")
    wina("optimize", model, "-o", "out/model.onnx", "--gating", "threshold", "--calibration", "calib.npz",
         "--sparsity", "0.4")
    meta = json.loads(wina("inspect", "out/model.onnx", "--json").stdout)
    assert meta["config"]["calibration"] == "pydoc help topics" and meta["config"]["gating"] == "threshold"
    assert len(meta["gated"]) == 14 and all(g["threshold"] > 0 for g in meta["gated"])
    report = json.loads(wina("eval", "out/model.onnx", "--windows", "2", "--window", "128", "--json").stdout)
    assert np.isfinite(report["perplexity"]) and report["tokens"] == 2 * 127
    assert wina("generate", "out/model.onnx", "--prompt", "def", "--max-new-tokens", "4").stdout.strip()


@pytest.mark.slow
def test_smollm2_at_sparsity_zero_reproduces_dense_logits(smollm2_dir, tmp_path) -> None:
    ids = tokenize_text(load_tokenizer(smollm2_dir), default_text())[:64]
    out = optimized_copy(smollm2_dir, tmp_path, sparsity=0.0)
    assert _gated_count(out) == 30 * 7
    np.testing.assert_allclose(logits(out, ids), logits(smollm2_dir / "model.onnx", ids), rtol=1e-4, atol=2e-4)


@pytest.mark.slow
def test_smollm2_skipped_rows_match_the_requested_sparsity(smollm2_dir, tmp_path) -> None:
    ids = tokenize_text(load_tokenizer(smollm2_dir), default_text())
    topk = optimized_copy(smollm2_dir, tmp_path / "topk", sparsity=0.5)
    assert measured_sparsity(topk, ids[:128]) == pytest.approx(0.5, abs=0.002)
    calibration = calibrate_model(smollm2_dir / "model.onnx", token_ids=ids[: len(ids) // 2], windows=8, window=256,
                                  progress=False)
    threshold = optimized_copy(smollm2_dir, tmp_path / "thr", sparsity=0.5, gating="threshold",
                               calibration=calibration)
    assert abs(measured_sparsity(threshold, ids[-512:]) - 0.5) < 0.03
