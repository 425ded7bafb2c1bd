"""The grouped op on the GPU: q/k/v and gate/up of a Llama-3-8B layer, one token, float16.

For each set of weights that read the same X (qkv: 4096x4096, 4096x1024, 4096x1024;
gate_up: 4096x14336 twice), three models of --chain copies of the set, each copy reading
its own weight buffers (>= 512 MiB in all, so rows stream from DRAM as in a decode step):

  dense    one MatMul per weight (ONNX Runtime's)
  single   one WinaSparseMatMul (threshold) per weight, each its own scale and threshold
  group    one WinaSparseMatMulGroup per set: the same outputs, one scoring pass, one launch

The thresholds are the s quantiles of each weight's own scores of X, so every weight skips
the same share of its rows in single and group. ONNX Runtime's CUDA provider with CUDA graphs
(one replay per Run), IOBinding, CPU fallback off; repetitions interleaved over the cases;
the table gives medians per set (us), speedups against dense and against single of the same
sparsity, and the bandwidth counting the rows read.

  python benchmarks/kernel_cuda_group.py --out benchmarks/results/kernel_cuda_group.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
from kernel_cuda import device_description, load_ort, measure_read_gbs
from onnx import TensorProto, helper

SETS = {"qkv": (4096, (4096, 1024, 1024)), "gate_up": (4096, (14336, 14336))}
SPARSITIES = (0.0, 0.4, 0.5, 0.65)
VARIANTS = ("dense", "single", "group")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file for the raw results")
    p.add_argument("--library", default=None, help="op library (default: WINA_ONNX_LIBRARY or the package's)")
    p.add_argument("--chain", type=int, default=16, help="copies of the set per model (default 16)")
    p.add_argument("--reps", type=int, default=200, help="interleaved repetitions (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per case first (default 5)")
    p.add_argument("--mib", type=int, default=512, help="distinct weight bytes per set, MiB (default 512)")
    p.add_argument("--peak-gbs", default="measure", help="read bandwidth GB/s, or 'measure' (default)")
    return p.parse_args(argv)


def set_model(k: int, ns: tuple[int, ...], chain: int, copies: int, variant: str):
    """X [1, K] -> `chain` copies of the set; copy i reads weights W{i % copies}_{s}; outputs Y{i}_{s}."""
    f16 = TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info("X", f16, [1, k])]
    for c in range(copies):
        inputs += [helper.make_tensor_value_info(f"W{c}_{s}", f16, [k, n]) for s, n in enumerate(ns)]
    if variant == "group":  # stacked scales [S, K] and thresholds [S]
        inputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, [len(ns), k]))
        inputs.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, [len(ns)]))
    elif variant == "single":  # each weight its own scale [K] and threshold []
        inputs += [helper.make_tensor_value_info(f"S{s}", TensorProto.FLOAT, [k]) for s in range(len(ns))]
        inputs += [helper.make_tensor_value_info(f"T{s}", TensorProto.FLOAT, []) for s in range(len(ns))]
    nodes, outputs = [], []
    for i in range(chain):
        c = i % copies
        ys = [f"Y{i}_{s}" for s in range(len(ns))]
        if variant == "group":
            nodes.append(helper.make_node("WinaSparseMatMulGroup", ["X", "S", "T", *[f"W{c}_{s}" for s in range(len(ns))]],
                                          ys, name=f"group{i}", domain="ai.wina"))
        for s, n in enumerate(ns):
            if variant == "dense":
                nodes.append(helper.make_node("MatMul", ["X", f"W{c}_{s}"], [ys[s]], name=f"mm{i}_{s}"))
            elif variant == "single":
                nodes.append(helper.make_node("WinaSparseMatMul", ["X", f"W{c}_{s}", f"S{s}", f"T{s}"], [ys[s]],
                                              name=f"wina{i}_{s}", domain="ai.wina", gating="threshold"))
            outputs.append(helper.make_tensor_value_info(ys[s], f16, [1, n]))
    graph = helper.make_graph(nodes, f"set_{variant}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.wina", 1)])
    model.ir_version = 10
    return model


def main(argv=None):
    args = parse_args(argv)
    ort = load_ort()
    if args.peak_gbs == "measure":
        peak, peak_source = measure_read_gbs(), "measured in this run: torch.sum over 2 GiB of float16, median of 20"
    else:
        peak, peak_source = float(args.peak_gbs), "given (--peak-gbs)"
    library = args.library or os.environ.get("WINA_ONNX_LIBRARY")
    if library is None:
        import wina_onnx

        library = wina_onnx.get_library_path()
    header = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "chain": args.chain,
        "reps": args.reps,
        "read bandwidth": f"{peak:.0f} GB/s, {peak_source}",
    }
    rng = np.random.default_rng(0)
    dev = lambda a: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0)  # noqa: E731
    rows, samples = [], {}
    for name, (k, ns) in SETS.items():
        set_bytes = k * sum(ns) * 2
        copies = max(2, min(args.chain, -(-args.mib * 2**20 // set_bytes)))
        weights = [(rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float16) for n in ns]
        scale = np.stack([np.linalg.norm(w.astype(np.float32), axis=1) for w in weights]).astype(np.float32)
        x = rng.standard_normal((1, k), dtype=np.float32).astype(np.float16)
        scores = np.abs(x[0].astype(np.float32))[None, :] * scale
        w_dev = {f"W{c}_{s}": dev(w) for c in range(copies) for s, w in enumerate(weights)}
        x_dev, s_dev, t_dev = dev(x), dev(scale), dev(np.full(len(ns), -1.0, np.float32))
        s_devs = [dev(scale[s]) for s in range(len(ns))]
        t_devs = [dev(np.array(-1.0, np.float32)) for _ in ns]
        expected = [(x.astype(np.float32) @ w.astype(np.float32))[0] for w in weights]
        sessions = {}
        for variant in VARIANTS:
            options = ort.SessionOptions()
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            options.register_custom_ops_library(library)
            sess = ort.InferenceSession(set_model(k, ns, args.chain, copies, variant).SerializeToString(), options,
                                        providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
            bind = sess.io_binding()
            bind.bind_ortvalue_input("X", x_dev)
            for key, value in w_dev.items():
                bind.bind_ortvalue_input(key, value)
            if variant == "group":
                bind.bind_ortvalue_input("S", s_dev)
                bind.bind_ortvalue_input("T", t_dev)
            elif variant == "single":
                for s in range(len(ns)):
                    bind.bind_ortvalue_input(f"S{s}", s_devs[s])
                    bind.bind_ortvalue_input(f"T{s}", t_devs[s])
            ys = {}
            for i in range(args.chain):
                for s, n in enumerate(ns):
                    ys[(i, s)] = ort.OrtValue.ortvalue_from_shape_and_type([1, n], np.float16, "cuda", 0)
                    bind.bind_ortvalue_output(f"Y{i}_{s}", ys[(i, s)])
            sessions[variant] = (sess, bind, ys)

        cases = [(v, sp) for sp in SPARSITIES for v in VARIANTS]
        thresholds = {sp: np.array([np.quantile(scores[s], sp) if sp > 0 else -1.0 for s in range(len(ns))],
                                   dtype=np.float32) for sp in SPARSITIES}
        kept = {sp: [int((scores[s] > thresholds[sp][s]).sum()) for s in range(len(ns))] for sp in SPARSITIES}

        def run_case(case):
            variant, sp = case
            if variant == "group":
                t_dev.update_inplace(thresholds[sp])
            elif variant == "single":
                for s in range(len(ns)):
                    t_devs[s].update_inplace(np.array(thresholds[sp][s], np.float32))
            sess, bind, _ = sessions[variant]
            t0 = time.perf_counter()
            sess.run_with_iobinding(bind)
            return (time.perf_counter() - t0) * 1e6 / args.chain

        for case in cases:  # warm-up (capture) and a check of every output of the last copy
            for _ in range(args.warmup):
                run_case(case)
            _, _, ys = sessions[case[0]]
            for s in range(len(ns)):
                y = ys[(args.chain - 1, s)].numpy().astype(np.float32)[0]
                if case[0] == "dense" or case[1] == 0.0:
                    ref = expected[s]
                else:
                    mask = scores[s] > thresholds[case[1]][s]
                    ref = (np.where(mask, x[0].astype(np.float32), 0) @ weights[s].astype(np.float32))
                err = float(np.abs(y - ref).max())
                if err > 2e-2 * max(float(np.abs(ref).max()), 1e-3):
                    raise SystemExit(f"{name} {case}: output {s} wrong (max error {err})")
        times = {c: [] for c in cases}
        for _ in range(args.reps):
            for case in cases:
                times[case].append(run_case(case))
        for case in cases:
            variant, sp = case
            med = float(np.median(times[case]))
            dense = float(np.median(times[("dense", sp)]))
            single = float(np.median(times[("single", sp)]))
            read = sum(kk * n * 2 for kk, n in zip(kept[sp] if variant != "dense" else [k] * len(ns), ns))
            rows.append(dict(set=name, variant=variant, sparsity=sp, us=med, vs_dense=dense / med,
                             vs_single=single / med, gbs=read / (med * 1e-6) / 1e9,
                             p10=float(np.percentile(times[case], 10)), p90=float(np.percentile(times[case], 90))))
            samples[f"{name}/{variant}/{sp}"] = [round(t, 3) for t in times[case]]
        print(f"# {name} done", flush=True)
        del sessions, w_dev

    lines = [f"# {key}: {value}" for key, value in header.items()]
    lines.append("# us per set of weights (median), speedup vs dense and vs single of the same sparsity; "
                 f"GB/s of rows read, % of {peak:.0f}")
    lines.append("")
    lines.append(f"{'set':<8} {'variant':<7} {'s':>5} {'us/set':>8} {'p10':>8} {'p90':>8} {'vs dense':>9} "
                 f"{'vs single':>10} {'GB/s':>7} {'%peak':>6}")
    for r in rows:
        lines.append(f"{r['set']:<8} {r['variant']:<7} {r['sparsity']:>5.2f} {r['us']:>8.2f} {r['p10']:>8.2f} "
                     f"{r['p90']:>8.2f} {r['vs_dense']:>9.2f} {r['vs_single']:>10.2f} {r['gbs']:>7.0f} "
                     f"{100 * r['gbs'] / peak:>6.1f}")
    lines.append("")
    lines.append("# samples (us per set, in run order): " + json.dumps(samples))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
