"""Quality of WINA on 4-bit weights (MatMulNBits): SmolLM2-135M, int4 dense and int4 WINA.

Usage (from the repo root, after scripts/setup.sh):

    python benchmarks/quality_int4.py --data ../shared/data/wikitext-2/wiki.test.raw \\
        --calib-data ../shared/data/wikitext-2/wiki.valid.tokens --windows 8 \\
        --builder-int4 .cache/genai/smollm2-int4 --out benchmarks/results/quality_int4.json

Evaluated exactly as benchmarks/quality.py (its helpers and options): the first --windows
windows of 512 tokens of --data, encoded with the tokenizer's start token; perplexity,
KL(fp32 dense || model) and top-1 agreement with the fp32 dense model (its logits computed
once), and for gated models the sparsity measured on the first 2 windows, weighted by
weight bytes. Calibration as quality.py: histograms and the greedy search's samples from
--calib-windows windows of --calib-data, refinement on the same text, never the
evaluation text.

The models:
- int4: `wina-onnx export --int4` of the default model (the embedded GGUF's own Q4_1
  codes as MatMulNBits, block 32, accuracy_level 0), dense and gated with `optimize`'s
  default configuration (WINA scores with weight norms on the k/gate projections,
  calibrated thresholds, greedy allocation, one refinement round), all measured inside
  the int4 model, at 25, 40 and 50%;
- fp32: `wina-onnx export` of the same model, dense and with the same configuration,
  re-measured in the same run;
- builder-int4 (with --builder-int4): the int4 SmolLM2 made by ONNX Runtime GenAI's model
  builder (the GGUF dequantized, then quantized again; accuracy_level 4), dense.

The fp32 rows of --fp32-results (quality.json, the full grid) for the same configuration
are copied beside them. Results are appended to --out after every model; a rerun skips
the ones there.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (benchmarks/quality.py: the evaluation this one reuses)

SPARSITIES = (0.50, 0.40, 0.25)
# optimize's defaults, as named in quality.py's grid (checked against the CLI's parser below).
DEFAULT_METHOD, DEFAULT_ALLOCATION, DEFAULT_GATING = "wina-ref", "greedy", "threshold-refined"


def check_defaults() -> None:
    """Fail if `wina-onnx optimize`'s defaults are no longer the configuration measured here."""
    from wina_onnx import cli

    args = cli.build_parser().parse_args(["optimize", "model.onnx", "-o", "out.onnx"])
    mode, norm_on = quality.METHODS[DEFAULT_METHOD]
    found = (args.mode, args.norm_on, args.gating, args.allocate, args.refine_rounds, args.transform)
    # gating/allocate/refine_rounds None: threshold, greedy and one round (wina_onnx.recipe.Recipe)
    if found != (mode, norm_on, None, None, None, False):
        raise SystemExit(f"optimize's defaults changed ({found}); update DEFAULT_* in {Path(__file__).name}")


def default_config_name(sparsity: float) -> str:
    """quality.py's name of optimize's default configuration at `sparsity`."""
    return quality.config_name(DEFAULT_METHOD, DEFAULT_ALLOCATION, DEFAULT_GATING, False, sparsity)


def library_commit(library: Path) -> str:
    """The commit of main's custom_ops the op library was built from, if its build folder says
    (LIBRARY_COMMIT beside it), else "unknown"."""
    stamp = library.parent / "LIBRARY_COMMIT"
    return stamp.read_text().strip()[:10] if stamp.is_file() else "unknown"


