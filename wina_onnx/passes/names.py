"""Fresh value and node names for a rewrite, never colliding with names already in the graph.

The pass adds initializers (norms, k, thresholds) and, for `--backend onnx`, nodes and
their outputs, named after the gated node. Node names need not be unique, and a model
gated once may be gated again (`--force`): a plain f-string name could then clash with
an existing one and make the model invalid. `NameSpace.fresh` appends `_1`, `_2`, ...
until the name is free.
"""

from __future__ import annotations

import onnx


class NameSpace:
    """The names taken in one graph (values and nodes), growing as fresh ones are handed out."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        # Subgraphs (If, Loop, Scan bodies) too: their names must not shadow the outer graph's.
        taken = self._taken
        taken.update(init.name for init in graph.initializer)
        taken.update(v.name for v in graph.input)
        taken.update(v.name for v in graph.output)
        taken.update(v.name for v in graph.value_info)
        for node in graph.node:
            taken.update(node.output)
            taken.add(node.name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        self._collect(sub)

    def fresh(self, want: str) -> str:
        """`want` if it is free, else the first free `want_<i>`; the name is then taken."""
        name, i = want, 0
        while name in self._taken:
            i += 1
            name = f"{want}_{i}"
        self._taken.add(name)
        return name
