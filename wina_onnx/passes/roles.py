"""Which decoder projection a MatMul node is, read from the names exporters give it.

Exporters (Optimum, torch.onnx, ONNX Runtime GenAI's model builder) keep the module
path of the projection in the node name, e.g. `/model/layers.3/mlp/down_proj/MatMul`.
A role is one of the WINA targets (attention q/k/v/o, fused qkv, MLP gate/up/down,
fused gate_up) or None; the LM head and embeddings are recognised so that they are
refused by name even when their weight is a constant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTENTION_ROLES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")
MLP_ROLES = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")
ROLES = ATTENTION_ROLES + MLP_ROLES

# Module names used by common architectures, mapped to our role names. Order matters:
# the first pattern that matches the module path wins.
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|/|\.)(gate_up_proj)(/|\.|$)", "gate_up_proj"),
    (r"(^|/|\.)(qkv_proj|query_key_value|Wqkv|c_attn)(/|\.|$)", "qkv_proj"),
    (r"(^|/|\.)(q_proj|query)(/|\.|$)", "q_proj"),
    (r"(^|/|\.)(k_proj|key)(/|\.|$)", "k_proj"),
    (r"(^|/|\.)(v_proj|value)(/|\.|$)", "v_proj"),
    (r"(^|/|\.)(o_proj|out_proj)(/|\.|$)", "o_proj"),
    (r"(attn|attention)[^/]*/(c_proj|dense)(/|\.|$)", "o_proj"),
    (r"(^|/|\.)(gate_proj|w1)(/|\.|$)", "gate_proj"),
    (r"(^|/|\.)(up_proj|w3|c_fc|fc1|dense_h_to_4h)(/|\.|$)", "up_proj"),
    (r"(^|/|\.)(down_proj|w2|fc2|dense_4h_to_h)(/|\.|$)", "down_proj"),
    (r"(mlp|feed_forward|ffn)[^/]*/(c_proj)(/|\.|$)", "down_proj"),
)
_EXCLUDED_PATTERN = re.compile(r"(lm_head|embed|wte|wpe|classifier|score)", re.IGNORECASE)
_LAYER_PATTERN = re.compile(r"(?:layers?|h|blocks?|block)[./_](\d+)(?:/|\.|$)")


@dataclass(frozen=True)
class Role:
    """The role of a projection: its kind (e.g. 'down_proj') and decoder layer index."""

    kind: str
    layer: int | None

    @property
    def label(self) -> str:
        """Short label such as 'L3.down_proj'."""
        prefix = f"L{self.layer}." if self.layer is not None else ""
        return prefix + self.kind


def is_excluded_by_name(name: str) -> bool:
    """True for the LM head, embeddings and classifier heads, which are never gated by default."""
    return bool(_EXCLUDED_PATTERN.search(name))


def classify(name: str) -> Role | None:
    """Role of the MatMul node `name`, or None if it is not a decoder projection."""
    if is_excluded_by_name(name):
        return None
    for pattern, kind in _ROLE_PATTERNS:
        if re.search(pattern, name):
            match = _LAYER_PATTERN.search(name)
            return Role(kind=kind, layer=int(match.group(1)) if match else None)
    return None
