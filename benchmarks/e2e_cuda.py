"""End-to-end GPU benchmark: a Llama-3-8B-shape model, dense vs WINA, float16, one run.

Steps, each skipped when its output is already in --work (so a second call can resume):

  1. build   the fused dense model (wina_onnx.fused_llama: ONNX Runtime's fused graph,
             GroupQueryAttention with rotary, (Skip)SimplifiedLayerNormalization, float16,
             random weights drawn on the GPU);
  2. calibrate  the WINA score histograms on the GPU over --calib-windows windows of
             --calib-window random token ids (wina_onnx.calibration.calibrate_model);
  3. optimize   the WINA pass on the fused dense graph, threshold gating, at the first
             sparsity of --sparsities (wina_onnx.optimize.optimize_model);
  4. the other sparsities: the same rewritten graph with the thresholds of that sparsity
             from the same calibration (only the threshold initializers differ from what
             the pass writes at that sparsity, and the weights file is shared);
  5. bench  `wina-onnx bench --device cuda`'s bench_models: CUDA provider, IOBinding, KV
             cache on the GPU, prefill of --prompt-tokens then --decode-tokens single-token
             steps, models interleaved in every repetition, median and IQR.

With --cuda-graph, step 5 runs instead on the static-cache variant of every model
(wina_onnx.fused_llama.write_static_cache_model, written beside each model, weights
shared): GroupQueryAttention with seqlens_k / total_seq_len inputs and one KV buffer
of fixed length bound as past and present, one session per model with the CUDA
provider's CUDA graphs (wina_onnx.bench.bench_static_models): prefill without a graph,
decode steps as graph replays, the same steps node by node in the same session for
comparison, and the greedy tokens of both ways, which must be equal.

  python benchmarks/e2e_cuda.py --work /tmp/e2e --out e2e_cuda.txt
  python benchmarks/e2e_cuda.py --work /tmp/e2e --out e2e_cuda_graphs.txt --cuda-graph
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the models (needs about 2 x 16 GB at 8B)")
    p.add_argument("--out", required=True, help="file for the results (command, environment, table, JSON)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--sparsities", default="0.5,0.4", help="WINA sparsities, comma-separated (default 0.5,0.4)")
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--calib-window", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a functional check only")
    p.add_argument("--generator", choices=["torch-cuda", "numpy"], default="torch-cuda")
    p.add_argument("--cuda-graph", action="store_true",
                   help="static-cache models, decode as CUDA graph replays (needs --device cuda)")
    p.add_argument("--greedy-tokens", type=int, default=16, help="with --cuda-graph: greedy tokens compared")
    p.add_argument("--group", action="store_true",
                   help="also bench every WINA model with its q/k/v and gate/up gates grouped "
                        "(passes.group_gates: one WinaSparseMatMulGroup each, weights file shared)")
    p.add_argument("--stop-after", choices=["optimize"], default=None,
                   help="build, calibrate and optimize only (a later call resumes from --work)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def retarget(wina_model: Path, output: Path, calibration, sparsity: float) -> None:
    """Write the WINA model with every threshold set for `sparsity` (weights file shared)."""
    from wina_onnx import schema

    model = onnx.load(str(wina_model), load_external_data=False)
    gated = {}
    for prop in model.metadata_props:
        if prop.key == schema.META_PREFIX + "gated":
            gated = {g["node"]: g for g in json.loads(prop.value)}
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != schema.OP_TYPE:
            continue
        record = gated[node.name]
        mode = schema.MODE_WINA if record["norm"] else schema.MODE_TEAL
        threshold = calibration.threshold(node.name, mode, sparsity)
        name = node.input[schema.INPUT_THRESHOLD]
        inits[name].CopyFrom(numpy_helper.from_array(np.array([threshold], np.float32), name))
        record["threshold"], record["sparsity"] = threshold, sparsity
    for prop in model.metadata_props:
        if prop.key == schema.META_PREFIX + "gated":
            prop.value = json.dumps(list(gated.values()))
    onnx.save_model(model, str(output))


def write_grouped(wina_model: Path, output: Path) -> str:
    """Write `wina_model` with its gates that share an input grouped (weights file shared)."""
    from wina_onnx.passes import group_shared_inputs

    model = onnx.load(str(wina_model), load_external_data=False)
    report = group_shared_inputs(model, base_dir=str(wina_model.parent))
    onnx.save_model(model, str(output))
    return report.summary()


def graph_lines(result) -> list[str]:
    """The CUDA-graph run's second table: decode with and without graphs, and the greedy check."""
    lines = ["", "same sessions, same steps node by node (gpu_graph_id -1, no CUDA graph):",
             "model              decode ms/token [IQR]  speedup  tokens/s  graph gain  greedy graph == node by node"]
    for m in result.models:
        same = m.greedy_graph == m.greedy_nograph
        lines.append(f"{m.name:<17}  {m.decode_nograph_median:>12.3f} [{m.decode_nograph_iqr:.3f}]  "
                     f"{m.decode_nograph_speedup:>6.3f}x  {1e3 / m.decode_nograph_median:>8.1f}  "
                     f"{m.decode_nograph_median / m.decode_median:>9.3f}x  "
                     f"{'yes' if same else 'NO'} ({len(m.greedy_graph)} tokens)")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python3 benchmarks/e2e_cuda.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.device == "cuda":
        import torch  # noqa: F401  (first: its CUDA 13 libraries are the ones ONNX Runtime's provider loads)
    from wina_onnx import schema
    from wina_onnx.allocation import Allocation
    from wina_onnx.bench import bench_models, bench_static_models
    from wina_onnx.calibration import Calibration, calibrate_model
    from wina_onnx.fused_llama import (LlamaShape, build_fused_llama, node_counts, numpy_generator, torch_generator,
                                       write_static_cache_model)
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig
    from wina_onnx.runtime import CUDA_PROVIDERS

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    shape = LlamaShape(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab)
    timings = {}

    dense = work / "dense" / "model.onnx"
    start = time.perf_counter()
    if not dense.is_file():
        log(f"building the fused dense model ({shape.parameters() / 1e9:.2f} B weights)")
        generator = torch_generator() if args.generator == "torch-cuda" else numpy_generator()
        build_fused_llama(shape, dense.parent, generator=generator)
    timings["build_s"] = time.perf_counter() - start

    providers = CUDA_PROVIDERS if args.device == "cuda" else ["CPUExecutionProvider"]
    calib_path = work / "calibration.npz"
    start = time.perf_counter()
    if calib_path.is_file():
        calibration = Calibration.load(calib_path)
    else:
        log("calibrating on random token ids")
        rng = np.random.default_rng(1)
        ids = rng.integers(0, shape.vocab_size, size=args.calib_windows * args.calib_window, dtype=np.int64)
        calibration = calibrate_model(dense, token_ids=ids, windows=args.calib_windows, window=args.calib_window,
                                      providers=providers, source="random token ids", progress=False)
        calibration.save(calib_path)
    timings["calibrate_s"] = time.perf_counter() - start

    first = work / f"wina{int(round(sparsities[0] * 100))}" / "model.onnx"
    start = time.perf_counter()
    if not first.is_file():
        log(f"WINA pass at sparsity {sparsities[0]} (threshold gating)")
        config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(sparsities[0]),
                            calibration=calibration)
        report = optimize_model(dense, first, config, progress=False)
        log(report.summary().splitlines()[0])
    timings["optimize_s"] = time.perf_counter() - start
    models = {"dense (ORT fused)": dense, f"WINA {sparsities[0]:.0%}": first}
    for s in sparsities[1:]:
        path = first.parent / f"model_s{int(round(s * 100))}.onnx"
        retarget(first, path, calibration, s)
        models[f"WINA {s:.0%}"] = path
    if args.group:
        for name, path in list(models.items()):
            if name.startswith("WINA"):
                grouped = path.with_name(path.stem + "_grouped.onnx")
                log(f"{name} grouped: {write_grouped(path, grouped)}")
                models[f"{name} grouped"] = grouped

    if args.stop_after == "optimize":
        log(f"stopping after the WINA pass; steps (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
        return 0
    if args.cuda_graph:
        if args.device != "cuda":
            raise SystemExit("--cuda-graph needs --device cuda")
        models = {name: write_static_cache_model(path, path.with_name(path.stem + "_static.onnx"))
                  for name, path in models.items()}
    counts = {name: node_counts(path) for name, path in models.items()}
    log("benchmarking " + ", ".join(models))
    if args.cuda_graph:
        result = bench_static_models(models, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                                     repeats=args.repeats, greedy_tokens=args.greedy_tokens, progress=True)
    else:
        result = bench_models(models, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                              repeats=args.repeats, device=args.device, progress=True)
    lines = [
        f"# command: {command}",
        f"# date: {result.environment.get('date')}",
        f"# device: {result.environment.get('gpu', args.device)}",
        f"# onnxruntime: {result.environment.get('onnxruntime')}, python {result.environment.get('python')}",
        f"# model: Llama shape {json.dumps(shape.config_json())}",
        f"# calibration: {args.calib_windows} windows of {args.calib_window} random token ids, on the {args.device}",
        f"# steps (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}",
        "# nodes: " + "; ".join(f"{name}: {c['total']} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()) if k != 'total')})"
                                 for name, c in counts.items()),
        "",
        result.table(),
        *(graph_lines(result) if args.cuda_graph else []),
        "",
        json.dumps({"result": result.to_dict(), "node_counts": counts}, indent=1),
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print("\n".join(lines[:10]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
