"""Runtime, KV cache, generation, perplexity and benchmark on exported models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from wina_onnx import schema
from wina_onnx.evaluation.bench import bench_models
from wina_onnx.data import default_text, read_text
from wina_onnx.evaluation.perplexity import perplexity, token_nll, tokenize_text, window_spans
from wina_onnx.runtime.generate import generate, generate_text
from wina_onnx.library import LIBRARY_ENV, LibraryNotFoundError
from wina_onnx.runtime.session import CausalLM, load_session, uses_wina_domain


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir: Path) -> CausalLM:
    # Graph optimisations off: exact comparisons should not depend on ORT's fusions.
    return CausalLM.from_path(tiny_llama_dir, threads=2, optimization_level="disable")


@pytest.fixture(scope="module")
def text_ids(tiny_lm: CausalLM) -> np.ndarray:
    return tokenize_text(tiny_lm.tokenizer, default_text())


def test_discovers_shapes(tiny_lm: CausalLM) -> None:
    assert (tiny_lm.num_layers, tiny_lm.num_kv_heads, tiny_lm.head_dim) == (2, 2, 16)
    assert tiny_lm.dtype == np.float32 and tiny_lm.vocab_size == 49152
    assert tiny_lm.takes_position_ids
    past = tiny_lm.empty_past(3)
    assert len(past) == 2 and past[0][0].shape == (3, 2, 0, 16)


@pytest.mark.parametrize("split", [1, 7, 12])
def test_kv_cache_matches_full_prefill(tiny_lm: CausalLM, text_ids: np.ndarray, split: int) -> None:
    ids = text_ids[:16][None, :]
    full, present = tiny_lm.forward(ids)
    assert present[0][0].shape == (1, 2, 16, 16)
    logits, past = tiny_lm.forward(ids[:, :split])
    steps = [logits]
    for j in range(split, ids.shape[1]):
        logits, past = tiny_lm.forward(ids[:, j : j + 1], past, past_length=j)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=0)
    np.testing.assert_allclose(past[1][1], present[1][1], atol=1e-5, rtol=0)


def test_batch_forward_matches_single(tiny_lm: CausalLM, text_ids: np.ndarray) -> None:
    ids = np.stack([text_ids[:10], text_ids[10:20]])
    batch, _ = tiny_lm.forward(ids)
    for b in range(2):
        single, _ = tiny_lm.forward(ids[b : b + 1])
        np.testing.assert_allclose(batch[b], single[0], atol=1e-4, rtol=0)


def test_session_only_finds_tokenizer_and_eos(tiny_llama_dir: Path) -> None:
    lm = CausalLM(load_session(tiny_llama_dir, threads=1))  # a folder means its model.onnx
    assert lm.model_dir == tiny_llama_dir
    assert lm.tokenizer.get_vocab_size() == 49152 and lm.eos_token_ids == [2]


def test_wrong_past_length_is_refused(tiny_lm: CausalLM, text_ids: np.ndarray) -> None:
    _, past = tiny_lm.forward(text_ids[None, :4])
    with pytest.raises(ValueError, match="past_length"):
        tiny_lm.forward(text_ids[None, 4:5], past, past_length=3)


def test_greedy_generate_matches_full_recomputation(tiny_lm: CausalLM, text_ids: np.ndarray) -> None:
    prompt = list(text_ids[:8])
    new = generate(tiny_lm, prompt, 12)
    assert len(new) == 12
    seq = list(prompt)
    for _ in range(12):
        logits, _ = tiny_lm.forward(np.array([seq]))
        seq.append(int(np.argmax(logits[0, -1])))
    assert new == seq[len(prompt) :]


def test_generate_stops_at_eos(tiny_lm: CausalLM, text_ids: np.ndarray) -> None:
    first = generate(tiny_lm, text_ids[:8], 5)
    assert generate(tiny_lm, text_ids[:8], 5, eos_token_id=first[1]) == first[: first.index(first[1]) + 1]
    assert generate(tiny_lm, text_ids[:8], 0) == []


def test_window_spans() -> None:
    assert window_spans(10, 4) == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]
    assert window_spans(9, 4) == [(0, 4, 3), (4, 8, 3)]  # a 1-token tail has nothing to predict
    # Overlapping windows score each label exactly once.
    spans = window_spans(20, 8, stride=4)
    assert spans[0] == (0, 8, 7) and spans[1] == (4, 12, 4)
    assert sum(s for _, _, s in spans) == 19
    with pytest.raises(ValueError):
        window_spans(10, 4, stride=5)


def _torch_perplexity(hf_dir: Path, ids: np.ndarray, window: int, stride: int, n: int) -> float:
    """The Hugging Face sliding-window recipe, computed with PyTorch."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    nll_sum, count, prev_end = 0.0, 0, 0
    for begin in list(range(0, len(ids), stride))[:n]:
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        x = torch.tensor(ids[begin:end])[None]
        labels = x.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(x).logits.double()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="sum", ignore_index=-100)
        nll_sum += loss.item()
        count += int((labels[0, 1:] != -100).sum())
        prev_end = end
    return math.exp(nll_sum / count)


