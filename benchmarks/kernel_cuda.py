"""Kernel microbenchmark on the GPU: ORT's MatMul vs WinaSparseMatMul, one token, float16.

ONNX Runtime's CUDAExecutionProvider, in one run, for weights K x N in
{4096x4096, 4096x14336, 14336x4096}. Each model is a chain of --chain (32) nodes that
all read the same one-token X and each its own weight; the weights are G distinct
device buffers (G * K * N * 2 bytes >= 512 MiB, ten times the H100's L2) bound as
graph inputs through IOBinding, so every node streams its rows from DRAM, as in a
decode step, and nothing is copied between host and device during the timed runs.
Three sessions per shape (CPU fallback disabled, so every node runs on the GPU):

  dense       chain of MatMul
  threshold   chain of WinaSparseMatMul(gating="threshold"), threshold a device input
  topk        chain of WinaSparseMatMul(gating="topk"),      k a device input

score_scale is each weight's row norms (WINA); the threshold for sparsity s is the s
quantile of X's scores, k = K - round(s K). Each case is timed two ways:

  chain   wall time of Run over the chain / chain length (includes ORT's per-node host
          work and 1/chain of the ~20 us Run overhead; a host-bound chain shows here)
  graph   the same sessions with the CUDA provider's CUDA graphs (enable_cuda_graph):
          one replay per Run, so this is close to the GPU time of the kernels

Repetitions are interleaved over the cases; the table gives medians, the speedup
against dense of the same method, and the bandwidth counting only the weight rows
read, against a measured read bandwidth: --peak-gbs (3070 GB/s, the H100's) or
--peak-gbs measure (torch.sum over 2 GiB of float16 on the same GPU, median of 20, in the
same run; needs torch).

  python benchmarks/kernel_cuda.py --out benchmarks/results/kernel_cuda.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
SPARSITIES = (0.0, 0.5, 0.65)
TARGETS = {0.0: 1 / 1.1, 0.5: 1.8, 0.65: 2.4}  # required speedup vs dense (issue #3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file for the raw results (header, table, JSON samples)")
    p.add_argument("--library", default=None, help="op library (default: WINA_ONNX_LIBRARY or the package's)")
    p.add_argument("--chain", type=int, default=32, help="nodes per model (default 32)")
    p.add_argument("--reps", type=int, default=100, help="interleaved repetitions (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per case first (default 5)")
    p.add_argument("--mib", type=int, default=512, help="distinct weight bytes per shape, MiB (default 512)")
    p.add_argument("--peak-gbs", default="3070",
                   help="read bandwidth in GB/s, or 'measure' (torch.sum over 2 GiB; default 3070, an H100's)")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph sessions")
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,4096x14336 (default: the three above)")
    return p.parse_args(argv)


def load_ort():
    """onnxruntime with the CUDA 13 libraries loadable (torch brings them; else ORT's preload)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu")
    if hasattr(ort, "preload_dlls") and "torch" not in sys.modules:
        ort.preload_dlls()
    return ort


def chain_model(k, n, chain, groups, variant):
    """X [1, K] -> chain nodes; node i reads weight input W{i % groups}; outputs Y0..Y{chain-1}."""
    f16 = TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info("X", f16, [1, k])]
    inputs += [helper.make_tensor_value_info(f"W{g}", f16, [k, n]) for g in range(groups)]
    inits, nodes, outputs = [], [], []
    if variant != "dense":
        inputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, [k]))
        if variant == "threshold":
            inputs.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, []))
        else:
            inputs.append(helper.make_tensor_value_info("KK", TensorProto.INT64, []))
    for i in range(chain):
        w, y = f"W{i % groups}", f"Y{i}"
        if variant == "dense":
            nodes.append(helper.make_node("MatMul", ["X", w], [y], name=f"mm{i}"))
        elif variant == "threshold":
            nodes.append(helper.make_node("WinaSparseMatMul", ["X", w, "S", "T"], [y], name=f"wina{i}",
                                          domain="ai.wina", gating="threshold"))
        else:
            nodes.append(helper.make_node("WinaSparseMatMul", ["X", w, "S", "", "KK"], [y], name=f"wina{i}",
                                          domain="ai.wina", gating="topk"))
        outputs.append(helper.make_tensor_value_info(y, f16, [1, n]))
    graph = helper.make_graph(nodes, f"chain_{variant}", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.wina", 1)])
    model.ir_version = 10
    return model


def measure_read_gbs(reps: int = 20) -> float:
    """Read bandwidth of this GPU: torch.sum over 2 GiB of float16, median of `reps`, GB/s."""
    import torch

    x = torch.ones(2**30, dtype=torch.float16, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps + 3):
        start.record()
        x.sum()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    seconds = float(np.median(times[3:]))
    del x
    torch.cuda.empty_cache()
    return 2**31 / seconds / 1e9


def device_description():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None):
    args = parse_args(argv)
    ort = load_ort()
    if args.peak_gbs == "measure":
        args.peak_gbs = measure_read_gbs()
        peak_source = "measured in this run: torch.sum over 2 GiB of float16, median of 20"
    else:
        args.peak_gbs = float(args.peak_gbs)
        peak_source = "given (--peak-gbs)"
    library = args.library or os.environ.get("WINA_ONNX_LIBRARY")
    if library is None:
        import wina_onnx

        library = wina_onnx.get_library_path()
    shapes = SHAPES if not args.shapes else tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    rng = np.random.default_rng(0)

    def make_session(model, graph):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        options.register_custom_ops_library(library)
        provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if graph else {})
        return ort.InferenceSession(model.SerializeToString(), options, providers=[provider])

    header = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "chain": args.chain,
        "reps": args.reps,
        "library": os.path.basename(library),
        "read bandwidth": f"{args.peak_gbs:.0f} GB/s, {peak_source}",
    }
    rows, samples = [], {}
    for k, n in shapes:
        wbytes = k * n * 2
        groups = max(2, min(args.chain, -(-args.mib * 2**20 // wbytes)))
        b = (rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float16)
        scale = np.linalg.norm(b.astype(np.float32), axis=1).astype(np.float32)
        x = rng.standard_normal((1, k), dtype=np.float32).astype(np.float16)
        scores = np.abs(x[0].astype(np.float32)) * scale
        dev = lambda a: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0)  # noqa: E731
        w_dev = [dev(b) for _ in range(groups)]
        x_dev, s_dev = dev(x), dev(scale)
        t_dev = dev(np.array(-1.0, np.float32))
        k_dev = dev(np.array(k, np.int64))
        reference = (x.astype(np.float32) @ b.astype(np.float32))[0]

        methods = ["chain"] + ([] if args.no_graph else ["graph"])
        sessions, bindings, outs = {}, {}, {}
        for variant in ("dense", "threshold", "topk"):
            model = chain_model(k, n, args.chain, groups, variant)
            for method in methods:
                try:
                    sess = make_session(model, method == "graph")
                except Exception as e:  # noqa: BLE001 (reported in the output)
                    print(f"# {k}x{n} {variant} {method}: session failed: {e}", flush=True)
                    continue
                bind = sess.io_binding()
                bind.bind_ortvalue_input("X", x_dev)
                for g in range(groups):
                    bind.bind_ortvalue_input(f"W{g}", w_dev[g])
                if variant != "dense":
                    bind.bind_ortvalue_input("S", s_dev)
                    bind.bind_ortvalue_input("T" if variant == "threshold" else "KK",
                                             t_dev if variant == "threshold" else k_dev)
                ys = [ort.OrtValue.ortvalue_from_shape_and_type([1, n], np.float16, "cuda", 0) for _ in range(args.chain)]
                for i, yv in enumerate(ys):
                    bind.bind_ortvalue_output(f"Y{i}", yv)
                sessions[(variant, method)], bindings[(variant, method)], outs[(variant, method)] = sess, bind, ys

        cases = []
        for s in SPARSITIES:
            thr = -1.0 if s == 0.0 else float(np.quantile(scores, s))
            kk = k - int(round(s * k))
            kept_thr = int((scores > np.float32(thr)).sum())
            for method in methods:
                cases.append(("dense", s, method, None, k))
                cases.append(("threshold", s, method, thr, kept_thr))
                cases.append(("topk", s, method, kk, kk))
        cases = [c for c in cases if (c[0], c[2]) in sessions]

        def run_case(case):
            variant, s, method, value, _ = case
            if variant == "threshold":
                t_dev.update_inplace(np.array(value, np.float32))
            elif variant == "topk":
                k_dev.update_inplace(np.array(value, np.int64))
            sess, bind = sessions[(variant, method)], bindings[(variant, method)]
            t0 = time.perf_counter()
            sess.run_with_iobinding(bind)
            return (time.perf_counter() - t0) * 1e6 / args.chain

        failed = set()
        for case in cases:  # warm-up (the graph sessions capture here) and a correctness check
            try:
                for _ in range(args.warmup):
                    run_case(case)
                y = outs[(case[0], case[2])][0].numpy().astype(np.float32)[0]
                if case[1] == 0.0 and not np.allclose(y, reference, rtol=2e-2, atol=2e-2 * np.abs(reference).max()):
                    raise RuntimeError(f"dense result differs: max error {np.abs(y - reference).max()}")
            except Exception as e:  # noqa: BLE001
                print(f"# {k}x{n} {case[0]} s={case[1]} {case[2]}: failed: {e}", flush=True)
                failed.add(case)
        cases = [c for c in cases if c not in failed]
        times = {c: [] for c in cases}
        for _ in range(args.reps):
            for case in cases:
                times[case].append(run_case(case))
        for case in cases:
            variant, s, method, value, kept = case
            med = float(np.median(times[case]))
            dense = [c for c in cases if c[0] == "dense" and c[1] == s and c[2] == method]
            dense_med = float(np.median(times[dense[0]])) if dense else float("nan")
            gbs = kept * n * 2 / (med * 1e-6) / 1e9
            rows.append(dict(shape=f"{k}x{n}", variant=variant, sparsity=s, method=method, us=med,
                             p10=float(np.percentile(times[case], 10)), p90=float(np.percentile(times[case], 90)),
                             speedup=dense_med / med, gbs=gbs, kept=kept, groups=groups))
            samples[f"{k}x{n}/{variant}/{s}/{method}"] = [round(t, 3) for t in times[case]]
        print(f"# {k}x{n} done", flush=True)
        del sessions, bindings, outs, w_dev

    lines = [f"# {key}: {value}" for key, value in header.items()]
    lines.append(f"# bandwidth: weight rows read (kept x N x 2 bytes) / median; % of {args.peak_gbs:.0f} GB/s")
    lines.append(f"# targets (speedup vs dense): s=0 >= {TARGETS[0.0]:.2f}, s=0.5 >= 1.8, s=0.65 >= 2.4")
    lines.append("")
    lines.append(f"{'shape':<11} {'method':<6} {'variant':<9} {'s':>5} {'kept':>6} {'us/op':>8} {'p10':>8} "
                 f"{'p90':>8} {'speedup':>8} {'GB/s':>7} {'%peak':>6} {'target':>7}")
    for r in sorted(rows, key=lambda r: (r["shape"], r["method"], r["sparsity"], r["variant"])):
        target = "" if r["variant"] == "dense" else ("ok" if r["speedup"] >= TARGETS[r["sparsity"]] else "MISS")
        lines.append(f"{r['shape']:<11} {r['method']:<6} {r['variant']:<9} {r['sparsity']:>5.2f} {r['kept']:>6} "
                     f"{r['us']:>8.2f} {r['p10']:>8.2f} {r['p90']:>8.2f} {r['speedup']:>8.2f} {r['gbs']:>7.0f} "
                     f"{100 * r['gbs'] / args.peak_gbs:>6.1f} {target:>7}")
    lines.append("")
    lines.append("# samples (us per op, in run order): " + json.dumps(samples))
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print("\n".join(lines[:-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
