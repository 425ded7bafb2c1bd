"""Tiny decoders of the common architectures, exported the ways users export them.

Each `Architecture` is a 2-layer model with random weights built from a transformers
config (nothing from the hub), saved in Hugging Face format with a byte-level tokenizer,
then exported through Optimum (`text-generation-with-past`, as `wina-onnx export` does)
and, where ONNX Runtime GenAI's model builder takes the architecture, by the builder
(fp32, CPU). The specification says what tests/test_architectures.py checks on every
export: which projections are gated with which role, and which weights are left alone
and why. The README's "Architectures" table is rendered from it:

    python tests/helpers/architectures.py          # rewrite the table in README.md
    python tests/helpers/architectures.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1234
# Larger than the usual 0.02 so the random models' logits are far from uniform; biases
# get random values too, so that a bias the pass dropped would change the logits.
INIT_RANGE = 0.2
VOCAB = 320  # 256 byte tokens, 2 special tokens, unused rows
EOS_ID, BOS_ID = 256, 257
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, LAYERS = 64, 4, 2, 16, 128, 2

# Sizes shared by the Llama-like configs.
_DECODER = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512)
_COMMON = dict(vocab_size=VOCAB, initializer_range=INIT_RANGE, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
               pad_token_id=None)

SEPARATE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GenAI's builder packs q, k and v into one MatMul (also on the CPU, also in fp32).
BUILDER_PACKED = ("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_NO_GATE = ("qkv_proj", "o_proj", "up_proj", "down_proj")
LM_HEAD = "LM head or embedding"


@dataclass(frozen=True)
class Architecture:
    """One architecture of the matrix and what its exports must show."""

    key: str  # test id
    name: str  # as the README names it
    model_class: str  # transformers class
    config_class: str
    config: dict
    adds: str  # what it brings beyond Llama that the pass must cope with (README)
    optimum_roles: tuple[str, ...]  # roles gated in each layer of the Optimum export
    builder_roles: tuple[str, ...] | None = None  # the same for the builder's export; None: no builder export
    no_builder: str = ""  # why there is no builder export
    # Why wina-onnx's runtime cannot run the builder's export ("" when it can): then only
    # GenAI runs the gated model, gated without calibration (top-k, uniform).
    builder_limit: str = ""
    # Weights (by the fragment of the node name) left alone, and the reason the pass gives.
    optimum_skipped: dict[str, str] = field(default_factory=lambda: {"/lm_head/": LM_HEAD})
    builder_skipped: dict[str, str] = field(default_factory=lambda: {"/lm_head/": LM_HEAD})
    # The op the Optimum export computes each projection with (the builder's is always MatMul).
    optimum_op: str = "MatMul"
    # [K, N] of each role, where it differs from the Llama layout of the common sizes.
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def hf_config(self):
        """The transformers config of the tiny model."""
        import transformers

        return getattr(transformers, self.config_class)(**_COMMON, **self.config)

    def shape(self, role: str) -> tuple[int, int]:
        """The [K, N] weight shape a projection of `role` has in this model."""
        q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
        llama = {"q_proj": (HIDDEN, q), "k_proj": (HIDDEN, kv), "v_proj": (HIDDEN, kv),
                 "qkv_proj": (HIDDEN, q + 2 * kv), "o_proj": (q, HIDDEN), "gate_proj": (HIDDEN, INTERMEDIATE),
                 "up_proj": (HIDDEN, INTERMEDIATE), "gate_up_proj": (HIDDEN, 2 * INTERMEDIATE),
                 "down_proj": (INTERMEDIATE, HIDDEN)}
        return self.shapes.get(role, llama[role])


_ONE_KV_QKV = (HIDDEN, (HEADS + 2) * HEAD_DIM)  # multi-query: one key and one value head
_MHA_QKV = (HIDDEN, 3 * HEADS * HEAD_DIM)  # every head has its own key and value
_FFN4 = {"up_proj": (HIDDEN, 4 * HIDDEN), "down_proj": (4 * HIDDEN, HIDDEN)}

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", "Llama", "LlamaForCausalLM", "LlamaConfig", dict(_DECODER),
                 "grouped-query attention, SwiGLU, RMSNorm", SEPARATE, BUILDER_PACKED),
    Architecture("mistral", "Mistral", "MistralForCausalLM", "MistralConfig", dict(_DECODER, sliding_window=64),
                 "sliding-window attention", SEPARATE, BUILDER_PACKED),
    Architecture("qwen2", "Qwen2", "Qwen2ForCausalLM", "Qwen2Config", dict(_DECODER),
                 "q/k/v biases", SEPARATE, BUILDER_PACKED),
    Architecture("qwen3", "Qwen3", "Qwen3ForCausalLM", "Qwen3Config", dict(_DECODER, head_dim=HEAD_DIM),
                 "q/k RMSNorm per head", SEPARATE, BUILDER_PACKED),
    Architecture("phi3", "Phi-3", "Phi3ForCausalLM", "Phi3Config",
                 dict(_DECODER, original_max_position_embeddings=512),
                 "fused qkv_proj and gate_up_proj", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
                 BUILDER_PACKED),
    Architecture("gemma2", "Gemma 2", "Gemma2ForCausalLM", "Gemma2Config",
                 dict(_DECODER, head_dim=HEAD_DIM, sliding_window=64),
                 "tied embeddings, GeGLU, pre- and post-norms, logit soft-capping, local and global layers",
                 SEPARATE, BUILDER_PACKED,
                 builder_limit="wina-onnx's runtime cannot run its sliding-window attention, whose KV buffer "
                               "must be allocated to the window in advance"),
    Architecture("gemma3", "Gemma 3", "Gemma3ForCausalLM", "Gemma3TextConfig",
                 dict(_DECODER, head_dim=HEAD_DIM, sliding_window=64),
                 "tied embeddings, GeGLU, q/k norms, local and global layers", SEPARATE,
                 no_builder="the builder stops with KeyError 'rope_type': under transformers 5 "
                            "Gemma 3's rope_parameters are per layer type, which it reads for Gemma 4 only"),
    Architecture("granite", "Granite", "GraniteForCausalLM", "GraniteConfig",
                 dict(_DECODER, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0625,
                      logits_scaling=8.0),
                 "embedding, residual, attention and logit multipliers", SEPARATE, BUILDER_PACKED),
    Architecture("olmo", "OLMo", "OlmoForCausalLM", "OlmoConfig", dict(_DECODER),
                 "LayerNorm without parameters", SEPARATE, BUILDER_PACKED),
    Architecture("olmo2", "OLMo 2", "Olmo2ForCausalLM", "Olmo2Config", dict(_DECODER),
                 "q/k RMSNorm over all heads, norms after each block", SEPARATE,
                 no_builder="not among the builder's architectures"),
    Architecture("gpt2", "GPT-2", "GPT2LMHeadModel", "GPT2Config",
                 dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512),
                 "Conv1D layers, exported as Gemm with a bias ([K, N] weight, not transposed)", FUSED_NO_GATE,
                 no_builder="not among the builder's architectures", optimum_op="Gemm",
                 shapes=dict(_FFN4, qkv_proj=_MHA_QKV)),
    Architecture("gpt_neox", "GPT-NeoX", "GPTNeoXForCausalLM", "GPTNeoXConfig",
                 dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, max_position_embeddings=512),
                 "fused query_key_value, partial rotary, parallel residual", FUSED_NO_GATE,
                 no_builder="not among the builder's architectures", optimum_skipped={"/embed_out/": LM_HEAD},
                 shapes=dict(qkv_proj=_MHA_QKV)),
    Architecture("falcon", "Falcon", "FalconForCausalLM", "FalconConfig",
                 dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS),
                 "fused query_key_value with one KV head, parallel attention", FUSED_NO_GATE,
                 no_builder="not among the builder's architectures", shapes=dict(_FFN4, qkv_proj=_ONE_KV_QKV)),
)
BY_KEY = {a.key: a for a in ARCHITECTURES}
EXPORTERS = ("optimum", "builder")


def cases() -> list[tuple[str, str]]:
    """(architecture key, exporter) of every export in the matrix."""
    return [(a.key, e) for a in ARCHITECTURES for e in EXPORTERS if e == "optimum" or a.builder_roles]


# ----------------------------------------------------------------------------- making the models
def byte_tokenizer():
    """A byte-level tokenizer (ids 0-255 are the bytes, then EOS and BOS), made in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|bos|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|bos|>")


