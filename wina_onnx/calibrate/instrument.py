"""Run a model with the inputs of chosen nodes exposed, window by window of tokens.

Calibration (the dense model's MatMuls), threshold refinement and the sparsity probe (the
gated model's gates) all read the activations X that reach some nodes: each node's X is
added as a graph output, the model runs over consecutive windows of calibration text
(one prefill each), and the caller accumulates what each window gives.

The model is only borrowed: the added outputs are removed again once the session exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx

from ..errors import ConfigError
from ..gates import read_gate


def window_count(token_ids: np.ndarray, windows: int, window: int, *, text: str) -> int:
    """How many of `windows` windows of `window` tokens `token_ids` holds (at least one, else
    a ConfigError naming the `text`, e.g. "calibration")."""
    count = min(windows, len(token_ids) // window)
    if count < 1:
        raise ConfigError(f"the {text} text has {len(token_ids)} tokens, fewer than one window of {window}")
    return count


def input_type(node: onnx.NodeProto, elem_types: dict[str, int]) -> int:
    """Element type of the input X of a product node (MatMul, MatMulNBits or an ai.wina gate),
    from the types of its initializers (`elem_types`: name -> TensorProto data type)."""
    from ..passes.nbits import activation_type

    gate = read_gate(node)
    return gate.activation_type(elem_types) if gate is not None else activation_type(node, elem_types)


def expose_inputs(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto]) -> dict[str, str]:
    """Add the input X of each of `nodes` to the graph outputs (where it is not one already);
    return node name (its first output's where it has none) -> X."""
    exposed: dict[str, str] = {}
    outputs = {o.name for o in model.graph.output}
    elem_types = {init.name: init.data_type for init in model.graph.initializer}
    for node in nodes:
        x = node.input[0]
        exposed[node.name or node.output[0]] = x
        if x not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(x, input_type(node, elem_types), None))
            outputs.add(x)
    return exposed


class InstrumentedRun:
    """An ONNX Runtime session of a model with the inputs X of `nodes` as extra outputs.

    model_dir: the model's folder (its config files give the KV cache's sizes).
    beside: the model's file, when `model` was loaded without its weights: the instrumented
    graph is then written beside it for the session (so that its external data paths
    resolve) and removed again; otherwise the session reads the model from memory.
    The op library is registered when the model uses the ai.wina domain.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        nodes: Iterable[onnx.NodeProto],
        *,
        model_dir: str | Path | None,
        threads: int | None = None,
        providers: Sequence | None = None,
        beside: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        from ..library import session_options
        from ..runtime.session import CausalLM, imports_wina_domain

        kept = len(model.graph.output)
        self.exposed = expose_inputs(model, nodes)
        options = session_options(threads=threads, register=imports_wina_domain(model))
        providers = list(providers or ["CPUExecutionProvider"])
        try:
            if beside is not None:
                graph = beside.parent / f".instrumented-{os.getpid()}-{beside.name}"
                try:
                    onnx.save_model(model, str(graph))
                    self.session = ort.InferenceSession(str(graph), options, providers=providers)
                finally:
                    graph.unlink(missing_ok=True)
            else:  # serialised in memory: the instrumented copy never touches the disk
                self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        finally:
            del model.graph.output[kept:]
        self.lm = CausalLM(self.session, model_dir)
        self._names = sorted(set(self.exposed.values()))

    def windows(self, token_ids: np.ndarray, count: int, window: int) -> Iterator[dict[str, np.ndarray]]:
        """Run `count` consecutive windows of `window` tokens of `token_ids`, one prefill each;
        yield each window's exposed tensors by name."""
        token_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        for w in range(count):
            ids = token_ids[w * window:(w + 1) * window][None, :]
            yield dict(zip(self._names, self.session.run(self._names, self.lm.feeds(ids))))
