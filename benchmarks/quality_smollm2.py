"""Perplexity of SmolLM2-135M, dense vs TEAL vs WINA at uniform top-k sparsities.

Usage (from the repo root, after scripts/setup.sh):

    python benchmarks/quality_smollm2.py --data ../shared/data/wikitext-2/wiki.test.raw \
        --windows 16 --out benchmarks/results/quality_smollm2.json

Exports SmolLM2 into --work-dir if needed, optimizes it once per (mode, sparsity) with the
op library (or --backend onnx), and evaluates each model on the same first --windows
non-overlapping windows of 512 tokens of the text. Writes the raw per-window NLLs as JSON
and prints a Markdown table (perplexity over all windows and over the first 8).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

SPARSITIES = (0.25, 0.40, 0.50, 0.65)
MODES = ("teal", "wina")


def first_windows_ppl(window_nll: list[float], window_tokens: list[int], count: int) -> float:
    """Perplexity over the first `count` windows, from per-window mean NLLs."""
    nll = sum(n * t for n, t in zip(window_nll[:count], window_tokens[:count]))
    return math.exp(nll / sum(window_tokens[:count]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="evaluation text (e.g. wiki.test.raw)")
    parser.add_argument("--work-dir", default=".cache/bench", help="folder for exported/optimized models")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--backend", default="custom-op", choices=["custom-op", "onnx"])
    parser.add_argument("--norm-on", default="all", choices=["all", "reference"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-bos", action="store_true",
                        help="encode the text without the tokenizer's start token (default: with it, "
                             "as the reference measurement did)")
    parser.add_argument("--out", required=True, help="raw results (JSON)")
    args = parser.parse_args()

    import onnxruntime

    import wina_onnx
    from wina_onnx.passes.allocation import Allocation
    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import perplexity, tokenize_text
    from wina_onnx.export.optimum_export import export_model
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig
    from wina_onnx.runtime.session import CausalLM, load_tokenizer

    work = Path(args.work_dir)
    dense = work / "smollm2" / "model.onnx"
    if not dense.is_file():
        export_model(None, dense.parent)
    ids = tokenize_text(load_tokenizer(dense.parent), read_text(args.data), add_special_tokens=not args.no_bos)

    configs: list[tuple[str, str | None, float]] = [("dense", None, 0.0)]
    configs += [(f"{mode}-{int(s * 100)}", mode, s) for mode in MODES for s in SPARSITIES]
    rows = []
    for name, mode, sparsity in configs:
        path = dense
        if mode is not None:
            path = work / "quality" / name / "model.onnx"
            config = GateConfig(mode=mode, allocation=Allocation.uniform(sparsity), backend=args.backend,
                                norm_on=args.norm_on)
            optimize_model(dense, path, config)
            for sidecar in dense.parent.glob("*.json"):
                (path.parent / sidecar.name).write_bytes(sidecar.read_bytes())
        lm = CausalLM.from_path(path, threads=args.threads)
        start = time.perf_counter()
        result = perplexity(lm, ids, window=args.window, max_windows=args.windows)
        rows.append({
            "config": name, "mode": mode or "dense", "sparsity": sparsity,
            "perplexity": result.perplexity,
            "perplexity_first8": first_windows_ppl(result.window_nll, result.window_tokens, 8),
            "window_nll": result.window_nll, "window_tokens": result.window_tokens,
            "seconds": time.perf_counter() - start,
        })
        print(f"{name:<10} ppl {result.perplexity:8.3f}  (first 8 windows {rows[-1]['perplexity_first8']:.3f})",
              file=sys.stderr, flush=True)

    raw = {
        "command": " ".join(["python"] + sys.argv),
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), exported with Optimum",
        "data": Path(args.data).name, "windows": args.windows, "window": args.window,
        "backend": args.backend, "start_token": not args.no_bos, "norm_on": args.norm_on, "gating": "topk (uniform)",
        "versions": {"wina_onnx": wina_onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"), "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(raw, indent=1) + "\n")

    dense_row = rows[0]
    print(f"| sparsity | TEAL ppl | WINA ppl |  (dense: {dense_row['perplexity']:.3f}; "
          f"first 8 windows {dense_row['perplexity_first8']:.3f})")
    print("|---|---|---|")
    for s in SPARSITIES:
        by_mode = {r["mode"]: r for r in rows if r["sparsity"] == s}
        print(f"| {int(s * 100)}% | {by_mode['teal']['perplexity']:.3f} ({by_mode['teal']['perplexity_first8']:.3f}) "
              f"| {by_mode['wina']['perplexity']:.3f} ({by_mode['wina']['perplexity_first8']:.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
