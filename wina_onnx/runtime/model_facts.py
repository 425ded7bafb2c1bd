"""What a decoder model's folder says about it: sizes, token ids, KV cache names.

Two kinds of folder hold an ONNX decoder:
  * an Optimum export: config.json and generation_config.json (Hugging Face's);
  * an ONNX Runtime GenAI folder, e.g. written by GenAI's model builder: genai_config.json
    only (head_size, head counts, vocabulary, EOS ids, the past/present tensor names, the
    shared past-present buffer).
`read_facts` reads either; the Hugging Face files win where both give a value (a folder
from `wina-onnx package --genai` has both, made to agree).

When no file gives the KV cache's head size, `kv_dims_from_graph` reads it from the
attention node that takes the cache (GenAI's builder leaves that axis symbolic).
Imports only the standard library and, for the graph, onnx.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

GENAI_CONFIG = "genai_config.json"
HF_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"

# Optimum's names, which GenAI's builder uses too.
PAST_KEY = "past_key_values.%d.key"
PAST_VALUE = "past_key_values.%d.value"
PRESENT_KEY = "present.%d.key"
PRESENT_VALUE = "present.%d.value"


@dataclass
class ModelFacts:
    """A decoder's facts from its folder; None where no file says."""

    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    context_length: int | None = None
    model_type: str | None = None
    # Name patterns of the cache tensors, with %d for the layer.
    past_key: str = PAST_KEY
    past_value: str = PAST_VALUE
    present_key: str = PRESENT_KEY
    present_value: str = PRESENT_VALUE
    # GenAI's search.past_present_share_buffer (None: not a GenAI folder).
    share_buffer: bool | None = None
    # The files the facts came from, by name.
    sources: list[str] = field(default_factory=list)

    def past_pattern(self) -> re.Pattern:
        """Matches a past key or value input name; groups: layer, "key" or "value"."""
        return _either(self.past_key, self.past_value)

    def present_pattern(self) -> re.Pattern:
        """Matches a present key or value output name; groups: layer, "key" or "value"."""
        return _either(self.present_key, self.present_value)


def _either(key: str, value: str) -> re.Pattern:
    def one(pattern: str, kind: str) -> str:
        head, _, tail = pattern.partition("%d")
        return f"{re.escape(head)}(?P<layer_{kind}>\\d+){re.escape(tail)}"

    return re.compile(f"^(?:{one(key, 'key')}|{one(value, 'value')})$")


def cache_name_match(pattern: re.Pattern, name: str) -> tuple[int, str] | None:
    """(layer, "key" or "value") of a cache tensor name matched by a ModelFacts pattern."""
    match = pattern.match(name)
    if match is None:
        return None
    for kind in ("key", "value"):
        if match.group(f"layer_{kind}") is not None:
            return int(match.group(f"layer_{kind}")), kind
    return None


