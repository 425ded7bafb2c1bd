"""Greedy generation with the KV cache: one prefill, then one token per step."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .session import CausalLM

# SmolLM2 and most small instruct models use ChatML.
_CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def generate(
    lm: CausalLM,
    prompt_ids: Sequence[int] | np.ndarray,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None = None,
) -> list[int]:
    """Greedy-decode up to `max_new_tokens` after `prompt_ids`; return the new ids only.

    Stops after emitting an id in `eos_token_id` (an int or several; the EOS is
    included in the result). None means no stop token.
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    if prompt.shape[1] == 0:
        raise ValueError("the prompt must hold at least one token")
    stops = set() if eos_token_id is None else ({eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id))
    new: list[int] = []
    if max_new_tokens <= 0:
        return new
    logits, past = lm.forward(prompt)
    while True:
        token = int(np.argmax(logits[0, -1]))
        new.append(token)
        if token in stops or len(new) >= max_new_tokens:
            return new
        logits, past = lm.forward(np.array([[token]], dtype=np.int64), past)


def generate_text(
    lm: CausalLM,
    prompt: str,
    max_new_tokens: int = 64,
    *,
    chat: bool = False,
) -> str:
    """Encode `prompt`, greedy-decode, and return the decoded continuation.

    chat=True wraps the prompt in the ChatML user/assistant template (SmolLM2-Instruct).
    Stops at the model's EOS ids (generation_config.json / config.json, or genai_config.json).
    """
    tokenizer = lm.tokenizer
    text = _CHATML.format(prompt=prompt) if chat else prompt
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    stops = set(lm.eos_token_ids)
    new = generate(lm, ids, max_new_tokens, eos_token_id=stops or None)
    if new and new[-1] in stops:
        new = new[:-1]
    return tokenizer.decode(new, skip_special_tokens=True)
