"""Helpers shared by the end-to-end tests: optimize a folder, measure its gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from wina_onnx import reference, schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.instrument import expose_inputs
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig
from wina_onnx.runtime.session import CausalLM, load_session


def optimized_copy(dense_dir: Path, out_dir: Path, **config) -> Path:
    """Optimize dense_dir/model.onnx into out_dir (optimize_model copies its tokenizer files);
    return the model path. Unless asked otherwise: weight norms in every WINA score and one
    node per gate (norm_on "all", group False), the plain form the oracles describe."""
    sparsity = config.pop("sparsity", 0.5)
    config.setdefault("norm_on", "all")
    config.setdefault("group", False)
    out = out_dir / "model.onnx"
    optimize_model(dense_dir / "model.onnx", out, GateConfig(allocation=Allocation.uniform(sparsity), **config),
                   progress=False)
    return out


def logits(model_path: Path, ids: np.ndarray, *, exact: bool = True) -> np.ndarray:
    """Logits of one prefill of `ids`; graph optimizations off when comparing exactly."""
    lm = CausalLM(load_session(model_path, threads=2, optimization_level="disable" if exact else None))
    return lm.forward(ids[None, :])[0][0]


def measured_sparsity(model_path: Path, ids: np.ndarray) -> float:
    """Fraction of weight rows masked over all gated ops, token by token, on `ids`.

    The inputs x of every WinaSparseMatMul are exposed as outputs; the keep-mask is then
    computed from the op's own score scale, k or threshold, weighted by N (the bytes a
    row holds), so this is the fraction of weight bytes a decode step does not read.
    """
    model = onnx.load(model_path)
    inits = {i.name: i for i in model.graph.initializer}
    gates = [n for n in model.graph.node if n.op_type == schema.OP_TYPE]
    exposed = expose_inputs(model, gates)
    options = ort.SessionOptions()
    from wina_onnx import get_library_path

    options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lm = CausalLM(session)
    names = sorted(set(exposed.values()))
    values = dict(zip(names, session.run(names, lm.feeds(ids[None, :]))))
    masked = total = 0.0
    for node in gates:
        x = values[exposed[node.name]].reshape(-1, inits[node.input[1]].dims[0])
        n = inits[node.input[1]].dims[1]
        scale = numpy_helper.to_array(inits[node.input[2]])
        if node.input[4]:
            keep = reference.keep_mask(x, scale, k=int(numpy_helper.to_array(inits[node.input[4]])[0]))
        else:
            keep = reference.keep_mask(x, scale, threshold=float(numpy_helper.to_array(inits[node.input[3]])[0]))
        masked += (~keep).sum() * n
        total += keep.size * n
    return masked / total
