"""Optimum's ORTModelForCausalLM loads a WINA model folder and generates like wina-onnx."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optimum.onnxruntime")

from helpers.pipeline_helpers import optimized_copy  # noqa: E402

from wina_onnx import schema, session_options  # noqa: E402
from wina_onnx.runtime.generate import generate  # noqa: E402
from wina_onnx.runtime.session import CausalLM, uses_wina_domain  # noqa: E402

MAX_NEW = 8


@pytest.fixture(scope="module")
def wina_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wina-optimum")
    model = optimized_copy(tiny_llama_dir, out, sparsity=0.5)
    assert uses_wina_domain(model)
    return out


def _prompt(folder: Path) -> list[int]:
    lm = CausalLM.from_path(folder)
    return lm.tokenizer.encode("The quick brown fox jumps over", add_special_tokens=False).ids


def _ours(folder: Path, prompt: list[int]) -> list[int]:
    return generate(CausalLM.from_path(folder), prompt, MAX_NEW)


def _optimum_new_tokens(model, prompt: list[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt], dtype=torch.int64)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                         min_new_tokens=MAX_NEW, do_sample=False, num_beams=1, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_ort_model_for_causal_lm_matches_wina_generate(wina_dir: Path):
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(
        wina_dir, file_name="model.onnx", session_options=session_options(),
        provider="CPUExecutionProvider", use_cache=True, use_io_binding=False,
    )
    ops = {(n.domain, n.op_type) for n in __import__("onnx").load(wina_dir / "model.onnx").graph.node}
    assert (schema.DOMAIN, schema.OP_TYPE) in ops
    prompt = _prompt(wina_dir)
    assert _optimum_new_tokens(model, prompt) == _ours(wina_dir, prompt)


def test_load_causal_lm_helper(wina_dir: Path, tiny_llama_dir: Path):
    from wina_onnx.integrations.optimum import load_causal_lm

    prompt = _prompt(wina_dir)
    wina = _optimum_new_tokens(load_causal_lm(wina_dir), prompt)
    assert wina == _ours(wina_dir, prompt)
    # The dense export through the same helper matches our dense loop too (sanity of the comparison).
    dense = _optimum_new_tokens(load_causal_lm(tiny_llama_dir), prompt)
    assert dense == _ours(tiny_llama_dir, prompt)
    assert len(wina) == len(dense) == MAX_NEW


def test_readme_snippet_with_auto_tokenizer(wina_dir: Path):
    from transformers import AutoTokenizer

    from wina_onnx.integrations.optimum import load_causal_lm

    model = load_causal_lm(wina_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(wina_dir))
    inputs = tokenizer("The quick brown fox jumps over", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False,
                         pad_token_id=0)
    prompt = inputs["input_ids"][0].tolist()
    assert out[0, len(prompt):].tolist() == _ours(wina_dir, prompt)
    assert isinstance(tokenizer.decode(out[0]), str)
