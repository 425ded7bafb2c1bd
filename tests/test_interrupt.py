"""A run of `wina-onnx optimize` killed (SIGKILL) while it writes loses nothing.

The input model and an earlier output at the same path (with its external data file)
stay byte for byte as they were, and no partial file takes the output's name: the run
writes into a temporary folder beside the target and renames when complete, and new
weights never overwrite a data file the earlier output refers to.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYERS = 6
K = 2048  # 6 x 16 MiB of float32 weights: the write takes long enough to be caught


def _model(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, h = [], [], "x"
    for layer in range(LAYERS):
        w = f"w{layer}"
        inits.append(numpy_helper.from_array((rng.standard_normal((K, K), dtype=np.float32) / np.sqrt(K)).astype(np.float32), w))
        nodes.append(helper.make_node("MatMul", [h, w], [f"h{layer}"], name=f"/model/layers.{layer}/mlp/up_proj/MatMul"))
        h = f"h{layer}"
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _optimize(model: Path, output: Path, sparsity: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wina_onnx.cli", "optimize", str(model), "-o", str(output), "--sparsity", sparsity,
         "--external-data", "single", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=model.parent,  # not the repo root, whose wina_onnx/ is not the installed package
    )


def _kill_when(child: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL the child as soon as ready() holds; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return True
        if child.poll() is not None:
            return False
        time.sleep(0.002)
    child.kill()
    raise AssertionError("the run neither wrote nor finished in time")


def test_kill_mid_write_keeps_input_and_earlier_output(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _model(src / "model.onnx")
    earlier = _optimize(src / "model.onnx", out / "model.onnx", "0.25")
    assert earlier.wait() == 0
    inputs, outputs = _digests(src), _digests(out)
    assert set(outputs) == {"model.onnx", "model.onnx.data"}

    def staging_has_weights() -> bool:  # the new weights are being written
        return any(p.is_dir() and any(f.stat().st_size > 0 for f in p.iterdir() if f.is_file())
                   for p in out.glob(".model.onnx.*"))

    killed = 0
    for ready in (lambda: any(out.glob(".model.onnx.*")), staging_has_weights):
        if _kill_when(_optimize(src / "model.onnx", out / "model.onnx", "0.75"), ready):
            killed += 1
        assert _digests(src) == inputs, "the input changed"
        assert {k: v for k, v in _digests(out).items() if k in outputs} == outputs, "the earlier output changed"
        model = onnx.load(str(out / "model.onnx"))  # loads with its own data file
        assert [p.value for p in model.metadata_props if p.key == "wina_onnx.config"][0].count("0.25")
    assert killed == 2, "the runs finished before they could be killed"
    # A complete run afterwards replaces the output and removes the data file it no longer uses.
    assert _optimize(src / "model.onnx", out / "model.onnx", "0.75").wait() == 0
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"model.onnx", "model.onnx.data.1"}
    assert onnx.load(str(out / "model.onnx")).graph.node[0].op_type == "WinaSparseMatMul"