@pytest.mark.parametrize("stride", [None, 24])
def test_perplexity_matches_torch(
    tiny_lm: CausalLM, tiny_llama_hf_dir: Path, text_ids: np.ndarray, stride: int | None
) -> None:
    seen = []
    result = perplexity(
        tiny_lm, text_ids[:400], window=64, stride=stride, max_windows=4, progress=False,
        logits_callback=lambda i, logits: seen.append((i, logits.shape)),
    )
    expected = _torch_perplexity(tiny_llama_hf_dir, text_ids[:400], 64, stride or 64, 4)
    assert result.windows == 4 and seen == [(i, (64, 49152)) for i in range(4)]
    assert result.tokens == (4 * 63 if stride is None else 63 + 3 * 24)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert math.exp(np.average(result.window_nll, weights=result.window_tokens)) == pytest.approx(result.perplexity)
    json.dumps(result.to_dict())


def test_token_nll_is_float64_log_softmax() -> None:
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    nll = token_nll(logits, np.array([0, 2, 0]))
    # Row j predicts ids[j + 1]: token 2 from row 0, token 0 from row 1.
    expected = [np.log(np.exp([0, 1, 2.0]).sum()) - 2.0, np.log(np.exp([3.0, 0, 0]).sum()) - 3.0]
    assert nll.dtype == np.float64
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_read_text(tmp_path: Path) -> None:
    assert read_text(None) == default_text() and len(default_text()) > 100_000
    (tmp_path / "t.txt").write_text("héllo", encoding="utf-8")
    assert read_text(tmp_path / "t.txt") == "héllo"


def test_bench_runs_and_serialises(tiny_llama_dir: Path) -> None:
    result = bench_models(
        {"a": tiny_llama_dir, "b": tiny_llama_dir / "model.onnx"},
        prompt_tokens=8, decode_tokens=3, repeats=3, threads=1, warmup=1, progress=False,
    )
    assert [m.name for m in result.models] == ["a", "b"]
    assert all(len(m.prefill_ms) == 3 and m.decode_median > 0 for m in result.models)
    assert result.models[0].prefill_speedup == 1.0
    assert "decode" in result.table()
    json.loads(result.to_json())


def _wina_domain_model(path: Path) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def test_missing_library_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.onnx"
    _wina_domain_model(path)
    assert uses_wina_domain(path)
    monkeypatch.setenv(LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(LibraryNotFoundError, match="op library"):
        load_session(path)


def test_dense_model_needs_no_library(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIBRARY_ENV, "/nonexistent/lib.so")
    assert not uses_wina_domain(tiny_llama_dir / "model.onnx")
    load_session(tiny_llama_dir / "model.onnx", threads=1)


def test_deployment_modules_do_not_import_torch() -> None:
    code = (
        "import sys; import wina_onnx.runtime.session, wina_onnx.evaluation.perplexity, wina_onnx.runtime.generate, "
        "wina_onnx.evaluation.bench, wina_onnx.data, wina_onnx.progress; "
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


@pytest.mark.slow
def test_smollm2_perplexity_on_default_text(smollm2_dir: Path) -> None:
    lm = CausalLM.from_path(smollm2_dir, threads=2)
    ids = tokenize_text(lm.tokenizer, default_text())
    result = perplexity(lm, ids, window=512, max_windows=2, progress=False)
    assert result.windows == 2 and result.tokens == 2 * 511
    assert math.isfinite(result.perplexity) and 2.0 < result.perplexity < 60.0


@pytest.mark.slow
def test_smollm2_generates_text(smollm2_dir: Path) -> None:
    lm = CausalLM.from_path(smollm2_dir, threads=2)
    text = generate_text(lm, "What is the capital of France?", 24, chat=True)
    assert text.strip()
    assert "Paris" in text


def test_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from wina_onnx.progress import Progress

    stream = io.StringIO()
    report = Progress("job", total=2, stream=stream, min_interval=0)  # every step (piped: every 30 s)
    report.step("a")
    report.step("b")
    report.done("ok")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[job] 1/2 elapsed") and "eta" in lines[0] and lines[0].endswith(" a")
    assert lines[1].startswith("[job] 2/2") and lines[2].startswith("[job] done in")
    quiet = Progress("job", total=1, enabled=False)
    quiet.step()
    quiet.done()
    assert capsys.readouterr().err == ""
