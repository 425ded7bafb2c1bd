"""KL divergence and top-1 agreement of a sparse model against the dense one (tiny Llama)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.pipeline_helpers import optimized_copy

from wina_onnx.data import default_text
from wina_onnx.evaluation.perplexity import perplexity, tokenize_text
from wina_onnx.evaluation.metrics import compare_to_reference
from wina_onnx.runtime.session import CausalLM, load_session, load_tokenizer

WINDOW = 64
WINDOWS = 3


@pytest.fixture(scope="module")
def text_ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())


@pytest.fixture(scope="module")
def dense(tiny_llama_dir: Path) -> CausalLM:
    return CausalLM(load_session(tiny_llama_dir / "model.onnx", threads=2))


@pytest.fixture(scope="module")
def sparse_path(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return optimized_copy(tiny_llama_dir, tmp_path_factory.mktemp("sparse"), sparsity=0.5)


@pytest.fixture(scope="module")
def sparse(sparse_path: Path) -> CausalLM:
    return CausalLM(load_session(sparse_path, threads=2))


def test_model_against_itself_has_zero_kl_and_full_agreement(dense, text_ids) -> None:
    result = compare_to_reference(dense, dense, text_ids, window=WINDOW, max_windows=WINDOWS, progress=False)
    assert result["kl"] == pytest.approx(0.0, abs=1e-12)
    assert result["top1_agreement"] == 1.0
    assert result["tokens"] == WINDOWS * (WINDOW - 1)
    assert result["perplexity"] == pytest.approx(result["reference_perplexity"], rel=1e-12)


def test_half_sparse_model_diverges(dense, sparse, text_ids) -> None:
    result = compare_to_reference(sparse, dense, text_ids, window=WINDOW, max_windows=WINDOWS, progress=False)
    assert result["kl"] > 1e-4
    assert result["top1_agreement"] < 1.0
    # The perplexities are those evaluate.perplexity reports for each model alone.
    for lm, key in ((sparse, "perplexity"), (dense, "reference_perplexity")):
        alone = perplexity(lm, text_ids, window=WINDOW, max_windows=WINDOWS, progress=False)
        assert result[key] == pytest.approx(alone.perplexity, rel=1e-9)


def test_kl_matches_direct_numpy_on_one_window(dense, sparse, text_ids) -> None:
    ids = text_ids[:WINDOW]
    result = compare_to_reference(sparse, dense, ids, window=WINDOW, progress=False)
    p_logits = dense.forward(ids[None, :])[0][0][:-1].astype(np.float64)
    q_logits = sparse.forward(ids[None, :])[0][0][:-1].astype(np.float64)
    # Written independently of wina_onnx.evaluation.metrics: softmax probabilities, then sum p log(p / q).
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
    agree = np.mean(p.argmax(-1) == q.argmax(-1))
    assert result["tokens"] == WINDOW - 1
    assert result["kl"] == pytest.approx(kl, rel=1e-6)
    assert result["top1_agreement"] == pytest.approx(agree)


def test_cli_eval_with_reference(tiny_llama_dir, sparse_path, tmp_path) -> None:
    args = [sys.executable, "-m", "wina_onnx.cli", "eval", str(sparse_path), "--reference",
            str(tiny_llama_dir / "model.onnx"), "--windows", "2", "--window", str(WINDOW)]
    run = subprocess.run([*args, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["kl"] > 0 and 0 <= report["top1_agreement"] < 1 and report["tokens"] == 2 * (WINDOW - 1)
    run = subprocess.run(args + ["--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "KL" in run.stdout and "top-1 agreement" in run.stdout
