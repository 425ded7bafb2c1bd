"""Perplexity of the same models on ONNX Runtime's CPU and CUDA execution providers.

For each model (dense and WINA-optimized alike), the same windows of --data run once on
the CPU provider and once on the CUDA provider (CPU fallback disabled, so every node,
WinaSparseMatMul included, runs on the GPU; if that fails, the reason is recorded under
cpu_fallback and the model runs with fallback), and the script reports both perplexities,
their relative difference, KL(CPU || CUDA) of the next-token distributions and the top-1
agreement of the two (wina_onnx.metrics.compare_to_reference). Needs onnxruntime-gpu and
a GPU; WINA_ONNX_LIBRARY may point at a CUDA build of the op library.

    python benchmarks/ppl_cuda_cpu.py dense=DIR/model.onnx wina=OUT/model.onnx \\
        --data ../shared/data/wikitext-2/wiki.test.raw --windows 4 --out results.json
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
    p.add_argument("--windows", type=int, default=4, help="windows of --window tokens (default 4)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="CPU provider threads")
    p.add_argument("--out", required=True, help="raw results (JSON)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch  # noqa: F401  (loads the CUDA libraries the CUDA provider needs)
    except ImportError:
        pass
    import onnxruntime as ort

    from wina_onnx.data import read_text
    from wina_onnx.evaluate import tokenize_text
    from wina_onnx.metrics import compare_to_reference
    from wina_onnx.runtime import CausalLM, load_tokenizer

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu on a machine with a GPU")
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
        cpu = CausalLM.from_path(path, threads=args.threads)
        try:  # every node on the GPU; if some op has no CUDA kernel, say so and let it fall back
            cuda = CausalLM.from_path(path, providers=["CUDAExecutionProvider"],
                                      config={"session.disable_cpu_ep_fallback": "1"})
            fallback = None
        except Exception as exc:  # noqa: BLE001
            fallback = str(exc).splitlines()[0][:300]
            cuda = CausalLM.from_path(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        assert cuda.session.get_providers()[0] == "CUDAExecutionProvider", cuda.session.get_providers()
        row = compare_to_reference(cuda, cpu, ids, window=args.window, max_windows=args.windows, progress=False)
        row = {
            "cpu_perplexity": row["reference_perplexity"],
            "cuda_perplexity": row["perplexity"],
            "relative_difference": row["perplexity"] / row["reference_perplexity"] - 1.0,
            "kl_cpu_cuda": row["kl"],
            "top1_agreement": row["top1_agreement"],
            "tokens": row["tokens"],
            "cpu_fallback": fallback,
        }
        results["models"][name] = row
        print(f"{name:<10} cpu {row['cpu_perplexity']:.4f} cuda {row['cuda_perplexity']:.4f} "
              f"({100 * row['relative_difference']:+.4f}%) kl {row['kl_cpu_cuda']:.2e} "
              f"top1 {row['top1_agreement']:.4f}", flush=True)
        del cpu, cuda
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
