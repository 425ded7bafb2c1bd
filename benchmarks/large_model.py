"""`wina-onnx optimize` on a model past protobuf's 2 GiB limit: peak memory and the output.

Generates a stack of Llama-7B-sized decoder projections (hidden 4096, MLP 11008, fp16;
q/k/v/o and gate/up/down MatMuls named as Optimum names them) with random weights
written straight into one external data file, never held in memory whole. Then runs
`wina-onnx optimize` as a child process once per output layout and reports its peak
resident memory (getrusage of the child) as a multiple of the model's size, checks the
output (external data as asked, every projection gated, the input untouched) and runs
both models in ONNX Runtime on a few tokens.

    python benchmarks/large_model.py --layers 6 --out benchmarks/results/large_model.txt

Everything is written under a temporary folder (--work-dir's parent, default /tmp) and
removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN, MLP = 4096, 11008
PROJECTIONS = (  # (module path, role, K, N)
    ("self_attn", "q_proj", HIDDEN, HIDDEN),
    ("self_attn", "k_proj", HIDDEN, HIDDEN),
    ("self_attn", "v_proj", HIDDEN, HIDDEN),
    ("self_attn", "o_proj", HIDDEN, HIDDEN),
    ("mlp", "gate_proj", HIDDEN, MLP),
    ("mlp", "up_proj", HIDDEN, MLP),
    ("mlp", "down_proj", MLP, HIDDEN),
)


def _external_weight(name: str, k: int, n: int, data, rng: np.random.Generator) -> TensorProto:
    """Write a random fp16 [k, n] weight to the open data file in row chunks; return its TensorProto."""
    offset = data.tell()
    for start in range(0, k, 512):
        rows = min(512, k - start)
        (rng.standard_normal((rows, n), dtype=np.float32) / np.sqrt(k)).astype(np.float16).tofile(data)
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT16, dims=[k, n])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(k * n * 2))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def generate(folder: Path, layers: int, seed: int = 0) -> Path:
    """Write folder/model.onnx + model.onnx.data: `layers` decoder blocks of projections."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h = "x"
    with open(folder / "model.onnx.data", "wb") as data:
        for layer in range(layers):
            outs = {}
            attn, act = f"attn{layer}", f"act{layer}"
            for module, role, k, n in PROJECTIONS:
                w = f"model.layers.{layer}.{module}.{role}.weight"
                inits.append(_external_weight(w, k, n, data, rng))
                src = {"o_proj": attn, "down_proj": act}.get(role, h if module == "self_attn" else f"h{layer}")
                outs[role] = f"/model/layers.{layer}/{module}/{role}/MatMul_output_0"
                nodes.append(helper.make_node("MatMul", [src, w], [outs[role]],
                                              name=f"/model/layers.{layer}/{module}/{role}/MatMul"))
                if role == "v_proj":  # a stand-in for attention: q + k + v
                    nodes.append(helper.make_node("Sum", [outs["q_proj"], outs["k_proj"], outs["v_proj"]], [attn]))
                if role == "o_proj":
                    nodes.append(helper.make_node("Add", [h, outs["o_proj"]], [f"h{layer}"]))
                if role == "up_proj":  # sigmoid(gate) * up keeps activations bounded over the layers
                    nodes.append(helper.make_node("Sigmoid", [outs["gate_proj"]], [f"sig{layer}"]))
                    nodes.append(helper.make_node("Mul", [f"sig{layer}", outs["up_proj"]], [act]))
            nodes.append(helper.make_node("Add", [f"h{layer}", outs["down_proj"]], [f"x{layer + 1}"]))
            h = f"x{layer + 1}"
    graph = helper.make_graph(
        nodes, "large_projections",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT16, ["batch", "seq", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_optimize(model: Path, output: Path, layout: str) -> tuple[float, float]:
    """Run `wina-onnx optimize` in a child process; return (its peak RSS in bytes, seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "wina_onnx.cli", "optimize", str(model), "-o", str(output), "--sparsity", "0.5",
             "--external-data", layout, "-q"],
            stdout=subprocess.DEVNULL, stderr=err,
            cwd=model.parent,  # not the repo root, whose wina_onnx/ is not the installed package
        )
        # wait4 gives the resource usage of this child alone (ru_maxrss in KiB on Linux).
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            raise SystemExit(f"optimize failed ({child.returncode}): {err.read().decode()}")
    return usage.ru_maxrss * 1024.0, time.perf_counter() - start


def check_output(output: Path, layout: str, layers: int) -> str:
    """Check where the output keeps its weights and that every projection is gated."""
    from wina_onnx.modelio import external_files

    header = onnx.load(str(output), load_external_data=False)
    files = external_files(header)
    gated = sum(n.op_type == "WinaSparseMatMul" for n in header.graph.node)
    assert gated == layers * len(PROJECTIONS), f"gated {gated}"
    if layout == "single":
        assert len(files) == 1, files
    else:
        assert len(files) > 1 and all("/" in f for f in files), files
    size = sum((output.parent / f).stat().st_size for f in files)
    return f"{gated} WinaSparseMatMul nodes, {len(files)} external file(s), {size / 2**30:.3f} GiB of weights"


def run_models(dense: Path, gated: Path) -> str:
    """Run both models on 4 tokens in ONNX Runtime (graph optimizations off)."""
    import onnxruntime as ort

    from wina_onnx import get_library_path

    x = (np.random.default_rng(1).standard_normal((1, 4, HIDDEN)) * 0.1).astype(np.float16)
    results = []
    for path in (dense, gated):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.register_custom_ops_library(get_library_path())
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results.append(sess.run(None, {"x": x})[0].astype(np.float32))
        del sess
    dense_y, gated_y = results
    assert np.isfinite(dense_y).all() and np.isfinite(gated_y).all()
    rel = float(np.linalg.norm((gated_y - dense_y).astype(np.float64)) / np.linalg.norm(dense_y.astype(np.float64)))
    return f"both models run in ONNX Runtime; relative difference of the outputs at 50% sparsity: {rel:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="decoder blocks (386 MiB of fp16 weights each)")
    parser.add_argument("--work-dir", default=tempfile.gettempdir(), help="parent of the temporary folder")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()

    lines = [f"$ python benchmarks/large_model.py --layers {args.layers}" + (f" --out {args.out}" if args.out else "")]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    folder = Path(tempfile.mkdtemp(prefix="wina-large-", dir=args.work_dir))
    try:
        start = time.perf_counter()
        model = generate(folder, args.layers)
        data = folder / "model.onnx.data"
        size = data.stat().st_size + model.stat().st_size
        say(f"model: {args.layers} blocks x 7 projections, fp16, {size / 2**30:.3f} GiB ({size} bytes) in "
            f"model.onnx + one external data file; generated in {time.perf_counter() - start:.0f} s")
        digest = (_digest(model), _digest(data))
        for layout in ("single", "per-tensor"):
            output = folder / f"out-{layout}" / "model.onnx"
            peak, seconds = run_optimize(model, output, layout)
            say(f"optimize --external-data {layout}: {seconds:.0f} s, peak RSS {peak / 2**30:.3f} GiB = "
                f"{peak / size:.2f}x the model size")
            say(f"  output: {check_output(output, layout, args.layers)}")
        assert (_digest(model), _digest(data)) == digest, "the input model changed"
        say("input model and its data file unchanged (SHA-256)")
        say(run_models(model, folder / "out-single" / "model.onnx"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
