"""How far a sparse model's next-token distributions are from the dense model's.

compare_to_reference runs both models on the same windows as evaluate.perplexity and,
over the same scored positions, reports
  * kl: mean KL(p_reference || p_model) per scored position (nats), from float64
    log-softmax of both models' logits;
  * top1_agreement: fraction of scored positions where both argmaxes agree;
  * the perplexity of both models.

Only one window's logits of each model are alive at a time: the model under test runs
through evaluate.perplexity, and its logits_callback runs the reference on that same
window and folds the pairwise statistics into running sums.
"""

from __future__ import annotations

import numpy as np

from .perplexity import perplexity, token_nll, token_windows
from ..runtime.session import CausalLM


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(p_reference || p) per position (nats, float64); both [positions, vocab]."""
    ref = log_softmax64(reference_logits)
    log_p = log_softmax64(logits)
    return (np.exp(ref) * (ref - log_p)).sum(axis=-1)


def compare_to_reference(lm: CausalLM, reference_lm: CausalLM, token_ids: np.ndarray, *, window: int = 512,
                         stride: int | None = None, max_windows: int | None = None, progress: bool = True) -> dict:
    """Perplexity of both models, mean KL(reference || lm) and top-1 agreement.

    Positions are those evaluate.perplexity scores for the same window/stride/max_windows.
    Returns a JSON-serialisable dict: perplexity, reference_perplexity, kl,
    top1_agreement, tokens, windows.
    """
    token_ids, spans = token_windows(token_ids, window, stride, max_windows)
    sums = {"kl": 0.0, "agree": 0, "nll": 0.0, "tokens": 0}

    def compare(index: int, logits: np.ndarray) -> None:
        begin, end, scored = spans[index]
        ids = token_ids[begin:end]
        ref_logits = reference_lm.forward(ids[None, :])[0][0]
        # Position j predicts ids[j + 1]; the last `scored` of the first s - 1 positions count.
        a = ref_logits[:-1][-scored:]
        b = logits[:-1][-scored:]
        sums["kl"] += float(kl_divergence(a, b).sum())
        sums["agree"] += int((a.argmax(axis=-1) == b.argmax(axis=-1)).sum())
        sums["nll"] += float(token_nll(ref_logits, ids)[-scored:].sum())
        sums["tokens"] += scored

    result = perplexity(lm, token_ids, window=window, stride=stride, max_windows=max_windows,
                        progress=progress, logits_callback=compare)
    tokens = sums["tokens"]
    assert tokens == result.tokens
    return {
        "perplexity": result.perplexity,
        "reference_perplexity": float(np.exp(sums["nll"] / tokens)),
        "kl": sums["kl"] / tokens,
        "top1_agreement": sums["agree"] / tokens,
        "tokens": tokens,
        "windows": result.windows,
    }