def _byte_of(char: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's bytes_to_unicode)."""
    code = ord(char)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def make_checkpoint(arch: Architecture, out: Path) -> None:
    """Save the tiny random model of `arch` and its tokenizer in Hugging Face format."""
    import torch
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, arch.model_class)(arch.hf_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, INIT_RANGE)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)


def export_optimum(hf: Path, out: Path) -> None:
    """Optimum's export, as `wina-onnx export` runs it, with the tokenizer beside the model."""
    import shutil

    from optimum.exporters.onnx import main_export

    main_export(str(hf), output=out, task="text-generation-with-past", device="cpu", do_validation=False,
                local_files_only=True)
    for item in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if not (out / item).exists():
            shutil.copy2(hf / item, out / item)


def made_from() -> dict:
    """What determines the checkpoints and exports (a cache key): configs, seeds and the code making them."""
    import inspect

    code = "".join(inspect.getsource(f) for f in (byte_tokenizer, _byte_of, make_checkpoint, export_optimum))
    return {"models": [(a.key, a.model_class, a.config_class, sorted(a.config.items())) for a in ARCHITECTURES],
            "common": sorted(_COMMON.items()), "seed": SEED, "init": INIT_RANGE, "code": code}


# ----------------------------------------------------------------------------- README table
README_START = "<!-- architectures:start (generated by tests/helpers/architectures.py) -->"
README_END = "<!-- architectures:end -->"


