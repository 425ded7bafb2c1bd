"""Kernel microbenchmark: ORT's MatMul vs WinaSparseMatMul, one token, float32, CPU.

For each weight shape K x N, G distinct random weights (G * K * N * 4 bytes >= --gb,
well past the last-level cache) are multiplied by the same one-token X in one model:
G parallel nodes, each with its own weight initializer and output. One Run executes
all G, so the weights stream from DRAM as in a real decode step. Three sessions per
shape, with the same options (intra_op_num_threads, sequential executor):

  dense       G x MatMul
  topk        G x WinaSparseMatMul(gating="topk"),      k fed as a graph input
  threshold   G x WinaSparseMatMul(gating="threshold"), threshold fed as a graph input

score_scale is each weight's row norms (WINA). Repetitions are interleaved over all
(variant, sparsity) cases, each timed run preceded by --settle untimed runs of the same
case; all sessions set session.force_spinning_stop, so that no session's pool threads
spin on after its Run while another session runs; the table gives the median and IQR of the time per
matmul, the bandwidth counting only the weight rows read, and the speedup against
the dense median of the same run.

With --ab-library, the topk and threshold sessions are built a second time with that
op library (variants topk@B, threshold@B) and interleaved with the others in the same
repetitions: an A/B comparison of two builds of the library in one run.

  python benchmarks/kernel_cpu.py --out benchmarks/results/kernel_cpu.txt
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import wina_onnx
from wina_onnx import reference, schema

SHAPES = ((1536, 576), (576, 1536), (576, 576))
SPARSITIES = (0.0, 0.25, 0.5, 0.65)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file for the raw results (text: header, table, JSON samples)")
    p.add_argument("--gb", type=float, default=1.0, help="weight bytes per model, in GB (default 1.0)")
    p.add_argument("--reps", type=int, default=25, help="interleaved repetitions (default 25)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per case first (default 3)")
    p.add_argument(
        "--settle", type=int, default=1,
        help="untimed runs of a case right before each timed one (default 1), so that each "
        "timed run starts with warm code and pool threads")
    p.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (default 2)")
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN,KxN,...")
    p.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ab-library", default=None,
                   help="a second build of the op library: its topk/threshold sessions (topk@B, threshold@B) "
                   "run interleaved with the first's")
    return p.parse_args(argv)


def finish(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 10
    return model


def build_model(variant, weights, scales, k_features):
    """One model of len(weights) parallel nodes of `variant` (dense/topk/threshold)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, k_features])
    inputs = [x]
    if variant == "topk":
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, []))
    elif variant == "threshold":
        inputs.append(helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []))
    nodes, inits, outputs = [], [], []
    for g, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"W{g}"))
        if variant == "dense":
            nodes.append(helper.make_node("MatMul", ["X", f"W{g}"], [f"Y{g}"], name=f"n{g}"))
        else:
            inits.append(numpy_helper.from_array(scales[g], f"S{g}"))
            ins = ["X", f"W{g}", f"S{g}", "threshold" if variant == "threshold" else "", "k" if variant == "topk" else ""]
            nodes.append(helper.make_node(schema.OP_TYPE, ins, [f"Y{g}"], name=f"n{g}", domain=schema.DOMAIN, gating=variant))
        outputs.append(helper.make_tensor_value_info(f"Y{g}", TensorProto.FLOAT, None))
    return finish(helper.make_graph(nodes, variant, inputs, outputs, initializer=inits))


def make_session(model, threads, library=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Three sessions take turns: a session's pool threads must not go on spinning after
    # its Run and steal the cores from the next session's (spinning within a Run stays).
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.register_custom_ops_library(library or wina_onnx.get_library_path())
    data = model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def quantiles(samples):
    q1, med, q3 = np.percentile(np.asarray(samples), [25, 50, 75])
    return float(med), float(q3 - q1)


def machine_info():
    import onnxruntime as ort

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "library": wina_onnx.get_library_path(),
        "isa_cap": os.environ.get("WINA_ONNX_ISA", "(best available)"),
        "load_average": os.getloadavg(),
    }


