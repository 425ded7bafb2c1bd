"""A tiny GGUF Llama for the `export --int4` tests: every 4-bit format this export reads,
blocks whose scale is 0, grouped-query attention (so the q/k row permutations differ), a
4-bit LM head and two projections in formats that stay float (Q8_0, F16).

The codes are random: Q4_0, Q4_1 and Q8_0 blocks come from gguf's own quantizer applied to
random weights, Q4_K super-blocks are random bytes (their fp16 scales kept small and finite).
The tokenizer entries are copied from the SmolLM2 GGUF, so transformers can load the file
as a whole model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN = 256  # Q4_K rows need multiples of 256
FFN = 512
HEADS = 4
KV_HEADS = 2
LAYERS = 2
VOCAB = 49152  # SmolLM2's tokenizer

# GGUF type of each projection, per layer (GGUF tensor roles).
LAYER_TYPES = (
    {"attn_q": "Q4_K", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "Q4_K",
     "ffn_gate": "Q4_0", "ffn_up": "Q4_1", "ffn_down": "Q4_K"},
    {"attn_q": "Q4_1", "attn_k": "Q4_K", "attn_v": "Q8_0", "attn_output": "Q4_0",
     "ffn_gate": "Q4_K", "ffn_up": "F16", "ffn_down": "Q4_1"},
)
OUTPUT_TYPE = "Q4_0"
FOUR_BIT_COUNT = sum(t.startswith("Q4") for layer in LAYER_TYPES for t in layer.values()) + 1  # + LM head


def _shape(role: str) -> tuple[int, int]:
    """[N, K] of a projection."""
    head_dim = HIDDEN // HEADS
    return {"attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * head_dim, HIDDEN),
            "attn_v": (KV_HEADS * head_dim, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
            "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}[role]


def _random_q4_k(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Random Q4_K super-blocks [N, K/256 * 144]: some sub-scales 0, one super-block with d = 0."""
    supers = rng.integers(0, 256, size=(n * (k // 256), 144), dtype=np.uint8)
    supers[:, 0:2] = rng.uniform(2e-4, 1e-3, size=(len(supers), 1)).astype(np.float16).view(np.uint8)
    supers[:, 2:4] = rng.uniform(0, 5e-4, size=(len(supers), 1)).astype(np.float16).view(np.uint8)
    supers[::7, 4] &= 0xC0  # sub-scale 0 is zero: that sub-block is the constant -dmin * min_0
    supers[3, 0:2] = 0  # d = 0: every sub-block of this super-block is constant
    return supers.reshape(n, -1)


def _blocks(rng: np.random.Generator, kind: str, n: int, k: int, scale: float) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    if kind == "Q4_K":
        return _random_q4_k(rng, n, k)
    weight = rng.normal(0.0, scale, size=(n, k)).astype(np.float32)
    if kind == "F16":
        return weight.astype(np.float16)
    data = quantize(weight, gguf.GGMLQuantizationType[kind])
    if kind == "Q4_1":
        blocks = data.reshape(n, k // 32, 20)
        blocks[0, 0, 0:2] = 0  # d = 0, m kept: a constant block
        blocks[1, 1, 0:4] = 0  # d = 0 and m = 0: a zero block
    if kind == "Q4_0":
        data.reshape(n, k // 32, 18)[0, 0, 0:2] = 0  # d = 0
    return data


def write_tiny_gguf(path: Path, tokenizer_gguf: Path, *, seed: int = 7, with_tokenizer: bool = True) -> Path:
    """Write the tiny model to `path` and return it."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-int4-test")
    writer.add_block_count(LAYERS)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    if with_tokenizer:
        source = gguf.GGUFReader(str(tokenizer_gguf))
        for key, field in source.fields.items():
            if key.startswith("tokenizer."):
                sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)

    def add(name: str, data: np.ndarray, kind: str) -> None:
        raw = None if kind in ("F32", "F16") else gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", _blocks(rng, "Q8_0", VOCAB, HIDDEN, 0.5), "Q8_0")
    for layer, types in enumerate(LAYER_TYPES):
        for norm in ("attn_norm", "ffn_norm"):
            add(f"blk.{layer}.{norm}.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32), "F32")
        for role, kind in types.items():
            n, k = _shape(role)
            add(f"blk.{layer}.{role}.weight", _blocks(rng, kind, n, k, 0.2), kind)
    add("output_norm.weight", np.ones(HIDDEN, dtype=np.float32), "F32")
    add("output.weight", _blocks(rng, OUTPUT_TYPE, VOCAB, HIDDEN, 0.1), OUTPUT_TYPE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
