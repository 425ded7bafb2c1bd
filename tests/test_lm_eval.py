"""lm-evaluation-harness: the "wina-onnx" model against direct computation and lm-eval's own "hf" model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'wina-onnx[lm_eval]')")

from lm_eval.api.instance import Instance  # noqa: E402
from helpers.pipeline_helpers import optimized_copy  # noqa: E402

from wina_onnx import cli  # noqa: E402
from wina_onnx.errors import ConfigError  # noqa: E402
from wina_onnx.runtime.generate import generate  # noqa: E402
from wina_onnx.integrations.lm_eval import TASKS_DIR, WinaOnnxLM, register  # noqa: E402
from wina_onnx.runtime.session import CausalLM, uses_wina_domain  # noqa: E402

TASK_DIR = TASKS_DIR  # the task wina_tiny_mc, shipped with the package
TEXT = ("The committee met on Tuesday to discuss the budget. After a long debate, the members "
        "agreed to postpone the vote until the next session, when more figures would be available.")


@pytest.fixture(scope="module")
def wina_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wina-lm-eval")
    assert uses_wina_domain(optimized_copy(tiny_llama_dir, out, sparsity=0.5))
    return out


def _direct_loglikelihood(lm: CausalLM, context: str, continuation: str) -> float:
    """log p(continuation | context) from one prefill of the whole sequence, split as lm-eval splits it."""
    tok = lm.tokenizer
    whole = tok.encode(context + continuation).ids  # the tokenizer's default, as lm-eval's "hf" model
    n_ctx = len(tok.encode(context).ids)
    logits = lm.forward(np.asarray(whole)[None, :])[0][0].astype(np.float64)
    logprobs = logits - logits.max(-1, keepdims=True)
    logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
    return float(sum(logprobs[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def _run_cli(model: Path, out: Path, monkeypatch) -> tuple[dict, list[dict]]:
    monkeypatch.chdir(out)  # any folder: the shipped task reads its data beside its yaml
    monkeypatch.setenv("HF_DATASETS_CACHE", str(out / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    status = cli.main(["lm-eval", "--model_args", f"model={model}", "--tasks", "wina_tiny_mc",
                       "--output_path", str(out / "results"), "--log_samples"])
    assert status == 0
    (results_file,) = (out / "results").rglob("results_*.json")
    (samples_file,) = (out / "results").rglob("samples_wina_tiny_mc_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return json.loads(results_file.read_text())["results"]["wina_tiny_mc"], samples


def test_cli_multiple_choice_matches_direct_loglikelihood(wina_dir: Path, tmp_path: Path, monkeypatch):
    result, samples = _run_cli(wina_dir, tmp_path, monkeypatch)
    lm = CausalLM.from_path(wina_dir)
    docs = [json.loads(line) for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs) == result["sample_len"]
    correct = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = docs[sample["doc_id"]]
        context = f"Q: {doc['question']}\nA:"
        got = [float(resp[0]) for resp in sample["filtered_resps"]]
        want = [_direct_loglikelihood(lm, context, " " + choice) for choice in doc["choices"]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        assert all(math.isfinite(v) and v < 0 for v in got)
        correct.append(float(int(np.argmax(want)) == doc["answer"]))
    assert result["acc,none"] == pytest.approx(np.mean(correct))


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_agrees_with_lm_eval_hf_model(tiny_llama_dir: Path, tiny_llama_hf_dir: Path):
    """Same scores and text as lm-eval's PyTorch "hf" model of the same checkpoint (dense model)."""
    from lm_eval.models.huggingface import HFLM

    ours = WinaOnnxLM(model=str(tiny_llama_dir), max_length=24)
    theirs = HFLM(pretrained=str(tiny_llama_hf_dir), device="cpu", batch_size=1, max_length=24, dtype="float32")
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " Berlin in winter"),
             ("", "Hello world"), (TEXT, " and then they left.")]  # the last one is truncated on the left
    got = ours.loglikelihood(_instances("loglikelihood", pairs))
    want = theirs.loglikelihood(_instances("loglikelihood", pairs))
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-3)
    assert [g[1] for g in got] == [w[1] for w in want]

    # 24-token windows over a ~40-token text: the rolling windows of lm-eval's own utility.
    rolling = _instances("loglikelihood_rolling", [(TEXT,), ("Short text.",)])
    np.testing.assert_allclose(ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling),
                               rtol=1e-4, atol=1e-3)

    requests = _instances("generate_until", [("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 6,
                                                                   "do_sample": False})])
    assert ours.generate_until(requests) == theirs.generate_until(requests)


def test_rolling_single_window_is_one_prefill(tiny_llama_dir: Path):
    lm = WinaOnnxLM(model=str(tiny_llama_dir))
    ids = lm.tok_encode(TEXT)
    logits = lm.lm.forward(np.asarray([lm.prefix_token_id] + ids[:-1])[None, :])[0][0].astype(np.float64)
    logprobs = logits - logits.max(-1, keepdims=True)
    logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
    want = float(logprobs[np.arange(len(ids)), ids].sum())
    (got,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(TEXT,)]))
    assert got == pytest.approx(want, rel=1e-6)


def test_generate_until_is_greedy_and_stops(wina_dir: Path):
    lm = WinaOnnxLM(model=str(wina_dir))
    prompt = "The quick brown fox jumps over"
    ids = lm.tok_encode(prompt)
    tokens = generate(CausalLM.from_path(wina_dir), ids, 8, eos_token_id=lm.lm.eos_token_ids)
    full = lm.tok_decode([t for t in tokens if t not in lm.lm.eos_token_ids])
    (text,) = lm.generate_until(_instances("generate_until", [(prompt, {"until": [], "max_gen_toks": 8})]))
    assert text == full
    stop = full.strip()[-3:]  # a stop string inside the continuation cuts the text before it
    (cut,) = lm.generate_until(_instances("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 8})]))
    assert cut == full.split(stop)[0]
    with pytest.raises(ConfigError, match="greedily"):
        lm.generate_until(_instances("generate_until", [(prompt, {"do_sample": True})]))


def test_bad_model_args(tiny_llama_dir: Path):
    with pytest.raises(ConfigError, match="model=DIR"):
        WinaOnnxLM()
    with pytest.raises(ConfigError, match="unknown wina-onnx model argument"):
        WinaOnnxLM(model=str(tiny_llama_dir), pretrained="x")
    from lm_eval.api.registry import get_model

    assert get_model("wina-onnx") is register() is WinaOnnxLM


def test_simple_evaluate_after_register(wina_dir: Path, tmp_path: Path, monkeypatch):
    """The README's Python route: register(), then lm_eval.simple_evaluate(model="wina-onnx", ...)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    register()
    out = lm_eval.simple_evaluate(model="wina-onnx", model_args=f"model={wina_dir}", tasks=["wina_tiny_mc"],
                                  task_manager=TaskManager(include_path=str(TASK_DIR)))
    lm = CausalLM.from_path(wina_dir)
    docs = [json.loads(line) for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()]
    correct = [float(int(np.argmax([_direct_loglikelihood(lm, f"Q: {d['question']}\nA:", " " + c)
                                    for c in d["choices"]])) == d["answer"]) for d in docs]
    assert out["results"]["wina_tiny_mc"]["acc,none"] == pytest.approx(np.mean(correct))
