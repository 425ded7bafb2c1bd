"""Make ONNX Runtime GenAI model folders with GenAI's own model builder, for the tests.

Run with the builder's environment (scripts/genai_builder_env.sh prints its python):

    .venv-builder/bin/python scripts/make_genai_fixtures.py --tokenizer TOK_DIR -o OUT [FIXTURE ...]

Writes OUT/hf, a tiny SmolLM2-shaped LlamaForCausalLM with random weights (built from a
transformers config, seeded: nothing comes from the hub; wina_onnx.testing.tiny_llama,
the model the tests export through Optimum) with the tokenizer files of TOK_DIR beside
it, then OUT/<precision>-<ep> for each FIXTURE (default: all of FIXTURES): the folder
that `python -m onnxruntime_genai.models.builder -i OUT/hf -o OUT/<precision>-<ep>
-p <precision> -e <ep>` writes, untouched (model.onnx + data, genai_config.json,
tokenizer files).

fp16 is built for CUDA: the builder supports fp16 only for GPU providers (it lists "FP16
CPU" as no valid combination), and its fp16 CPU graph does not run in ONNX Runtime 1.32's
CPU provider (a Reshape after repeat_kv is declared [batch, sequence_length, 64] but holds
the whole cache). Its CUDA graph (packed q/k/v, GroupQueryAttention) runs on the CPU too,
with GenAI's provider list cleared (og.Config.clear_providers()).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

# The builder's environment does not install wina-onnx: the model comes from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wina_onnx.testing.tiny_llama import save_tiny_llama  # noqa: E402

# name: (precision, execution provider) as given to the builder's -p and -e.
FIXTURES = {"fp32-cpu": ("fp32", "cpu"), "fp16-cuda": ("fp16", "cuda"), "int4-cpu": ("int4", "cpu")}


def build(hf: Path, out: Path, precision: str, provider: str, cache: Path) -> None:
    """Run the model builder as a user does."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
               "-p", precision, "-e", provider, "-c", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (out / "genai_config.json").is_file():
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"the model builder failed for -p {precision} -e {provider} (exit {result.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, type=Path, help="folder with tokenizer.json and its files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder to write (created)")
    parser.add_argument("fixtures", nargs="*", metavar="FIXTURE",
                        help=f"which folders to make: {', '.join(FIXTURES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.fixtures) - set(FIXTURES))
    if unknown:
        parser.error(f"unknown fixture(s) {', '.join(unknown)}; choose from {', '.join(FIXTURES)}")
    if not (args.tokenizer / "tokenizer.json").is_file():
        parser.error(f"no tokenizer.json in {args.tokenizer}")
    args.output.mkdir(parents=True, exist_ok=True)
    hf = args.output / "hf"
    if not (hf / "config.json").is_file():
        save_tiny_llama(hf, args.tokenizer)
    names = args.fixtures or list(FIXTURES)
    for name in names:
        build(hf, args.output / name, *FIXTURES[name], args.output / "builder-cache")
    shutil.rmtree(args.output / "builder-cache", ignore_errors=True)
    print(json.dumps({name: str(args.output / name) for name in names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
