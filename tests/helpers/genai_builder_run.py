"""Run ONNX Runtime GenAI's model builder on several checkpoints in one process.

Run with the builder's environment (scripts/genai_builder_env.sh prints its python):

    .venv-builder/bin/python tests/helpers/genai_builder_run.py PRECISION PROVIDER CACHE HF_1 OUT_1 [HF_2 OUT_2 ...]

Each pair is what `python -m onnxruntime_genai.models.builder -i HF -o OUT -p PRECISION
-e PROVIDER -c CACHE` does, run through the builder's own command line; one process
saves importing torch and transformers once per model. Exits 1 when any build failed,
after trying them all; prints one line per model on stderr.
"""

from __future__ import annotations

import runpy
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 5 or len(argv) % 2 == 0:
        print(__doc__, file=sys.stderr)
        return 2
    precision, provider, cache, pairs = argv[0], argv[1], argv[2], argv[3:]
    failed = 0
    for hf, out in zip(pairs[::2], pairs[1::2]):
        sys.argv = ["builder", "-i", hf, "-o", out, "-p", precision, "-e", provider, "-c", cache]
        try:
            runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
        except BaseException as exc:  # noqa: BLE001 - report it and go on with the next model
            if isinstance(exc, SystemExit) and not exc.code:
                pass
            else:
                failed += 1
                traceback.print_exc()
                print(f"builder failed for {hf}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
        ok = (Path(out) / "genai_config.json").is_file()
        failed += not ok
        print(f"{'built' if ok else 'no genai_config.json for'} {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
