"""Independent check of the gating semantics against PyTorch (tiny random Llama).

The PyTorch checkpoint the tiny ONNX model was exported from runs with forward pre-hooks
on every q/k/v/o/gate/up/down projection that keep, per token, the k = K - round(s * K)
features of largest score and zero the rest: |x| for TEAL, |x| * ||W[:, i]||_2 for WINA
(W is the [N, K] Linear weight, so the column norm, i.e. the row norm of the ONNX [K, N]
weight), ties to the lower index. The ONNX model optimized with the custom-op backend at
the same sparsity must produce the same logits.

Determinism: the inputs are fixed (the first 32 tokens of the default text) and so is
the checkpoint (conftest's seed). Top-k of float32 scores computed by two implementations
could flip where two scores are within rounding of each other; for these inputs no
selection flips (measured: max |logit difference| 6e-6 for WINA, 5e-6 for TEAL, against
logits of magnitude ~8, while the gated logits differ from the dense ones by ~9 and
WINA's from TEAL's by ~8, as do sparsity 0.4 from 0.5). A flip would show as a gross
mismatch, so the tolerance stays at float32 level rather than being loosened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.pipeline_helpers import logits, optimized_copy

from wina_onnx.data import default_text
from wina_onnx.evaluation.perplexity import tokenize_text
from wina_onnx.runtime.session import load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPARSITY = 0.5
TOKENS = 32


def _gate_hook(mode: str, sparsity: float):
    def gate(module, inputs):
        x = inputs[0]
        features = x.shape[-1]
        k = features - int(round(sparsity * features))
        score = x.abs()
        if mode == "wina":
            score = score * module.weight.norm(dim=0)
        # torch.topk does not define an order among equal scores; a stable sort of the
        # negated scores keeps ties to the lower index, as the ONNX op does.
        order = torch.sort(-score, dim=-1, stable=True).indices[..., :k]
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, order, True)
        return (x * keep,)

    return gate


def _torch_logits(hf_dir: Path, ids: np.ndarray, mode: str | None) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if mode is not None:
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in PROJECTIONS:
                module.register_forward_pre_hook(_gate_hook(mode, SPARSITY))
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


@pytest.fixture(scope="module")
def ids(tiny_llama_dir: Path) -> np.ndarray:
    return tokenize_text(load_tokenizer(tiny_llama_dir), default_text())[:TOKENS]


def test_dense_torch_matches_dense_onnx(tiny_llama_dir, tiny_llama_hf_dir, ids) -> None:
    np.testing.assert_allclose(logits(tiny_llama_dir / "model.onnx", ids), _torch_logits(tiny_llama_hf_dir, ids, None),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["wina", "teal"])
def test_gated_torch_matches_custom_op_model(tiny_llama_dir, tiny_llama_hf_dir, tmp_path, ids, mode) -> None:
    onnx_path = optimized_copy(tiny_llama_dir, tmp_path, sparsity=SPARSITY, mode=mode, backend="custom-op")
    gated_onnx = logits(onnx_path, ids)
    gated_torch = _torch_logits(tiny_llama_hf_dir, ids, mode)
    dense_torch = _torch_logits(tiny_llama_hf_dir, ids, None)
    np.testing.assert_allclose(gated_onnx, gated_torch, rtol=1e-3, atol=1e-3)
    # The gating changes the logits by far more than the tolerance, so the match above
    # is not that of two dense models.
    assert np.abs(gated_torch - dense_torch).max() > 0.1
    assert np.abs(gated_onnx - dense_torch).max() > 0.1
