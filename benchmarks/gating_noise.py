"""How much rounding-level differences move a gated model: the same models, two CPU set-ups.

Threshold and top-k gating are discontinuous: a feature whose score lies within rounding
error of its threshold is kept by one run and dropped by another, and the dropped or kept
row changes the next layers' inputs by far more than rounding, so more features flip
downstream. This script measures that noise floor on the CPU alone: each model runs on
the same windows with ONNX Runtime's graph optimizations on ("all": fused kernels, other
rounding) and off ("disable"), and the two runs are compared with
wina_onnx.metrics.compare_to_reference (perplexities, KL(off || on), top-1 agreement).
A dense model should agree to rounding; a gated one shows what any change of rounding,
such as another execution provider, can do to it.

    python benchmarks/gating_noise.py dense=DIR/model.onnx wina=OUT/model.onnx \\
        --data ../shared/data/wikitext-2/wiki.test.raw --windows 8 --out results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="NAME=MODEL.onnx", help="models to compare, each named")
    p.add_argument("--data", required=True, help="evaluation text")
    p.add_argument("--windows", type=int, default=8, help="windows of --window tokens (default 8)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="raw results (JSON)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    from wina_onnx.data import read_text
    from wina_onnx.evaluate import tokenize_text
    from wina_onnx.metrics import compare_to_reference
    from wina_onnx.runtime import CausalLM, load_tokenizer

    named = [m.split("=", 1) for m in args.models]
    if any(len(m) != 2 for m in named):
        sys.exit("models are NAME=MODEL.onnx")
    results = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "windows": args.windows,
        "window": args.window,
        "models": {},
    }
    for name, path in named:
        ids = tokenize_text(load_tokenizer(Path(path).parent), read_text(args.data))
        plain = CausalLM.from_path(path, threads=args.threads, optimization_level="disable")
        fused = CausalLM.from_path(path, threads=args.threads, optimization_level="all")
        row = compare_to_reference(fused, plain, ids, window=args.window, max_windows=args.windows, progress=False)
        row = {
            "perplexity_optimizations_off": row["reference_perplexity"],
            "perplexity_optimizations_all": row["perplexity"],
            "relative_difference": row["perplexity"] / row["reference_perplexity"] - 1.0,
            "kl_off_all": row["kl"],
            "top1_agreement": row["top1_agreement"],
            "tokens": row["tokens"],
        }
        results["models"][name] = row
        print(f"{name:<10} off {row['perplexity_optimizations_off']:.4f} all {row['perplexity_optimizations_all']:.4f} "
              f"({100 * row['relative_difference']:+.4f}%) kl {row['kl_off_all']:.2e} "
              f"top1 {row['top1_agreement']:.4f}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
