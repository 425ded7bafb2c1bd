"""Quality of every WINA/TEAL configuration on SmolLM2-135M: perplexity, KL, top-1, sparsity.

Usage (from the repo root, after scripts/setup.sh):

    python benchmarks/quality.py --data ../shared/data/wikitext-2/wiki.test.raw \\
        --calib-data ../shared/data/wikitext-2/wiki.valid.tokens --windows 8 \\
        --out benchmarks/results/quality.json

The grid: method (TEAL; WINA with weight norms on every projection, "wina"; WINA with
norms only on k_proj/gate_proj as in WINA's reference code, "wina-ref") x allocation
(uniform; greedy, searched on the calibration text) x gating (top-k; threshold,
calibrated; threshold-refined, the thresholds then re-read inside the gated model on the
calibration text, one round) x tensor transformation (off; on) x sparsity (25, 40, 50, 65%), plus the
dense model and the dense transformed model. Calibration (histograms and the greedy
search's samples) runs on --calib-data only, never on the evaluation text.

Each configuration is optimized with the op library and evaluated on the first
--windows windows of 512 tokens of --data: perplexity, KL(dense || model) and top-1
agreement with the dense model (whose logits are computed once and kept), and the
sparsity actually applied, weighted by weight bytes, measured on the first 2 windows.
Results are appended to --out after every configuration; a rerun skips the ones there.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPARSITIES = (0.50, 0.40, 0.25, 0.65)  # 50% first: the headline comparison
METHODS = {"teal": ("teal", "all"), "wina": ("wina", "all"), "wina-ref": ("wina", "reference")}
ALLOCATIONS = ("uniform", "greedy")
# threshold-refined: thresholds re-read inside the gated model (one round on the calibration text).
GATINGS = ("topk", "threshold", "threshold-refined")
TRANSFORMS = (False, True)


class CachedReference:
    """The dense model's logits per window, computed once (a drop-in for CausalLM.forward)."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.cache: dict[bytes, np.ndarray] = {}

    def forward(self, ids: np.ndarray):
        key = np.asarray(ids).tobytes()
        if key not in self.cache:
            self.cache[key] = self.lm.forward(ids)[0]
        return self.cache[key], None


