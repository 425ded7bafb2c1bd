"""The one result type of every graph pass, and passes run as a sequence.

A graph pass is a callable that rewrites an `onnx.ModelProto` in place and returns a
`PassResult`: a record of each change (a dataclass the pass defines, or one with `to_json()`),
the nodes it left alone and why, a headline for people and the pass-wide facts.
`Sequential` runs passes in order on one model, each on the graph the one before left,
and is itself a pass of the same shape (`onnx_ir.passes` has the same two ideas).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Generic, Iterable, Protocol, TypeVar

import onnx


@dataclass(frozen=True)
class Skipped:
    """A node a pass left alone, and why."""

    node_name: str
    reason: str


RecordT = TypeVar("RecordT")


@dataclass
class PassResult(Generic[RecordT]):
    """What one pass did: its changes (records), what it skipped and why, a headline.

    name: the pass ("wina_gate", "group_gates", "rotate", ...).
    records: one per change, in graph order; the model changed exactly when there are any.
    skipped: the nodes the pass could have changed but did not, with the reason.
    headline: one line for people (the first line of `summary()`).
    details: pass-wide facts that belong to no one record (sizes, totals), JSON values.
    item: what the skipped nodes are, for the summary ("MatMul", "node").
    """

    name: str
    records: list[RecordT] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    headline: str = ""
    details: dict[str, object] = field(default_factory=dict)
    item: str = "node"

    @property
    def changed(self) -> bool:
        """Whether the pass modified the model."""
        return bool(self.records)

    def summary(self) -> str:
        """The headline, then one line per skip reason with an example node."""
        lines = [self.headline or f"{self.name}: {len(self.records)} change(s)"]
        reasons: dict[str, list[str]] = {}
        for skip in self.skipped:
            reasons.setdefault(skip.reason, []).append(skip.node_name)
        for reason, names in sorted(reasons.items()):
            example = names[0] if len(names) == 1 else f"{names[0]}, ..."
            lines.append(f"skipped {len(names)} {self.item}(s): {reason} ({example})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The records, the skipped nodes and the details as one JSON-friendly dict."""
        return {
            "pass": self.name,
            "records": [r.to_json() if hasattr(r, "to_json") else asdict(r) for r in self.records],
            "skipped": [asdict(s) for s in self.skipped],
            "details": dict(self.details),
        }


class GraphPass(Protocol):
    """A pass: rewrites the model in place and says what it did."""

    def __call__(self, model: onnx.ModelProto) -> PassResult: ...


class Sequential:
    """Passes run in order on one model; the results are kept in `results` as they come.

    A later pass may read an earlier one's result through `result_of(name)` (the
    refinement of optimize reads the gate pass's targets). `after` is called with each
    result as soon as its pass is done (for progress lines).
    """

    def __init__(self, passes: Iterable[GraphPass], *,
                 after: Callable[[PassResult], None] | None = None) -> None:
        self.passes = list(passes)
        self.after = after
        self.results: list[PassResult] = []

    def __call__(self, model: onnx.ModelProto) -> PassResult[PassResult]:
        """Run every pass; the result's records are the passes' results, in order."""
        self.results = []
        for graph_pass in self.passes:
            result = graph_pass(model)
            self.results.append(result)
            if self.after is not None:
                self.after(result)
        changed = sum(r.changed for r in self.results)
        return PassResult("sequential", records=list(self.results),
                          headline=f"{changed} of {len(self.results)} pass(es) changed the model")

    def result_of(self, name: str) -> PassResult:
        """The result of the pass called `name` in this run (KeyError when it has not run)."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)
