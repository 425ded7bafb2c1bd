"""Kernel microbenchmark: ONNX Runtime's MatMulNBits (MLAS) vs WinaSparseMatMulNBits, one token, CPU.

Both ops read the same 4-bit codes and scales (block 32, no zero points: what the GenAI
builder's CPU models hold), float32 activations. For each weight shape K x N, G distinct
random weights (G * bytes >= --gb, well past the last-level cache) are multiplied by the
same one-token X in one model: G parallel nodes, so the weights stream from DRAM as in a
real decode step. Per shape and thread count, four sessions:

  mlas-acc4   G x MatMulNBits, accuracy_level 4 (int8 activations, VNNI), as the builder writes
  mlas-acc0   G x MatMulNBits, accuracy_level 0 (float arithmetic)
  wina-acc4   G x WinaSparseMatMulNBits(gating="threshold"), accuracy_level 4
  wina-acc0   the same at accuracy_level 0

The codes are MatMulNBits' own layout for MLAS and re-packed feature-major
(wina_onnx.passes.nbits.feature_major) for ours; score_scale is each weight's row norms.
The threshold is fed as a graph input and set to the quantile of all scores that masks
the wanted fraction (0 masks nothing). Repetitions are interleaved over all cases, each
timed run preceded by --settle untimed runs; sessions set session.force_spinning_stop.
The table gives the median and IQR per matmul, the bytes actually read per second (codes
of the kept rows plus the scales), and the speedups against MLAS at accuracy levels 4
and 0 (same threads, same run).

  python benchmarks/kernel_cpu_nbits.py --out benchmarks/results/kernel_cpu_nbits.txt
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
from wina_onnx.passes import nbits

SHAPES = ((4096, 14336), (14336, 4096), (576, 1536), (1536, 576), (576, 960))
SPARSITIES = (0.0, 0.25, 0.4, 0.5, 0.65)
BLOCK = 32
VARIANTS = ("mlas-acc4", "mlas-acc0", "wina-acc4", "wina-acc0")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file for the raw results (text: header, table, JSON samples)")
    p.add_argument("--gb", type=float, default=0.3, help="weight bytes per model, in GB (default 0.3)")
    p.add_argument("--reps", type=int, default=15, help="interleaved repetitions (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per case first (default 2)")
    p.add_argument("--settle", type=int, default=1, help="untimed runs of a case right before each timed one")
    p.add_argument("--threads", default="1,2", help="intra_op_num_threads values (default 1,2)")
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN,KxN,...")
    p.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock", choices=("wall", "thread"), default="wall",
        help="wall: elapsed time; thread: the calling thread's CPU time (1 thread only: all the work runs "
        "in the calling thread), which leaves out the time other processes hold the core")
    return p.parse_args(argv)


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1),
                                                    helper.make_opsetid(schema.MATMUL_NBITS_DOMAIN, 1)])
    model.ir_version = 10
    return model


def build_model(variant: str, weights: list[nbits.FeatureMajor], norms: list[np.ndarray]) -> onnx.ModelProto:
    """One model of len(weights) parallel nodes of `variant`."""
    k, n = weights[0].k, weights[0].n
    level = 4 if variant.endswith("acc4") else 0
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, k])]
    if variant.startswith("wina"):
        inputs.append(helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []))
    nodes, inits, outputs = [], [], []
    for g, w in enumerate(weights):
        if variant.startswith("mlas"):
            b, scales, _ = nbits.column_major(w)
            inits += [numpy_helper.from_array(b, f"B{g}"), numpy_helper.from_array(scales, f"S{g}")]
            nodes.append(helper.make_node(schema.MATMUL_NBITS_OP_TYPE, ["X", f"B{g}", f"S{g}"], [f"Y{g}"], name=f"n{g}",
                                          domain=schema.MATMUL_NBITS_DOMAIN, K=k, N=n, bits=4, block_size=BLOCK,
                                          accuracy_level=level))
        else:
            inits += [numpy_helper.from_array(w.codes, f"B{g}"), numpy_helper.from_array(w.scales, f"S{g}"),
                      numpy_helper.from_array(norms[g], f"R{g}")]
            nodes.append(helper.make_node(schema.NBITS_OP_TYPE, ["X", f"B{g}", f"S{g}", "", f"R{g}", "threshold"],
                                          [f"Y{g}"], name=f"n{g}", domain=schema.DOMAIN, gating="threshold", K=k, N=n,
                                          bits=4, block_size=BLOCK, accuracy_level=level))
        outputs.append(helper.make_tensor_value_info(f"Y{g}", TensorProto.FLOAT, None))
    return finish(helper.make_graph(nodes, variant, inputs, outputs, initializer=inits))


def make_session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.register_custom_ops_library(wina_onnx.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def quantiles(samples):
    q1, med, q3 = np.percentile(np.asarray(samples), [25, 50, 75])
    return float(med), float(q3 - q1)


def machine_info() -> dict:
    import onnxruntime as ort

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "library": os.path.basename(wina_onnx.get_library_path()),
            "isa_cap": os.environ.get("WINA_ONNX_ISA", "(best available)"), "load_average": os.getloadavg()}


def random_weights(k: int, n: int, count: int, rng: np.random.Generator) -> list[nbits.FeatureMajor]:
    blocks = -(-k // BLOCK)
    return [nbits.FeatureMajor(rng.integers(0, 256, (k, -(-n // 2)), dtype=np.uint8),
                               (rng.random((blocks, n), dtype=np.float32) * 0.02 + 0.001).astype(np.float32),
                               None, k, n, BLOCK) for _ in range(count)]


def bench_shape(k: int, n: int, threads: int, args, rng, log) -> list[dict]:
    bytes_per = k * -(-n // 2) + -(-k // BLOCK) * n * 4
    groups = int(np.ceil(args.gb * 1e9 / bytes_per))
    log(f"# shape {k}x{n}, {threads} thread(s): G={groups} weights, {groups * bytes_per / 1e9:.2f} GB per model")
    weights = random_weights(k, n, groups, rng)
    norms = [w.row_norms() for w in weights]
    x = rng.standard_normal((1, k), dtype=np.float32)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    all_scores = np.concatenate([reference.gate_scores(x[0], r) for r in norms])

    cases, read = [], {}
    for variant in VARIANTS:
        if variant.startswith("mlas"):
            cases.append((variant, 0.0, {}))
            read[(variant, 0.0)] = float(bytes_per)
            continue
        for s in sparsities:
            thr = np.float32(-1.0) if s == 0.0 else np.float32(np.quantile(all_scores, s))
            cases.append((variant, s, {"threshold": np.array(thr, dtype=np.float32)}))
            kept_bytes = []
            for w, r in zip(weights, norms):
                mask = reference.keep_mask(x[0], r, threshold=float(thr))
                blocks_used = np.unique(np.nonzero(mask)[0] // BLOCK).size
                kept_bytes.append(mask.sum() * w.codes.shape[1] + blocks_used * n * 4)
            read[(variant, s)] = float(np.mean(kept_bytes))

    sessions = {}
    for variant in VARIANTS:
        t0 = time.perf_counter()
        sessions[variant] = make_session(build_model(variant, weights, norms), threads)
        gc.collect()
        log(f"#   {variant} session ready in {time.perf_counter() - t0:.1f} s")
    del weights
    gc.collect()

    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    samples = {(v, s): [] for v, s, _ in cases}
    for variant, s, extra in cases:
        for _ in range(args.warmup):
            sessions[variant].run(None, {"X": x, **extra})
    for _ in range(args.reps):
        for variant, s, extra in cases:
            feeds = {"X": x, **extra}
            for _ in range(args.settle):
                sessions[variant].run(None, feeds)
            t0 = clock()
            sessions[variant].run(None, feeds)
            samples[(variant, s)].append((clock() - t0) / groups * 1e6)
    del sessions
    gc.collect()

    base4, _ = quantiles(samples[("mlas-acc4", 0.0)])
    base0, _ = quantiles(samples[("mlas-acc0", 0.0)])
    rows = []
    for variant, s, _ in cases:
        med, iqr = quantiles(samples[(variant, s)])
        rows.append({"shape": f"{k}x{n}", "threads": threads, "variant": variant, "sparsity": s, "G": groups,
                     "bytes_read": read[(variant, s)], "median_us": med, "iqr_us": iqr,
                     "gb_per_s": read[(variant, s)] / (med * 1e-6) / 1e9, "vs_mlas_acc4": base4 / med,
                     "vs_mlas_acc0": base0 / med, "samples_us": samples[(variant, s)]})
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'shape':>10} {'thr':>3} {'variant':>9} {'sparsity':>8} {'median us':>10} {'IQR us':>8} "
            f"{'GB/s':>6} {'vs acc4':>8} {'vs acc0':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:>10} {r['threads']:>3} {r['variant']:>9} {r['sparsity']:>8.2f} "
                     f"{r['median_us']:>10.1f} {r['iqr_us']:>8.1f} {r['gb_per_s']:>6.1f} "
                     f"{r['vs_mlas_acc4']:>7.2f}x {r['vs_mlas_acc0']:>7.2f}x")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    out_lines = []

    def log(line):
        print(line, flush=True)
        out_lines.append(line)

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    log(f"# command: {command}")
    log(f"# date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    log(f"# machine: {json.dumps(machine_info())}")
    threads_list = [int(t) for t in args.threads.split(",")]
    if args.clock == "thread" and threads_list != [1]:
        raise SystemExit("--clock thread measures one thread only: give --threads 1")
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        for threads in threads_list:
            rows.extend(bench_shape(k, n, threads, args, rng, log))
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