def read_json(path: Path) -> dict:
    """The JSON object in `path` ({} when the file is missing, unreadable or not an object)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _first(value) -> int | None:
    ids = _ids(value)
    return ids[0] if ids else None


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_facts(model_dir: str | Path | None) -> ModelFacts:
    """The facts config.json, generation_config.json and genai_config.json in `model_dir` give.

    A model file's path means its folder; None gives empty facts.
    """
    facts = ModelFacts()
    if model_dir is None:
        return facts
    folder = Path(model_dir)
    if folder.is_file():
        folder = folder.parent
    _fill_from_genai(facts, read_json(folder / GENAI_CONFIG))
    if (folder / GENAI_CONFIG).is_file():
        facts.sources.append(GENAI_CONFIG)
    config = read_json(folder / HF_CONFIG)
    generation = read_json(folder / GENERATION_CONFIG)
    _fill_from_hf(facts, config, generation)
    facts.sources.extend(name for name in (HF_CONFIG, GENERATION_CONFIG) if (folder / name).is_file())
    return facts


def _fill_from_genai(facts: ModelFacts, genai: dict) -> None:
    model = genai.get("model") or {}
    decoder = model.get("decoder") or {}
    if not decoder:
        return
    facts.num_layers = _int(decoder.get("num_hidden_layers"))
    facts.num_attention_heads = _int(decoder.get("num_attention_heads"))
    facts.num_kv_heads = _int(decoder.get("num_key_value_heads"))
    facts.head_dim = _int(decoder.get("head_size"))
    facts.hidden_size = _int(decoder.get("hidden_size"))
    facts.vocab_size = _int(model.get("vocab_size"))
    facts.eos_token_ids = _ids(model.get("eos_token_id"))
    facts.bos_token_id = _first(model.get("bos_token_id"))
    facts.pad_token_id = _first(model.get("pad_token_id"))
    facts.context_length = _int(model.get("context_length"))
    facts.model_type = model.get("type")
    inputs, outputs = decoder.get("inputs") or {}, decoder.get("outputs") or {}
    facts.past_key = inputs.get("past_key_names", PAST_KEY)
    facts.past_value = inputs.get("past_value_names", PAST_VALUE)
    facts.present_key = outputs.get("present_key_names", PRESENT_KEY)
    facts.present_value = outputs.get("present_value_names", PRESENT_VALUE)
    share = (genai.get("search") or {}).get("past_present_share_buffer")
    facts.share_buffer = bool(share) if share is not None else None


def _fill_from_hf(facts: ModelFacts, config: dict, generation: dict) -> None:
    """Hugging Face values replace GenAI's where given (text_config: multimodal configs)."""
    config = {**(config.get("text_config") or {}), **config}

    def take(attr: str, value) -> None:
        if value is not None:
            setattr(facts, attr, value)

    take("num_layers", _int(config.get("num_hidden_layers")))
    take("num_attention_heads", _int(config.get("num_attention_heads")))
    take("num_kv_heads", _int(config.get("num_key_value_heads", config.get("num_attention_heads"))))
    take("hidden_size", _int(config.get("hidden_size")))
    head = _int(config.get("head_dim"))
    if head is None and facts.hidden_size and facts.num_attention_heads and "hidden_size" in config:
        head = facts.hidden_size // facts.num_attention_heads
    take("head_dim", head)
    take("vocab_size", _int(config.get("vocab_size")))
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    if eos is not None:
        facts.eos_token_ids = _ids(eos)
    take("bos_token_id", _first(generation.get("bos_token_id", config.get("bos_token_id"))))
    take("pad_token_id", _first(generation.get("pad_token_id", config.get("pad_token_id"))))
    take("context_length", _int(config.get("max_position_embeddings")))
    take("model_type", config.get("model_type"))


# ----------------------------------------------------------------------------- from the graph
def kv_dims_from_graph(model: "onnx.ModelProto", past_key_name: str) -> tuple[int | None, int | None]:
    """(KV heads, head size) from the attention node that reads `past_key_name`.

    Knows ONNX Runtime's GroupQueryAttention and MultiHeadAttention (com.microsoft) and
    ONNX's Attention: the head counts are their attributes, the head size is the query's
    width (traced back to the projection's weight) over the query heads. None where the
    graph does not say. Needs no weights (initializer shapes are in the header).
    """
    from onnx import helper

    graph = model.graph
    consumer = next((n for n in graph.node if past_key_name in n.input), None)
    if consumer is None:
        return None, None
    attrs = {a.name: helper.get_attribute_value(a) for a in consumer.attribute}
    producers = {out: node for node in graph.node for out in node.output}
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    query_width = _width(consumer.input[0], producers, shapes)
    if consumer.op_type == "GroupQueryAttention":
        heads, kv = attrs.get("num_heads"), attrs.get("kv_num_heads")
        packed = len(consumer.input) < 2 or not consumer.input[1]  # q, k and v in one tensor
        if heads and kv and query_width:
            return kv, query_width // (heads + 2 * kv if packed else heads)
        return kv, None
    if consumer.op_type == "MultiHeadAttention":
        heads = attrs.get("num_heads")
        # Without key/value inputs the query is packed (q, k, v); it is then [b, s, h, 3, d].
        packed = len(consumer.input) < 2 or not consumer.input[1]
        if heads and query_width and not packed:
            return None, query_width // heads
        return None, None
    if consumer.op_type == "Attention" and consumer.domain in ("", "ai.onnx"):
        heads, kv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        if heads and query_width:
            return kv, query_width // heads
        return kv, None
    return None, None


def _width(name: str, producers: dict, shapes: dict[str, list[int]], depth: int = 0) -> int | None:
    """The last axis of tensor `name` when it comes (through element-wise ops) from a projection."""
    node = producers.get(name)
    if node is None or depth > 8:
        return None
    attrs = {a.name: a for a in node.attribute}
    if "N" in attrs and attrs["N"].type == attrs["N"].INT:  # MatMulNBits and its kin: N output features
        return attrs["N"].i
    if node.op_type.endswith("MatMul") or node.op_type in ("MatMulInteger", "FusedMatMul"):
        if len(node.input) > 1 and len(shapes.get(node.input[1], [])) >= 2:
            return shapes[node.input[1]][-1]
        return None
    if node.op_type in ("Add", "Cast", "Identity", "RotaryEmbedding", "Mul"):
        for source in node.input[:2]:
            if source and source not in shapes:
                width = _width(source, producers, shapes, depth + 1)
                if width is not None:
                    return width
    return None