def _roles(roles: tuple[str, ...]) -> str:
    return ", ".join(r.removesuffix("_proj") for r in roles)


def _skipped(skipped: dict[str, str]) -> str:
    return "; ".join(f"`{fragment.strip('/')}`: {reason}" for fragment, reason in skipped.items())


def readme_table() -> str:
    """The README's "Architectures" table (between its markers), from ARCHITECTURES."""
    lines = [README_START,
             "| architecture | transformers class | what it adds | gated per layer, Optimum | "
             "gated per layer, GenAI builder (fp32) | not gated |",
             "|---|---|---|---|---|---|"]
    for a in ARCHITECTURES:
        builder = _roles(a.builder_roles) if a.builder_roles else f"no export: {a.no_builder}"
        if a.builder_limit:
            builder += f"; gated (top-k, uniform) and run in GenAI only: {a.builder_limit}"
        skipped = _skipped(a.optimum_skipped)
        if a.builder_roles and a.builder_skipped != a.optimum_skipped:
            skipped += f" (builder: {_skipped(a.builder_skipped)})"
        lines.append(f"| {a.name} | `{a.model_class}` | {a.adds} | {_roles(a.optimum_roles)} | {builder} | "
                     f"{skipped} |")
    lines.append(README_END)
    return "\n".join(lines)


def readme_section(text: str) -> str | None:
    """The table between the markers in the README's text (None when the markers are missing)."""
    match = re.search(re.escape(README_START) + r".*?" + re.escape(README_END), text, re.S)
    return match.group(0) if match else None


def main(argv: list[str]) -> int:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text(encoding="utf-8")
    current = readme_section(text)
    if current is None:
        print(f"README.md has no {README_START} ... {README_END} block", file=sys.stderr)
        return 1
    if "--check" in argv:
        return 0 if current == readme_table() else 1
    readme.write_text(text.replace(current, readme_table()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