def fp32_from_grid(path: Path) -> dict:
    """The dense row and the default configuration's rows of a quality.py results file."""
    grid = json.loads(path.read_text())
    rows = {r["config"]: r for r in grid["results"]}
    wanted = ["dense"] + [default_config_name(s) for s in SPARSITIES]
    return {"file": path.name, "date": grid.get("date"), "model": grid.get("model"),
            "rows": [rows[name] for name in wanted if name in rows]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="evaluation text (wiki.test.raw)")
    parser.add_argument("--calib-data", required=True, help="calibration text (wiki.valid.tokens)")
    parser.add_argument("--work-dir", default=".cache/bench", help="folder for exported/optimized models")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--calib-window", type=int, default=512)
    parser.add_argument("--probe-windows", type=int, default=2, help="windows for the measured sparsity")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bases", nargs="+", default=["int4", "fp32"], choices=["int4", "fp32"],
                        help="models gated here, in this order (default: int4 fp32)")
    parser.add_argument("--builder-int4", default=None, metavar="FOLDER",
                        help="also evaluate the GenAI builder's int4 model in FOLDER (dense)")
    parser.add_argument("--fp32-results", default="benchmarks/results/quality.json",
                        help="quality.py's results, whose fp32 rows are copied beside ours")
    parser.add_argument("--out", required=True, help="raw results (JSON), appended to")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    if args.table_only:
        print_table(json.loads(Path(args.out).read_text()))
        return 0
    check_defaults()

    import onnxruntime

    import wina_onnx
    from wina_onnx.passes.allocation import Allocation
    from wina_onnx.calibrate.calibration import calibrate_model
    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.export.optimum_export import export_model
    from wina_onnx.calibrate.greedy import ActivationSample, ErrorCurves
    from wina_onnx.library import get_library_path
    from wina_onnx.evaluation.metrics import compare_to_reference
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig
    from wina_onnx.calibrate.refine import Refinement
    from wina_onnx.runtime.session import CausalLM, load_tokenizer
    from wina_onnx.evaluation.sparsity_probe import measure_sparsity

    work = Path(args.work_dir)
    bases = {"fp32": work / "smollm2" / "model.onnx", "int4": work / "smollm2-int4-gguf" / "model.onnx"}
    if not bases["fp32"].is_file():
        export_model(None, bases["fp32"].parent)
    if not bases["int4"].is_file():
        export_model(None, bases["int4"].parent, int4=True)
    dense = bases["fp32"]
    tokenizer = load_tokenizer(dense.parent)
    ids = tokenize_text(tokenizer, read_text(args.data), add_special_tokens=True)
    calib_ids = tokenize_text(tokenizer, read_text(args.calib_data), add_special_tokens=True)

    out = Path(args.out)
    raw = json.loads(out.read_text()) if out.is_file() else {"results": []}
    command = " ".join(["python"] + sys.argv)
    raw.update({
        "command": command,
        "commands": raw.get("commands", []) + [command],
        "models": {
            "fp32": "SmolLM2-135M-Instruct, `wina-onnx export` (the Q4_1 GGUF dequantized to fp32, Optimum)",
            "int4": "`wina-onnx export --int4` of the same GGUF: its Q4_1 codes as MatMulNBits (block 32, "
                    "float zero points, accuracy_level 0)",
            "builder-int4": "ONNX Runtime GenAI's model builder, -p int4 -e cpu, from the dequantized GGUF "
                            "(quantized again: block 32, accuracy_level 4)",
        },
        "configuration": f"optimize's defaults: {default_config_name(0).rsplit('/', 1)[0]} (quality.py's names)",
        "data": Path(args.data).name, "calibration_data": Path(args.calib_data).name,
        "windows": args.windows, "window": args.window,
        "calibration": {"windows": args.calib_windows, "window": args.calib_window},
        "sparsity_weighting": "weight bytes",
        "kl_reference": "fp32 dense",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "op_library_commit": library_commit(Path(get_library_path())),
        "versions": {"wina_onnx": wina_onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    })
    if Path(args.fp32_results).is_file():
        raw["fp32_from_quality_json"] = fp32_from_grid(Path(args.fp32_results))
    done = {row["config"] for row in raw["results"]}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        ordered = {**{k: v for k, v in raw.items() if k != "results"}, "results": raw["results"]}  # command on top
        out.write_text(json.dumps(ordered, indent=1) + "\n")

    reference = quality.CachedReference(CausalLM.from_path(dense, threads=args.threads))

    def evaluate(name: str, path: Path, extra: dict) -> None:  # as quality.py's evaluate
        start = time.perf_counter()
        lm = CausalLM.from_path(path, threads=args.threads)
        metrics = compare_to_reference(lm, reference, ids, window=args.window, max_windows=args.windows,
                                       progress=False)
        row = {"config": name, **extra, **metrics, "seconds": round(time.perf_counter() - start, 1)}
        if extra.get("sparsity", 0) > 0:
            probe = measure_sparsity(path, ids, windows=args.probe_windows, window=args.window, threads=args.threads)
            row["measured_sparsity"] = probe["weighted"]
            row["measured_sparsity_mean_over_gates"] = probe["mean"]
        raw["results"].append(row)
        done.add(name)
        save()
        print(f"{name:<46} ppl {row['perplexity']:9.3f}  kl {row['kl']:.4f}  top1 {row['top1_agreement']:.4f}"
              f"  measured {row.get('measured_sparsity', 0):.3f}", file=sys.stderr, flush=True)

    for base_name in args.bases:
        base = bases[base_name]
        if f"{base_name}/dense" not in done:
            evaluate(f"{base_name}/dense", base, {"model": base_name, "method": "dense", "sparsity": 0.0})
        names = {s: f"{base_name}/{default_config_name(s)}" for s in SPARSITIES}
        if all(n in done for n in names.values()):
            continue
        mode, norm_on = quality.METHODS[DEFAULT_METHOD]
        start = time.perf_counter()
        sample = ActivationSample(rows=256)
        calibration = calibrate_model(base, token_ids=calib_ids, windows=args.calib_windows,
                                      window=args.calib_window, threads=args.threads, sample=sample,
                                      source=Path(args.calib_data).name)
        curves = ErrorCurves.from_sample(sample)
        raw.setdefault("calibration_seconds", {})[base_name] = round(time.perf_counter() - start, 1)
        for sparsity, name in names.items():
            if name in done:
                continue
            start = time.perf_counter()
            allocation: Allocation = curves.allocate(sparsity, mode=mode, norm_on=norm_on)
            path = work / "quality-int4" / name.replace("/", "_") / "model.onnx"
            config = GateConfig(mode=mode, gating="threshold", allocation=allocation, norm_on=norm_on,
                                calibration=calibration)
            refine = Refinement(token_ids=calib_ids, windows=args.calib_windows, window=args.calib_window,
                                rounds=1, threads=args.threads)
            optimize_model(base, path, config, progress=False, refine=refine)
            for sidecar in base.parent.glob("*.json"):
                (path.parent / sidecar.name).write_bytes(sidecar.read_bytes())
            optimize_seconds = round(time.perf_counter() - start, 1)
            evaluate(name, path, {"model": base_name, "method": DEFAULT_METHOD, "allocation": DEFAULT_ALLOCATION,
                                  "gating": DEFAULT_GATING, "sparsity": sparsity,
                                  "optimize_seconds": optimize_seconds})
            path.unlink()
    if args.builder_int4 and "builder-int4/dense" not in done:
        evaluate("builder-int4/dense", Path(args.builder_int4) / "model.onnx",
                 {"model": "builder-int4", "method": "dense", "sparsity": 0.0})
    print_table(raw)
    return 0


def print_table(raw: dict) -> None:
    """Markdown table: perplexity (KL, measured sparsity) per model and sparsity."""
    rows = {r["config"]: r for r in raw["results"]}
    grid = {r["config"]: r for r in raw.get("fp32_from_quality_json", {}).get("rows", [])}
    levels = [0.0] + sorted(SPARSITIES)

    def cell(r: dict | None) -> str:
        if r is None:
            return ""
        text = f"{r['perplexity']:.2f} ({r['kl']:.3f}"
        return text + (f", {r['measured_sparsity']:.3f})" if "measured_sparsity" in r else ")")

    def name(model: str, s: float) -> str:
        return f"{model}/dense" if s == 0 else f"{model}/{default_config_name(s)}"

    print("| model | dense | " + " | ".join(f"WINA {int(s * 100)}%" for s in levels[1:]) + " |")
    print("|---|" + "---|" * len(levels))
    for model in ("int4", "fp32", "builder-int4"):
        if any(name(model, s) in rows for s in levels):
            print(f"| {model} | " + " | ".join(cell(rows.get(name(model, s))) for s in levels) + " |")
    if grid:
        source = raw["fp32_from_quality_json"]
        cells = [cell(grid.get("dense" if s == 0 else default_config_name(s))) for s in levels]
        print(f"| fp32, {source['file']} ({source['date']}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
