"""4-bit models gated and run with the op library's WinaSparseMatMulNBits (CPU provider):
the tiny random Llama quantized by MatMulNBitsQuantizer, and `optimize --quantize int4`.

Pinned here: at sparsity 0 the gated int4 model reproduces the dense int4 model's logits;
at 50% the op library and the standard-ops lowering (ONNX Runtime's own MatMulNBits behind
the same gate) agree; top-k skips exactly its fraction; `optimize`'s defaults (calibrated
thresholds, greedy allocation, one refinement round, all measured inside the int4 model)
run and reach the target sparsity measured on held-out text; eval, generate and bench run
the result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wina_onnx import schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.data import default_text
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.modelio import load_model
from wina_onnx.optimize import optimize_model, read_metadata
from wina_onnx.passes import GateConfig
from wina_onnx.export.quantize import QuantizeConfig, quantize_model_file
from wina_onnx.runtime.session import CausalLM, load_session, load_tokenizer
from wina_onnx.evaluation.sparsity_probe import measure_sparsity

INT4 = QuantizeConfig(block_size=32, symmetric=False, accuracy_level=0)


@pytest.fixture(scope="module")
def int4_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-int4-e2e")
    quantize_model_file(tiny_llama_dir / "model.onnx", folder / "model.onnx", INT4)
    for sidecar in tiny_llama_dir.glob("*.json"):
        shutil.copy2(sidecar, folder / sidecar.name)
    return folder


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


def _gated(int4_dir: Path, out_dir: Path, **config) -> Path:
    sparsity = config.pop("sparsity", 0.5)
    out = out_dir / "model.onnx"
    optimize_model(int4_dir / "model.onnx", out, GateConfig(allocation=Allocation.uniform(sparsity), **config),
                   progress=False)
    for sidecar in int4_dir.glob("*.json"):
        shutil.copy2(sidecar, out_dir / sidecar.name)
    return out


def _logits(path: Path, ids: np.ndarray) -> np.ndarray:
    lm = CausalLM(load_session(path, threads=2, optimization_level="disable"))
    return lm.forward(ids[None, :])[0][0]


def _gate_count(path: Path) -> int:
    return sum(n.op_type == schema.NBITS_OP_TYPE for n in load_model(path, load_weights=False).graph.node)


@pytest.mark.parametrize("gating", ["topk", "threshold"])
def test_int4_at_sparsity_zero_reproduces_the_dense_int4_logits(int4_dir, tmp_path, text_ids, gating) -> None:
    from wina_onnx.calibrate.calibration import calibrate_model

    calibration = calibrate_model(int4_dir / "model.onnx", token_ids=text_ids, windows=1, window=64,
                                  progress=False) if gating == "threshold" else None
    out = _gated(int4_dir, tmp_path, sparsity=0.0, gating=gating, calibration=calibration)
    assert _gate_count(out) == 14
    ids = text_ids[:48]
    np.testing.assert_allclose(_logits(out, ids), _logits(int4_dir / "model.onnx", ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["wina", "teal"])
def test_int4_op_library_equals_the_standard_ops_lowering(int4_dir, tmp_path, text_ids, mode) -> None:
    ids = text_ids[100:164]
    op = _gated(int4_dir, tmp_path / "op", mode=mode)
    lowered = _gated(int4_dir, tmp_path / "onnx", mode=mode, backend="onnx")
    dense = _logits(int4_dir / "model.onnx", ids)
    got, want = _logits(op, ids), _logits(lowered, ids)
    assert np.abs(got - dense).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_int4_topk_skips_exactly_the_requested_fraction(int4_dir, tmp_path, text_ids) -> None:
    out = _gated(int4_dir, tmp_path, sparsity=0.4)
    measured = measure_sparsity(out, text_ids, windows=1, window=64)
    # K = 64 or 160: k = K - round(0.4 K) keeps 38 of 64 and 96 of 160 features.
    assert measured["weighted"] == pytest.approx(0.4, abs=0.005) and len(measured["gates"]) == 14


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wina_onnx.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.mark.parametrize("source", ["int4-model", "quantize"])
def test_optimize_defaults_on_4bit_weights_reach_the_target(tiny_llama_dir, int4_dir, tmp_path, text_ids,
                                                             source) -> None:
    """The defaults (threshold, greedy, one refinement round) on an int4 model and with --quantize int4."""
    data = tmp_path / "calib.txt"
    text = default_text()
    data.write_text(text[: len(text) // 2])  # calibrate on the first half, measure on the second
    out = tmp_path / "out" / "model.onnx"
    model = int4_dir / "model.onnx" if source == "int4-model" else tiny_llama_dir / "model.onnx"
    extra = ["--quantize", "int4", "--accuracy-level", "0"] if source == "quantize" else []
    result = _cli("optimize", str(model), "-o", str(out), "--data", str(data), "--calib-windows", "8",
                  "--calib-window", "128", "-q", *extra)
    assert result.returncode == 0, result.stderr
    assert _gate_count(out) == 14
    config = read_metadata(load_model(out, load_weights=False))["config"]
    assert config["gating"] == "threshold" and config["thresholds_refined"]["rounds"] == 1
    held_out = tokenize_text(load_tokenizer(out.parent), text[len(text) // 2:])
    measured = measure_sparsity(out, held_out, windows=2, window=256)
    assert abs(measured["weighted"] - 0.5) < 0.03, measured["weighted"]
    result = _cli("eval", str(out), "--windows", "1", "--window", "128", "--json", "-q")
    assert result.returncode == 0 and np.isfinite(json.loads(result.stdout)["perplexity"]), result.stderr
    result = _cli("generate", str(out), "--prompt", "The", "--max-new-tokens", "3", "--threads", "1")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    result = _cli("bench", str(model), str(out), "--prompt-tokens", "16", "--decode-tokens", "4",
                  "--repeats", "1", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
