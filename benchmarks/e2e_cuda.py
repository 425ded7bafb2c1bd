"""End-to-end GPU benchmark: a Llama-3-8B-shape model, dense vs WINA, float16 or int4, one run.

Steps, each skipped when its output is already in --work (so a second call can resume):

  1. build   the fused dense model (wina_onnx.testing.fused_llama: ONNX Runtime's fused graph,
             GroupQueryAttention with rotary, (Skip)SimplifiedLayerNormalization, float16,
             random weights drawn on the GPU, or on the CPU with --generator torch-cpu);
  2. calibrate  the WINA score histograms over --calib-windows windows of
             --calib-window random token ids (wina_onnx.calibrate.calibration.calibrate_model), on
             the GPU, or with --calib-device cpu on ONNX Runtime's CPU provider;
  3. optimize   the WINA pass on the fused dense graph, threshold gating, at the first
             sparsity of --sparsities (wina_onnx.optimize.optimize_model);
  4. the other sparsities: the same rewritten graph with the thresholds of that sparsity
             from the same calibration (only the threshold initializers differ from what
             the pass writes at that sparsity, and the weights file is shared);
  5. bench  `wina-onnx bench --device cuda`'s bench_models: CUDA provider, IOBinding, KV
             cache on the GPU, prefill of --prompt-tokens then --decode-tokens single-token
             steps, models interleaved in every repetition, median and IQR.

With --cuda-graph, step 5 runs instead on the static-cache variant of every model
(wina_onnx.testing.fused_llama.write_static_cache_model, written beside each model, weights
shared): GroupQueryAttention with seqlens_k / total_seq_len inputs and one KV buffer
of fixed length bound as past and present, one session per model with the CUDA
provider's CUDA graphs (wina_onnx.evaluation.bench.bench_static_models): prefill without a graph,
decode steps as graph replays, the same steps node by node in the same session for
comparison, and the greedy tokens of both ways, which must be equal.

With --int4, two families are built, calibrated and gated, and benched together:
int4 (the GenAI builder's CUDA int4 graph: MatMulNBits projections and LM head, q/k/v
packed, block 32; the pass makes WinaSparseMatMulNBits of every projection) dense and
at every sparsity of --sparsities, the first model of the table; and float16 dense and
WINA at --fp16-sparsity with its q/k/v and gate/up gates grouped. --part int4 or fp16
with --stop-after prepares one family alone (two processes can prepare both at once).

  python benchmarks/e2e_cuda.py --work /tmp/e2e --out e2e_cuda.txt
  python benchmarks/e2e_cuda.py --work /tmp/e2e --out e2e_cuda_graphs.txt --cuda-graph
  python benchmarks/e2e_cuda.py --work /tmp/e2e --out e2e_cuda_int4.txt --cuda-graph --int4
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

STEPS = ("build", "calibrate", "optimize")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the models (needs about 2 x 16 GB at 8B)")
    p.add_argument("--out", help="file for the results (command, environment, table, JSON); "
                                 "required unless --stop-after")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--sparsities", default="0.5,0.4", help="WINA sparsities, comma-separated (default 0.5,0.4)")
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--calib-window", type=int, default=128)
    p.add_argument("--calib-device", choices=["cuda", "cpu"], default=None,
                   help="where calibration runs (default: --device)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for calibration on the CPU")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a functional check only")
    p.add_argument("--generator", choices=["torch-cuda", "torch-cpu", "numpy"], default="torch-cuda")
    p.add_argument("--cuda-graph", action="store_true",
                   help="static-cache models, decode as CUDA graph replays (needs --device cuda)")
    p.add_argument("--greedy-tokens", type=int, default=16, help="with --cuda-graph: greedy tokens compared")
    p.add_argument("--group", action="store_true",
                   help="also bench every WINA model with its q/k/v and gate/up gates grouped "
                        "(passes.group_gates: one WinaSparseMatMulGroup each, weights file shared)")
    p.add_argument("--int4", action="store_true",
                   help="int4 dense and WINA at --sparsities, beside float16 dense and WINA at --fp16-sparsity "
                        "grouped")
    p.add_argument("--fp16-sparsity", type=float, default=0.5, help="with --int4: the float16 WINA model's")
    p.add_argument("--part", choices=["all", "int4", "fp16"], default="all",
                   help="with --int4 and --stop-after: prepare this family only")
    p.add_argument("--stop-after", choices=STEPS, default=None,
                   help="stop after this step (a later call resumes from --work)")
    args = p.parse_args(argv)
    if args.stop_after is None and not args.out:
        p.error("--out is required unless --stop-after is given")
    if args.part != "all" and (not args.int4 or args.stop_after is None):
        p.error("--part needs --int4 and --stop-after (the benchmark runs every family)")
    return args


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def retarget(wina_model: Path, output: Path, calibration, sparsity: float) -> None:
    """Write the WINA model with every threshold set for `sparsity` (weights file shared)."""
    from wina_onnx import schema

    threshold_input = {schema.OP_TYPE: schema.INPUT_THRESHOLD, schema.NBITS_OP_TYPE: schema.NBITS_INPUT_THRESHOLD}
    model = onnx.load(str(wina_model), load_external_data=False)
    gated = {}
    for prop in model.metadata_props:
        if prop.key == schema.META_PREFIX + "gated":
            gated = {g["node"]: g for g in json.loads(prop.value)}
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.domain != schema.DOMAIN or node.op_type not in threshold_input:
            continue
        record = gated[node.name]
        mode = schema.MODE_WINA if record["norm"] else schema.MODE_TEAL
        threshold = calibration.threshold(node.name, mode, sparsity)
        name = node.input[threshold_input[node.op_type]]
        inits[name].CopyFrom(numpy_helper.from_array(np.array(threshold, np.float32).reshape(inits[name].dims), name))
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


@dataclass
class Family:
    """One dense model, its calibration, and the WINA models made from it."""

    key: str  # "fp16" (the folder names of the float16 benchmark) or "int4"
    label: str  # prefix of the table's names ("" or "int4 ")
    weights: str  # fused_llama weight format
    sparsities: list[float]
    grouped_only: bool = False  # bench only the grouped WINA models (q/k/v, gate/up)
    group: bool = False
    timings: dict = field(default_factory=dict)

    def folder(self, work: Path, name: str) -> Path:
        return work / (name if self.key == "fp16" else f"{self.key}-{name}")

    def dense(self, work: Path) -> Path:
        return self.folder(work, "dense") / "model.onnx"

    def calibration(self, work: Path) -> Path:
        return work / ("calibration.npz" if self.key == "fp16" else f"{self.key}-calibration.npz")

    def first(self, work: Path) -> Path:
        return self.folder(work, f"wina{int(round(self.sparsities[0] * 100))}") / "model.onnx"

    def steps_file(self, work: Path) -> Path:
        return work / f"{self.key}-steps.json"


def families(args) -> list[Family]:
    sparsities = [float(s) for s in args.sparsities.split(",")]
    if not args.int4:
        return [Family("fp16", "", "float16", sparsities, group=args.group)]
    out = [Family("int4", "int4 ", "int4", sparsities),
           Family("fp16", "fp16 ", "float16", [args.fp16_sparsity], grouped_only=True, group=True)]
    return [f for f in out if args.part in ("all", f.key)]


def prepare(family: Family, args, shape, work: Path) -> dict[str, Path] | None:
    """Build, calibrate and gate `family` (each step skipped when its output exists); its models by name.

    None when --stop-after ends the run first.
    """
    from wina_onnx import schema
    from wina_onnx.passes.allocation import Allocation
    from wina_onnx.calibrate.calibration import Calibration, calibrate_model
    from wina_onnx.testing.fused_llama import (build_fused_llama, numpy_code_generator, numpy_generator,
                                       torch_code_generator, torch_generator)
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig
    from wina_onnx.runtime.session import CUDA_PROVIDERS

    steps_file = family.steps_file(work)
    timings = json.loads(steps_file.read_text()) if steps_file.is_file() else {}

    def done(step: str, seconds: float) -> None:
        if seconds > 1.0 or step not in timings:  # a skipped step keeps the time it took when it ran
            timings[step] = seconds
            steps_file.write_text(json.dumps(timings))

    dense = family.dense(work)
    start = time.perf_counter()
    if not dense.is_file():
        log(f"{family.key}: building the fused dense model ({shape.parameters() / 1e9:.2f} B weights, "
            f"{family.weights})")
        if args.generator == "numpy":
            generator, codes = numpy_generator(), numpy_code_generator()
        else:
            device = "cuda" if args.generator == "torch-cuda" else "cpu"
            generator, codes = torch_generator(device=device), torch_code_generator(device=device)
        build_fused_llama(shape, dense.parent, generator=generator, code_generator=codes, weights=family.weights)
    done("build_s", time.perf_counter() - start)
    if args.stop_after == "build":
        family.timings = timings
        return None

    calib_device = args.calib_device or args.device
    providers = CUDA_PROVIDERS if calib_device == "cuda" else ["CPUExecutionProvider"]
    calib_path = family.calibration(work)
    start = time.perf_counter()
    if calib_path.is_file():
        calibration = Calibration.load(calib_path)
    else:
        log(f"{family.key}: calibrating on random token ids ({calib_device})")
        rng = np.random.default_rng(1)
        ids = rng.integers(0, shape.vocab_size, size=args.calib_windows * args.calib_window, dtype=np.int64)
        calibration = calibrate_model(dense, token_ids=ids, windows=args.calib_windows, window=args.calib_window,
                                      providers=providers, threads=args.threads, source="random token ids",
                                      progress=False)
        calibration.save(calib_path)
    done("calibrate_s", time.perf_counter() - start)
    if args.stop_after == "calibrate":
        family.timings = timings
        return None

    first = family.first(work)
    start = time.perf_counter()
    if not first.is_file():
        log(f"{family.key}: WINA pass at sparsity {family.sparsities[0]} (threshold gating)")
        config = GateConfig(gating=schema.GATING_THRESHOLD, allocation=Allocation.uniform(family.sparsities[0]),
                            calibration=calibration, group=False)  # grouped separately (write_grouped)
        report = optimize_model(dense, first, config, progress=False)
        log(f"{family.key}: " + report.summary().splitlines()[0])
    done("optimize_s", time.perf_counter() - start)
    family.timings = timings

    wina = {f"{family.label}WINA {family.sparsities[0]:.0%}": first}
    for s in family.sparsities[1:]:
        path = first.parent / f"model_s{int(round(s * 100))}.onnx"
        retarget(first, path, calibration, s)
        wina[f"{family.label}WINA {s:.0%}"] = path
    grouped = {}
    if family.group:
        for name, path in wina.items():
            out = path.with_name(path.stem + "_grouped.onnx")
            log(f"{name} grouped: {write_grouped(path, out)}")
            grouped[f"{name} grouped"] = out
    models = {f"{family.label}dense" if family.label else "dense (ORT fused)": dense}
    models.update(grouped if family.grouped_only else {**wina, **grouped})
    if args.stop_after == "optimize":
        return None
    return models


def ratio_lines(result, pairs: list[tuple[str, str, float | None]]) -> list[str]:
    """Decode speed-up and prefill change of each (model, baseline, decode target) pair."""
    by_name = {m.name: m for m in result.models}
    lines = ["", "model vs baseline: decode speed-up (target), prefill time change (target: at most +15%)"]
    for name, base, target in pairs:
        if name not in by_name or base not in by_name:
            continue
        m, b = by_name[name], by_name[base]
        speedup = b.decode_median / m.decode_median
        prefill = m.prefill_median / b.prefill_median - 1.0
        goal = f" (target {target:.2f}x: {'met' if speedup >= target else 'NOT met'})" if target else ""
        lines.append(f"{name} vs {base}: decode {speedup:.3f}x{goal}, prefill {prefill:+.1%}"
                     + (f" ({'met' if prefill <= 0.15 else 'NOT met'})" if target else ""))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python3 benchmarks/e2e_cuda.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.device == "cuda":
        import torch  # noqa: F401  (first: its CUDA 13 libraries are the ones ONNX Runtime's provider loads)
    from wina_onnx.evaluation.bench import bench_models, bench_static_models
    from wina_onnx.testing.fused_llama import LlamaShape, node_counts, write_static_cache_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = LlamaShape(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab)
    models: dict[str, Path] = {}
    timings: dict[str, float] = {}
    stopped = False
    for family in families(args):
        made = prepare(family, args, shape, work)
        prefix = "" if not args.int4 else f"{family.key}_"
        timings.update({prefix + k: v for k, v in family.timings.items()})
        if made is None:
            stopped = True
        else:
            models.update(made)
    if stopped:
        log(f"stopping after {args.stop_after}; steps (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
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
    calib_device = args.calib_device or args.device
    lines = [
        f"# command: {command}",
        f"# date: {result.environment.get('date')}",
        f"# device: {result.environment.get('gpu', args.device)}",
        f"# onnxruntime: {result.environment.get('onnxruntime')}, python {result.environment.get('python')}",
        f"# model: Llama shape {json.dumps(shape.config_json())}",
        f"# calibration: {args.calib_windows} windows of {args.calib_window} random token ids, on the {calib_device}",
        f"# steps (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}",
        "# nodes: " + "; ".join(f"{name}: {c['total']} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()) if k != 'total')})"
                                 for name, c in counts.items()),
        "",
        result.table(),
        *(graph_lines(result) if args.cuda_graph else []),
    ]
    if args.int4:
        targets = {0.5: 1.4, 0.4: 1.25}
        int4 = families(args)[0]
        pairs = [(f"int4 WINA {s:.0%}", "int4 dense", targets.get(round(s, 2))) for s in int4.sparsities]
        pairs += [(f"fp16 WINA {args.fp16_sparsity:.0%} grouped", "fp16 dense", None),
                  ("int4 dense", "fp16 dense", None),
                  (f"int4 WINA {int4.sparsities[0]:.0%}", f"fp16 WINA {args.fp16_sparsity:.0%} grouped", None)]
        lines += ratio_lines(result, pairs)
    lines += ["", json.dumps({"result": result.to_dict(), "node_counts": counts}, indent=1)]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print("\n".join(line for line in lines if not line.startswith("{")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
