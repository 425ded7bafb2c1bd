"""The tiny random Llama of the tests: SmolLM2's layout (grouped-query attention, tied
embeddings, its vocabulary, so that its tokenizer fits) at a tiny size, seeded.

tests/conftest.py exports it through Optimum (tiny_llama_dir) and
scripts/make_genai_fixtures.py converts it with ONNX Runtime GenAI's model builder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_LLAMA_CONFIG = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,  # SmolLM2's
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)
SEED = 1234
# Larger than the default 0.02 so that the random model's logits are far from uniform and
# comparisons between implementations are meaningful.
INIT_RANGE = 0.2


def save_tiny_llama(out: Path, tokenizer_dir: Path) -> None:
    """Write the seeded random LlamaForCausalLM to `out` in Hugging Face format (no hub access),
    with the tokenizer files of `tokenizer_dir` beside it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA_CONFIG, initializer_range=INIT_RANGE)).eval()
    model.save_pretrained(out)
    for item in tokenizer_dir.iterdir():
        if item.is_file() and not (out / item.name).exists():
            shutil.copy2(item, out / item.name)
