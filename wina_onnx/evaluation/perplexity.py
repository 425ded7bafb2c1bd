"""Perplexity of an exported causal LM over a token stream, with sliding windows.

Windows (the Hugging Face perplexity recipe):
  * stride == window (default): non-overlapping windows ids[i*w:(i+1)*w]; each scores
    its w - 1 next-token predictions (the first token of a window has no context);
  * stride < window: window i starts at i*stride; only the tokens not scored by the
    previous window (the last `stride` of them, all of them for window 0) are scored,
    so every scored token sees at least window - stride tokens of context.
The tail is a shorter window when the stream does not divide evenly.

Each window is one prefill with an empty KV cache. The NLL is computed in float64
from the log-softmax of the logits, whatever the model's dtype.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..progress import Progress
from ..runtime.session import CausalLM

LogitsCallback = Callable[[int, np.ndarray], None]


@dataclass
class EvalResult:
    """Perplexity over the scored tokens, and the details per window."""

    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # number of scored tokens
    windows: int
    window_nll: list[float] = field(default_factory=list)  # mean NLL of each window
    window_tokens: list[int] = field(default_factory=list)  # scored tokens of each window
    window: int = 0
    stride: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        return asdict(self)


def tokenize_text(tokenizer, text: str, *, add_special_tokens: bool = False) -> np.ndarray:
    """Encode the whole text once as int64 ids, by default without special tokens (no BOS).

    add_special_tokens=True applies the tokenizer's post-processor; for the GGUF-derived
    SmolLM2 tokenizer that prepends <|im_start|> (id 1) to the stream, which shifts every
    window by one token (WikiText-2 test, 8 x 512, the default model's fp32 export: 30.148
    without, 30.373 with; benchmarks/results/quality_int4_gguf.json).
    """
    return np.asarray(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids, dtype=np.int64)


def window_spans(n_tokens: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: ids[begin:end] is run, its last `scored` labels count.

    `scored` counts label positions (tokens predicted from earlier ones in the window),
    so the first window scores at most end - begin - 1.
    """
    if window < 2:
        raise ValueError("window must be at least 2 tokens")
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), not {stride}")
    spans = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end - begin < 2:
            break
        # Labels are ids[begin+1:end]; score those not covered by the previous window.
        scored = min(end - prev_end, end - begin - 1)
        if scored > 0:
            spans.append((begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def token_windows(token_ids: np.ndarray, window: int, stride: int | None,
                  max_windows: int | None) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """`token_ids` as a flat int64 array and its first `max_windows` (all for None) window_spans."""
    token_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    spans = window_spans(len(token_ids), window, stride)
    return token_ids, spans if max_windows is None else spans[:max_windows]


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """NLL (float64) of ids[j+1] given logits[j], for j in 0..len(ids)-2.

    logits: [s, vocab]; ids: [s]. Returns [s - 1].
    """
    x = logits[:-1].astype(np.float64)
    targets = ids[1:]
    peak = x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x - peak).sum(axis=-1)) + peak[:, 0]
    return log_z - x[np.arange(len(targets)), targets]


def perplexity(
    lm: CausalLM,
    token_ids: np.ndarray,
    *,
    window: int = 512,
    stride: int | None = None,
    max_windows: int | None = None,
    progress: bool = True,
    logits_callback: LogitsCallback | None = None,
) -> EvalResult:
    """Perplexity of `lm` over `token_ids` with sliding windows (see the module docstring).

    logits_callback(window_index, logits) receives each window's logits [s, vocab]
    (float32 or the model's dtype), e.g. to compute a KL divergence against a reference.
    """
    token_ids, spans = token_windows(token_ids, window, stride, max_windows)
    if not spans:
        raise ValueError(f"{len(token_ids)} tokens are too few for a window")
    report = Progress("perplexity", total=len(spans), enabled=progress)
    start = time.perf_counter()
    total_nll = 0.0
    total_tokens = 0
    window_nll: list[float] = []
    window_tokens: list[int] = []
    for index, (begin, end, scored) in enumerate(spans):
        ids = token_ids[begin:end]
        logits, _ = lm.forward(ids[None, :])
        logits = logits[0]
        if logits_callback is not None:
            logits_callback(index, logits)
        nll = token_nll(logits, ids)[-scored:]
        total_nll += float(nll.sum())
        total_tokens += scored
        window_nll.append(float(nll.mean()))
        window_tokens.append(scored)
        report.step(f"window nll {window_nll[-1]:.4f} ppl so far {math.exp(total_nll / total_tokens):.3f}")
    mean = total_nll / total_tokens
    result = EvalResult(
        perplexity=math.exp(mean),
        nll=mean,
        tokens=total_tokens,
        windows=len(spans),
        window_nll=window_nll,
        window_tokens=window_tokens,
        window=window,
        stride=window if stride is None else stride,
        seconds=time.perf_counter() - start,
    )
    report.done(f"perplexity {result.perplexity:.4f} over {total_tokens} tokens")
    return result