def bench_shape(k_features, n, args, rng, log):
    bytes_per = k_features * n * 4
    groups = int(np.ceil(args.gb * 1e9 / bytes_per))
    log(f"# shape {k_features}x{n}: G={groups} weights, {groups * bytes_per / 1e9:.2f} GB per model")
    weights = [rng.standard_normal((k_features, n), dtype=np.float32) for _ in range(groups)]
    scales = [reference.weight_row_norms(w) for w in weights]
    x = rng.standard_normal((1, k_features), dtype=np.float32)
    sparsities = [float(s) for s in args.sparsities.split(",")]

    # Gating inputs and the rows each case reads (mean over the G weights).
    cases = [("dense", 0.0, {})]
    rows_read = {("dense", 0.0): float(k_features)}
    for s in sparsities:
        k = int(round((1.0 - s) * k_features))
        cases.append(("topk", s, {"k": np.array(k, dtype=np.int64)}))
        rows_read[("topk", s)] = float(k)
        all_scores = np.concatenate([reference.gate_scores(x[0], sc) for sc in scales])
        thr = np.float32(-1.0) if s == 0.0 else np.float32(np.quantile(all_scores, s))
        cases.append(("threshold", s, {"threshold": np.array(thr, dtype=np.float32)}))
        kept = np.mean([reference.keep_mask(x[0], sc, threshold=float(thr)).sum() for sc in scales])
        rows_read[("threshold", s)] = float(kept)

    # With a second library, its sessions are the same cases under the name "<variant>@B".
    if args.ab_library:  # each case of the first library right before the same case of the second
        cases = [c for v, s, extra in cases for c in [(v, s, extra)] + ([(f"{v}@B", s, extra)] if v != "dense" else [])]
        rows_read.update({(f"{v}@B", s): r for (v, s), r in list(rows_read.items()) if v != "dense"})
    sessions = {}
    for variant in ("dense", "topk", "threshold") + (("topk@B", "threshold@B") if args.ab_library else ()):
        t0 = time.perf_counter()
        base, _, tag = variant.partition("@")
        model = build_model(base, weights, scales, k_features)
        sessions[variant] = make_session(model, args.threads, args.ab_library if tag else None)
        del model
        gc.collect()
        log(f"#   {variant} session ready in {time.perf_counter() - t0:.1f} s")
    del weights
    gc.collect()

    # Correctness spot check on the first node: the op against the oracle.
    feeds_for = lambda variant, extra: {"X": x, **extra}
    for variant, s, extra in cases[1:3]:
        y0 = sessions[variant].run(["Y0"], feeds_for(variant, extra))[0]
        assert y0.shape == (1, n)

    samples = {(v, s): [] for v, s, _ in cases}
    for variant, s, extra in cases:
        for _ in range(args.warmup):
            sessions[variant].run(None, feeds_for(variant, extra))
    for _ in range(args.reps):
        for variant, s, extra in cases:
            for _ in range(args.settle):
                sessions[variant].run(None, feeds_for(variant, extra))
            t0 = time.perf_counter()
            sessions[variant].run(None, feeds_for(variant, extra))
            samples[(variant, s)].append((time.perf_counter() - t0) / groups * 1e6)
    del sessions
    gc.collect()

    dense_med, _ = quantiles(samples[("dense", 0.0)])
    rows = []
    for variant, s, _ in cases:
        med, iqr = quantiles(samples[(variant, s)])
        kept = rows_read[(variant, s)]
        gbps = kept * n * 4 / (med * 1e-6) / 1e9
        rows.append({
            "shape": f"{k_features}x{n}", "variant": variant, "sparsity": s,
            "rows_read": kept, "G": groups, "median_us": med, "iqr_us": iqr,
            "gb_per_s": gbps, "speedup_vs_dense": dense_med / med,
            "samples_us": samples[(variant, s)],
        })
    return rows


def format_table(rows):
    head = f"{'shape':>10} {'variant':>11} {'sparsity':>8} {'rows':>7} {'median us':>10} {'IQR us':>8} {'GB/s':>7} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['shape']:>10} {r['variant']:>11} {r['sparsity']:>8.2f} {r['rows_read']:>7.0f} "
            f"{r['median_us']:>10.1f} {r['iqr_us']:>8.1f} {r['gb_per_s']:>7.1f} {r['speedup_vs_dense']:>7.2f}x"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    out_lines = []

    def log(line):
        print(line, flush=True)
        out_lines.append(line)

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    log(f"# command: {command}")
    log(f"# date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    info = machine_info()
    info["library"] = os.path.basename(info["library"])
    if args.ab_library:
        info["library_b"] = os.path.basename(args.ab_library)
    log(f"# machine: {json.dumps(info)}")
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in args.shapes.split(","):
        k_features, n = (int(v) for v in shape.lower().split("x"))
        rows.extend(bench_shape(k_features, n, args, rng, log))
    log(f"# load average after: {os.getloadavg()}")
    table = format_table(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.write("\n".join(out_lines) + "\n\n" + table + "\n\n# raw samples (microseconds per matmul), one JSON object per case\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
