"""One model run two ways, compared: the shared part of ppl_cuda_cpu.py and gating_noise.py.

Each script names its two ways of running a model (a reference and another) and how to
load each; compare() runs them over the same windows with
wina_onnx.evaluation.metrics.compare_to_reference and writes, per model, both perplexities, their
relative difference, KL(reference || other) and the top-1 agreement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable


def parse_args(description: str, argv=None) -> argparse.Namespace:
    """Models (NAME=MODEL.onnx), --data, --windows, --window, --threads, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("models", nargs="+", metavar="NAME=MODEL.onnx", help="models to compare, each named")
    p.add_argument("--data", required=True, help="evaluation text")
    p.add_argument("--windows", type=int, default=8, help="windows of --window tokens (default 8)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="CPU provider threads")
    p.add_argument("--out", required=True, help="raw results (JSON)")
    args = p.parse_args(argv)
    args.named = [m.split("=", 1) for m in args.models]
    if any(len(m) != 2 for m in args.named):
        p.error("models are NAME=MODEL.onnx")
    return args


# A loader takes the model path and returns the CausalLM and notes to record (or None).
Loader = Callable[[str], tuple[object, dict | None]]


def compare(args: argparse.Namespace, names: tuple[str, str], reference: Loader, other: Loader) -> dict:
    """Run every model of args both ways, print a line per model, write args.out."""
    import onnxruntime as ort

    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.evaluation.metrics import compare_to_reference
    from wina_onnx.runtime.session import load_tokenizer

    ref_name, other_name = names
    results = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "windows": args.windows,
        "window": args.window,
        "models": {},
    }
    for name, path in args.named:
        ids = tokenize_text(load_tokenizer(Path(path).parent), read_text(args.data))
        ref_lm, ref_notes = reference(path)
        other_lm, other_notes = other(path)
        r = compare_to_reference(other_lm, ref_lm, ids, window=args.window, max_windows=args.windows, progress=False)
        row = {
            f"{ref_name}_perplexity": r["reference_perplexity"],
            f"{other_name}_perplexity": r["perplexity"],
            "relative_difference": r["perplexity"] / r["reference_perplexity"] - 1.0,
            f"kl_{ref_name}_{other_name}": r["kl"],
            "top1_agreement": r["top1_agreement"],
            "tokens": r["tokens"],
            **(ref_notes or {}),
            **(other_notes or {}),
        }
        results["models"][name] = row
        print(f"{name:<10} {ref_name} {r['reference_perplexity']:.4f} {other_name} {r['perplexity']:.4f} "
              f"({100 * row['relative_difference']:+.4f}%) kl {r['kl']:.2e} top1 {r['top1_agreement']:.4f}",
              flush=True)
        del ref_lm, other_lm
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results