def export_versions() -> dict[str, str]:
    """Versions of the packages that make the exported model and its tokenizer (they can move its perplexity)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "optimum-onnx", "tokenizers", "gguf", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def config_name(method: str, allocation: str, gating: str, transform: bool, sparsity: float) -> str:
    """A row's name, e.g. 'wina-ref/greedy/threshold/rotated/50'."""
    return f"{method}/{allocation}/{gating}/{'rotated' if transform else 'plain'}/{int(round(sparsity * 100))}"


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
    parser.add_argument("--only", action="append", default=[],
                        help="run only configurations whose name contains this (repeatable)")
    parser.add_argument("--rotated-first", action="store_true",
                        help="run the transformed model's configurations before the plain ones")
    parser.add_argument("--out", required=True, help="raw results (JSON), appended to")
    parser.add_argument("--table-only", action="store_true", help="print the tables of --out and stop")
    args = parser.parse_args()
    if args.table_only:
        raw = json.loads(Path(args.out).read_text())
        print_table(raw)
        print()
        print_best(raw)
        return 0

    import onnxruntime

    import wina_onnx
    from wina_onnx.passes.allocation import Allocation
    from wina_onnx.calibrate.calibration import calibrate_model
    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.export.optimum_export import export_model
    from wina_onnx.calibrate.greedy import ActivationSample, ErrorCurves
    from wina_onnx.evaluation.metrics import compare_to_reference
    from wina_onnx.modelio import load_model, save_model_atomic
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig, rotate_residual_stream
    from wina_onnx.calibrate.refine import Refinement
    from wina_onnx.runtime.session import CausalLM, load_tokenizer
    from wina_onnx.evaluation.sparsity_probe import measure_sparsity

    work = Path(args.work_dir)
    dense = work / "smollm2" / "model.onnx"
    if not dense.is_file():
        export_model(None, dense.parent)
    tokenizer = load_tokenizer(dense.parent)
    ids = tokenize_text(tokenizer, read_text(args.data), add_special_tokens=True)
    calib_ids = tokenize_text(tokenizer, read_text(args.calib_data), add_special_tokens=True)

    out = Path(args.out)
    raw = json.loads(out.read_text()) if out.is_file() else {"results": []}
    # The grid may be filled by several (resumed or filtered) runs: every command is kept.
    command = " ".join(["python"] + sys.argv)
    commands = raw.get("commands", [raw["command"]] if "command" in raw else [])
    raw.update({
        "command": command,
        "commands": commands + [command],
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), exported with Optimum",
        "data": Path(args.data).name, "calibration_data": Path(args.calib_data).name,
        "windows": args.windows, "window": args.window,
        "calibration": {"windows": args.calib_windows, "window": args.calib_window},
        "sparsity_weighting": "weight bytes",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "versions": {"wina_onnx": wina_onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version(), **export_versions()},
        "date": time.strftime("%Y-%m-%d"),
    })
    done = {row["config"] for row in raw["results"]}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        ordered = {**{k: v for k, v in raw.items() if k != "results"}, "results": raw["results"]}  # command on top
        out.write_text(json.dumps(ordered, indent=1) + "\n")

    def wanted(name: str) -> bool:
        return name not in done and (not args.only or any(o in name for o in args.only))

    def copy_sidecars(target: Path) -> None:
        for sidecar in dense.parent.glob("*.json"):
            (target.parent / sidecar.name).write_bytes(sidecar.read_bytes())

    reference = CachedReference(CausalLM.from_path(dense, threads=args.threads))

    def evaluate(name: str, path: Path, extra: dict) -> None:
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
        print(f"{name:<36} ppl {row['perplexity']:9.3f}  kl {row['kl']:.4f}  top1 {row['top1_agreement']:.4f}"
              f"  measured {row.get('measured_sparsity', 0):.3f}", file=sys.stderr, flush=True)

    if "dense" not in done:  # every run needs the baseline
        evaluate("dense", dense, {"method": "dense", "sparsity": 0.0, "transform": False})

    for transform in (TRANSFORMS[::-1] if args.rotated_first else TRANSFORMS):
        base = dense
        if transform:
            base = work / "quality-grid" / "rotated" / "model.onnx"
            if not base.is_file():
                model = load_model(dense)
                report = rotate_residual_stream(model)
                base.parent.mkdir(parents=True, exist_ok=True)
                save_model_atomic(model, base)
                copy_sidecars(base)
                raw["transform"] = report.details
                save()
            if wanted("dense/rotated"):
                evaluate("dense/rotated", base, {"method": "dense", "sparsity": 0.0, "transform": True})
        names = [config_name(m, a, g, transform, s) for s in SPARSITIES for m in METHODS for a in ALLOCATIONS
                 for g in GATINGS]
        if not any(wanted(n) for n in names):
            continue
        # One calibration per model: histograms for thresholds, samples for the greedy search.
        sample = ActivationSample(rows=256)
        calibration = calibrate_model(base, token_ids=calib_ids, windows=args.calib_windows,
                                      window=args.calib_window, threads=args.threads, sample=sample,
                                      source=Path(args.calib_data).name)
        curves: ErrorCurves | None = None  # both scores, computed once per model
        allocations: dict[tuple[str, float], Allocation] = {}
        for sparsity in SPARSITIES:
            for method, (mode, norm_on) in METHODS.items():
                for allocation_kind in ALLOCATIONS:
                    for gating in GATINGS:
                        name = config_name(method, allocation_kind, gating, transform, sparsity)
                        if not wanted(name):
                            continue
                        if allocation_kind == "uniform":
                            allocation = Allocation.uniform(sparsity)
                        else:
                            key = (method, sparsity)
                            if key not in allocations:
                                if curves is None:
                                    curves = ErrorCurves.from_sample(sample)
                                allocations[key] = curves.allocate(sparsity, mode=mode, norm_on=norm_on)
                                allocations[key].save(work / "quality-grid" / f"alloc-{method}-"
                                                      f"{'rotated' if transform else 'plain'}-{int(sparsity * 100)}.json")
                            allocation = allocations[key]
                        path = work / "quality-grid" / name.replace("/", "_") / "model.onnx"
                        op_gating = "threshold" if gating.startswith("threshold") else gating
                        config = GateConfig(mode=mode, gating=op_gating, allocation=allocation, norm_on=norm_on,
                                            calibration=calibration if op_gating == "threshold" else None)
                        refine = None
                        if gating == "threshold-refined":
                            refine = Refinement(token_ids=calib_ids, windows=args.calib_windows,
                                                window=args.calib_window, rounds=1, threads=args.threads)
                        optimize_model(base, path, config, progress=False, refine=refine)
                        copy_sidecars(path)
                        evaluate(name, path, {"method": method, "allocation": allocation_kind, "gating": gating,
                                              "transform": transform, "sparsity": sparsity,
                                              "family": name.rsplit("/", 1)[0]})
                        path.unlink()
    print_table(raw)
    print()
    print_best(raw)
    return 0


def print_table(raw: dict) -> None:
    """Markdown table: one row per configuration family, perplexity (KL, top-1) per sparsity."""
    rows = {r["config"]: r for r in raw["results"]}
    print("| configuration | " + " | ".join(f"{int(s * 100)}%" for s in sorted(SPARSITIES)) + " |")
    print("|---|" + "---|" * len(SPARSITIES))
    for transform in TRANSFORMS:
        for method in METHODS:
            for allocation in ALLOCATIONS:
                for gating in GATINGS:
                    cells = []
                    for s in sorted(SPARSITIES):
                        r = rows.get(config_name(method, allocation, gating, transform, s))
                        cells.append("" if r is None else
                                     f"{r['perplexity']:.2f} ({r['kl']:.3f}, {r['top1_agreement']:.3f}, "
                                     f"{r.get('measured_sparsity', float('nan')):.3f})")
                    family = config_name(method, allocation, gating, transform, 0).rsplit("/", 1)[0]
                    print(f"| {family} | " + " | ".join(cells) + " |")


def print_best(raw: dict) -> None:
    """Markdown table: the best TEAL and the best WINA configuration at each sparsity."""
    print("| sparsity | best TEAL | perplexity | best WINA | perplexity | WINA vs TEAL |")
    print("|---|---|---|---|---|---|")
    for s in sorted(SPARSITIES):
        best = {}
        for family in ("teal", "wina"):
            rows = [r for r in raw["results"] if r.get("sparsity") == s
                    and (r["method"] == "teal") == (family == "teal") and r["method"] != "dense"]
            if rows:
                best[family] = min(rows, key=lambda r: r["perplexity"])
        if len(best) < 2:
            continue
        teal, wina = best["teal"], best["wina"]
        change = (wina["perplexity"] / teal["perplexity"] - 1) * 100
        print(f"| {int(round(s * 100))}% | {teal['config']} | {teal['perplexity']:.2f} | {wina['config']} | "
              f"{wina['perplexity']:.2f} | {change:+.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
