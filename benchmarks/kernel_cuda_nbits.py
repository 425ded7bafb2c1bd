"""Kernel microbenchmark on the GPU: WinaSparseMatMulNBits vs ONNX Runtime's MatMulNBits (int4)
vs ORT's float16 MatMul, one token, float16 activations, block 32, CUDA graphs.

ONNX Runtime's CUDAExecutionProvider, in one run, for weights K x N in {4096x4096,
4096x14336, 14336x4096}. Each model is a chain of --chain (32) nodes that all read the same
one-token X and each its own weight; G distinct weights (at least --mib MiB of the variant's
weight bytes, past the H200's 60 MiB L2) so that every node streams from DRAM, as in a decode
step. The 4-bit variants use the same random codes and float16 block scales (symmetric: no zero
points, as the GenAI builder writes them): ours feature-major, MatMulNBits column-major
(wina_onnx.passes.nbits.column_major). Sessions (CPU fallback disabled):

  fp16         chain of MatMul on float16 weights (the dense float baseline)
  matmul_nbits chain of MatMulNBits (com.microsoft), bits 4, block 32 (the dense int4 baseline)
  threshold    chain of WinaSparseMatMulNBits(gating="threshold"), threshold a device input
  topk         chain of WinaSparseMatMulNBits(gating="topk"),      k a device input

score_scale is each weight's dequantized row norms (WINA); the threshold for sparsity s is the s
quantile of X's scores, k = K - round(s K). Weights, X and the gate are device OrtValues bound
through IOBinding (MatMulNBits takes its weights as initializers if ORT refuses them as inputs;
the header says which). Each case runs with the CUDA provider's CUDA graphs (one replay per Run),
repetitions interleaved over the cases; the table gives medians per op, the speedup against
MatMulNBits and against fp16 MatMul of the same run, and the bandwidth of the bytes actually
read (ours: kept rows' codes + every block's scales; MatMulNBits: all codes + scales; fp16: the
weight) against a read bandwidth measured in the same run (torch.sum over 2 GiB of float16).

  python benchmarks/kernel_cuda_nbits.py --out benchmarks/results/kernel_cuda_nbits_h200.txt
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
SPARSITIES = (0.0, 0.25, 0.4, 0.5, 0.65)
TARGETS = {0.0: 1.0, 0.5: 2.0, 0.65: 2.5}  # required speedup vs MatMulNBits (issue #18)
BLOCK = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file for the raw results (header, table, JSON samples)")
    p.add_argument("--library", default=None, help="op library (default: WINA_ONNX_LIBRARY or the package's)")
    p.add_argument("--chain", type=int, default=32, help="nodes per model (default 32)")
    p.add_argument("--reps", type=int, default=100, help="interleaved repetitions (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per case first (default 5)")
    p.add_argument("--mib", type=int, default=512, help="distinct weight bytes per variant and shape, MiB (default 512)")
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


def chain_model(variant: str, k: int, n: int, chain: int, groups: int, nbits_weights=None):
    """X [1, K] -> chain nodes, node i reading weight set i % groups (graph inputs, or for
    MatMulNBits with nbits_weights given, initializers)."""
    from wina_onnx import schema

    f16 = TensorProto.FLOAT16
    blocks = -(-k // BLOCK)
    inputs = [helper.make_tensor_value_info("X", f16, [1, k])]
    inits, nodes, outputs = [], [], []
    for g in range(groups):
        if variant == "fp16":
            inputs.append(helper.make_tensor_value_info(f"W{g}", f16, [k, n]))
        elif variant == "matmul_nbits":
            if nbits_weights is not None:
                b, s = nbits_weights[g]
                inits += [numpy_helper.from_array(b, f"B{g}"), numpy_helper.from_array(s, f"S{g}")]
            else:
                inputs += [helper.make_tensor_value_info(f"B{g}", TensorProto.UINT8, [n, blocks, BLOCK // 2]),
                           helper.make_tensor_value_info(f"S{g}", f16, [n * blocks])]
        else:
            inputs += [helper.make_tensor_value_info(f"B{g}", TensorProto.UINT8, [k, -(-n // 2)]),
                       helper.make_tensor_value_info(f"S{g}", f16, [blocks, n])]
    if variant in ("threshold", "topk"):
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, [k]))
        inputs.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, []) if variant == "threshold"
                      else helper.make_tensor_value_info("KK", TensorProto.INT64, []))
    for i in range(chain):
        g, y = i % groups, f"Y{i}"
        if variant == "fp16":
            nodes.append(helper.make_node("MatMul", ["X", f"W{g}"], [y], name=f"mm{i}"))
        elif variant == "matmul_nbits":
            nodes.append(helper.make_node("MatMulNBits", ["X", f"B{g}", f"S{g}"], [y], name=f"q4_{i}",
                                          domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK))
        else:
            gate = ["R", "T"] if variant == "threshold" else ["R", "", "KK"]
            nodes.append(helper.make_node(schema.NBITS_OP_TYPE, ["X", f"B{g}", f"S{g}", "", *gate], [y],
                                          name=f"wina{i}", domain=schema.DOMAIN, gating=variant, K=k, N=n, bits=4,
                                          block_size=BLOCK))
        outputs.append(helper.make_tensor_value_info(y, f16, [1, n]))
    graph = helper.make_graph(nodes, f"chain_{variant}", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.wina", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def main(argv=None):
    args = parse_args(argv)
    ort = load_ort()
    from wina_onnx.passes import nbits

    peak_gbs = measure_read_gbs()
    library = args.library or os.environ.get("WINA_ONNX_LIBRARY")
    if library is None:
        import wina_onnx

        library = wina_onnx.get_library_path()
    shapes = SHAPES if not args.shapes else tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    rng = np.random.default_rng(0)

    def make_session(model):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        options.register_custom_ops_library(library)
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])

    header = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "chain": args.chain,
        "reps": args.reps,
        "library": os.path.basename(library),
        "read bandwidth": f"{peak_gbs:.0f} GB/s, measured in this run: torch.sum over 2 GiB of float16, median of 20",
    }
    rows, samples, notes = [], {}, []
    dev = lambda a: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0)  # noqa: E731
    for k, n in shapes:
        blocks, half = -(-k // BLOCK), -(-n // 2)
        codes = rng.integers(0, 256, (k, half), dtype=np.uint8)
        scales = (rng.uniform(0.5, 1.5, (blocks, n)) * (0.02 / 4.6)).astype(np.float16)
        weight = nbits.FeatureMajor(codes, scales, None, k, n, BLOCK)
        score = weight.row_norms()
        b_cm, s_cm, _ = nbits.column_major(weight)
        x = rng.standard_normal((1, k), dtype=np.float32).astype(np.float16)
        scores = np.abs(x[0].astype(np.float32)) * score
        reference = (x.astype(np.float32) @ weight.dequantize())[0]
        nbits_bytes = codes.nbytes + scales.nbytes
        bytes_of = {"fp16": k * n * 2, "matmul_nbits": nbits_bytes, "threshold": nbits_bytes, "topk": nbits_bytes}
        groups = {v: max(2, min(args.chain, -(-args.mib * 2**20 // b))) for v, b in bytes_of.items()}
        x_dev, r_dev = dev(x), dev(score)
        t_dev, k_dev = dev(np.array(-1.0, np.float32)), dev(np.array(k, np.int64))

        sessions, bindings, outs, keep_alive = {}, {}, {}, []
        w16 = weight.dequantize().astype(np.float16)
        ours = {}  # the threshold and top-k chains read the same device copies
        for g in range(groups["threshold"]):
            ours[f"B{g}"], ours[f"S{g}"] = dev(codes), dev(scales)
        for variant in ("fp16", "matmul_nbits", "threshold", "topk"):
            g_count = groups[variant]
            feeds = {"X": x_dev}
            if variant == "fp16":
                feeds.update({f"W{g}": dev(w16) for g in range(g_count)})
            elif variant == "matmul_nbits":
                feeds.update({f"B{g}": dev(b_cm) for g in range(g_count)})
                feeds.update({f"S{g}": dev(s_cm) for g in range(g_count)})
            else:
                feeds.update(ours)
                feeds["R"] = r_dev
                feeds["T" if variant == "threshold" else "KK"] = t_dev if variant == "threshold" else k_dev
            keep_alive.append(feeds)
            try:
                sess = make_session(chain_model(variant, k, n, args.chain, g_count))
                bind = sess.io_binding()
                for name, value in feeds.items():
                    bind.bind_ortvalue_input(name, value)
                ys = [ort.OrtValue.ortvalue_from_shape_and_type([1, n], np.float16, "cuda", 0)
                      for _ in range(args.chain)]
                for i, yv in enumerate(ys):
                    bind.bind_ortvalue_output(f"Y{i}", yv)
                sess.run_with_iobinding(bind)
            except Exception as e:  # noqa: BLE001 (MatMulNBits may want its weights as initializers)
                if variant != "matmul_nbits":
                    print(f"# {k}x{n} {variant}: session failed: {e}", flush=True)
                    continue
                notes.append(f"{k}x{n} matmul_nbits: weights as initializers ({str(e).splitlines()[0][:120]})")
                sess = make_session(chain_model(variant, k, n, args.chain, g_count,
                                                nbits_weights=[(b_cm, s_cm)] * g_count))
                bind = sess.io_binding()
                bind.bind_ortvalue_input("X", x_dev)
                ys = [ort.OrtValue.ortvalue_from_shape_and_type([1, n], np.float16, "cuda", 0)
                      for _ in range(args.chain)]
                for i, yv in enumerate(ys):
                    bind.bind_ortvalue_output(f"Y{i}", yv)
            sessions[variant], bindings[variant], outs[variant] = sess, bind, ys

        cases = []
        for s in SPARSITIES:
            thr = -1.0 if s == 0.0 else float(np.quantile(scores, s))
            kk = k - int(round(s * k))
            kept_thr = int((scores > np.float32(thr)).sum())
            for variant in ("fp16", "matmul_nbits"):
                if s == 0.0:
                    cases.append((variant, s, None, k))
            cases.append(("threshold", s, thr, kept_thr))
            cases.append(("topk", s, kk, kk))
        cases = [c for c in cases if c[0] in sessions]

        def run_case(case):
            variant, s, value, _ = case
            if variant == "threshold":
                t_dev.update_inplace(np.array(value, np.float32))
            elif variant == "topk":
                k_dev.update_inplace(np.array(value, np.int64))
            sess, bind = sessions[variant], bindings[variant]
            t0 = time.perf_counter()
            sess.run_with_iobinding(bind)
            return (time.perf_counter() - t0) * 1e6 / args.chain

        failed = set()
        for case in cases:  # warm-up (CUDA graph capture) and a check of the dense result
            try:
                for _ in range(args.warmup):
                    run_case(case)
                y = outs[case[0]][0].numpy().astype(np.float32)[0]
                if case[1] == 0.0 and not np.allclose(y, reference, rtol=2e-2, atol=2e-2 * np.abs(reference).max()):
                    raise RuntimeError(f"dense result differs: max error {np.abs(y - reference).max()}")
            except Exception as e:  # noqa: BLE001
                print(f"# {k}x{n} {case[0]} s={case[1]}: failed: {e}", flush=True)
                failed.add(case)
        cases = [c for c in cases if c not in failed]
        times = {c: [] for c in cases}
        for _ in range(args.reps):
            for case in cases:
                times[case].append(run_case(case))
        med = {c: float(np.median(t)) for c, t in times.items()}
        base = {v: next((med[c] for c in cases if c[0] == v), float("nan")) for v in ("fp16", "matmul_nbits")}
        for case in cases:
            variant, s, value, kept = case
            read = {"fp16": k * n * 2, "matmul_nbits": nbits_bytes}.get(variant, kept * half + scales.nbytes)
            rows.append(dict(shape=f"{k}x{n}", variant=variant, sparsity=s, kept=kept, us=med[case],
                             p10=float(np.percentile(times[case], 10)), p90=float(np.percentile(times[case], 90)),
                             vs_nbits=base["matmul_nbits"] / med[case], vs_fp16=base["fp16"] / med[case],
                             mb=read / 1e6, gbs=read / (med[case] * 1e-6) / 1e9, groups=groups[variant]))
            samples[f"{k}x{n}/{variant}/{s}"] = [round(t, 3) for t in times[case]]
        print(f"# {k}x{n} done", flush=True)
        del sessions, bindings, outs, keep_alive, ours

    lines = [f"# {key}: {value}" for key, value in header.items()]
    lines += [f"# note: {note}" for note in notes]
    lines.append("# method: CUDA graphs (enable_cuda_graph), one replay of the chain per Run; us per op = Run / chain")
    lines.append("# MB read: ours kept x ceil(N/2) codes + all block scales; MatMulNBits all codes + scales; fp16 K x N x 2")
    lines.append("# targets (ours vs MatMulNBits): s=0 >= 1.0, s=0.5 >= 2.0, s=0.65 >= 2.5")
    lines.append("")
    lines.append(f"{'shape':<11} {'variant':<12} {'s':>5} {'kept':>6} {'us/op':>8} {'p10':>8} {'p90':>8} "
                 f"{'xNBits':>7} {'xfp16':>6} {'MB':>7} {'GB/s':>6} {'%peak':>6} {'target':>7}")
    order = {"fp16": 0, "matmul_nbits": 1, "threshold": 2, "topk": 3}
    for r in sorted(rows, key=lambda r: (r["shape"], order[r["variant"]], r["sparsity"])):
        target = ""
        if r["variant"] in ("threshold", "topk") and r["sparsity"] in TARGETS:
            target = "ok" if r["vs_nbits"] >= TARGETS[r["sparsity"]] else "MISS"
        lines.append(f"{r['shape']:<11} {r['variant']:<12} {r['sparsity']:>5.2f} {r['kept']:>6} {r['us']:>8.2f} "
                     f"{r['p10']:>8.2f} {r['p90']:>8.2f} {r['vs_nbits']:>7.2f} {r['vs_fp16']:>6.2f} {r['mb']:>7.2f} "
                     f"{r['gbs']:>6.0f} {100 * r['gbs'] / peak_gbs:>6.1f} {target:>7}")
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
