"""Per-matrix sparsity allocations: which sparsity each gated MatMul gets.

File format (JSON):

    {"format": "wina-onnx-allocation", "version": 1,
     "default": 0.5,
     "sparsity": {"/model/layers.0/mlp/down_proj/MatMul": 0.4,
                  "/model/layers.*/self_attn/*": 0.3}}

A key is a node name or an fnmatch pattern over node names; an exact name wins over
patterns, patterns are tried in file order, and `default` covers the rest.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

FORMAT = "wina-onnx-allocation"


def check_sparsity(value: float, where: str = "sparsity") -> float:
    """Return value as float if it lies in [0, 1), else raise ConfigError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{where} must lie in [0, 1), got {number}")
    return number


@dataclass
class Allocation:
    """A sparsity per node name, with fnmatch patterns and a default."""

    default: float
    sparsity: dict[str, float] = field(default_factory=dict)
    source: str = "uniform"

    def __post_init__(self) -> None:
        self.default = check_sparsity(self.default, "default sparsity")
        self.sparsity = {k: check_sparsity(v, f"sparsity of {k!r}") for k, v in self.sparsity.items()}

    @classmethod
    def uniform(cls, sparsity: float) -> "Allocation":
        """The same sparsity for every gated MatMul."""
        return cls(default=sparsity, source=f"uniform {sparsity:g}")

    def for_node(self, name: str) -> float:
        """Sparsity of the node called `name`."""
        if name in self.sparsity:
            return self.sparsity[name]
        for pattern, value in self.sparsity.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return self.default

    def to_json(self) -> dict:
        """The file's JSON object."""
        return {"format": FORMAT, "version": 1, "default": self.default, "sparsity": self.sparsity}

    def save(self, path: str | Path) -> None:
        """Write the allocation file."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Allocation":
        """Read an allocation file, with a clear error when it is malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read allocation file {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"allocation file {path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a wina-onnx allocation file (no \"format\": \"{FORMAT}\")")
        if not isinstance(data.get("sparsity", {}), dict):
            raise ConfigError(f"{path}: \"sparsity\" must map node names to numbers")
        return cls(default=data.get("default", 0.0), sparsity=dict(data.get("sparsity", {})), source=Path(path).name)
