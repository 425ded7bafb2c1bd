"""CPU decode of SmolLM2-135M, this checkout against an earlier commit, interleaved in one run.

What a refactoring must leave unchanged: the model `wina-onnx optimize` writes and the op
library that runs it. Both commits build the op library the same way (CPU only, Release),
both optimize the same dense export with their own package and library, and one process
times every model in turn (wina_onnx.evaluation.bench.bench_models), each session with its
commit's library.

Usage (from the repo root, after scripts/setup.sh):

    .venv/bin/python benchmarks/decode_cpu_ab.py --base af0a25c \\
        --data ../shared/data/wikitext-2/wiki.valid.tokens --out benchmarks/results/decode_cpu_ab.txt

Models: the dense export (--dense, made by `wina-onnx export` if missing); per commit,
`optimize --sparsity 0.5` with the defaults (calibrated on --data) and with
`--mode teal --gating topk` (no calibration). The base commit is checked out with
`git worktree` under --work; its package runs from that tree (PYTHONPATH). Builds and
models already in --work are reused: remove --work after changing the checkout.
In each repetition the side timed second pays a few percent in prefill: run once more with
--b-first and read both orders.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

from script_log import REPO, Log, relative, run  # noqa: E402 (benchmarks/ is sys.path[0])

VARIANTS = {  # name -> optimize's arguments besides model, output and --sparsity 0.5
    "wina-defaults": [],
    "teal-topk": ["--mode", "teal", "--gating", "topk"],
}


def build_library(log: Log, source: Path, build: Path) -> Path:
    """The op library of `source`'s custom_ops, CPU only, in `build`."""
    library = build / "libwina_onnx_ops.so"
    if not library.is_file():
        run(log, ["cmake", "-S", source / "custom_ops", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                  "-DWINA_ONNX_CUDA=OFF"], tail=2)
        run(log, ["cmake", "--build", build, f"-j{os.cpu_count() or 1}"], tail=2)
    return library


def optimize(log: Log, tree: Path, library: Path, dense: Path, out: Path, extra: list[str], data: str) -> Path:
    """`wina-onnx optimize` of the package in `tree` with `library`, into out/model.onnx."""
    model = out / "model.onnx"
    if not model.is_file():
        command = [sys.executable, "-c", "from wina_onnx.cli import main; main()", "optimize", dense, "-o", model,
                   "--sparsity", "0.5", *extra]
        if "--gating" not in extra:
            command += ["--data", data]
        run(log, command, tail=3, env={"PYTHONPATH": str(tree), "WINA_ONNX_LIBRARY": str(library)})
    return model


def load(path: Path, library: Path, threads: int):
    """A CausalLM whose session registers `library` (read from the environment when loading)."""
    from wina_onnx.library import LIBRARY_ENV
    from wina_onnx.runtime.session import CausalLM

    os.environ[LIBRARY_ENV] = str(library)
    # As bench_models: the sessions take turns, so none keeps its pool threads spinning.
    return CausalLM.from_path(path, threads=threads, config={"session.force_spinning_stop": "1"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the earlier commit (A); this checkout is B")
    p.add_argument("--data", required=True, help="calibration text of the default optimize")
    p.add_argument("--work", default=".cache/bench/decode-ab", help="worktree, builds and models")
    p.add_argument("--dense", default=".cache/bench/smollm2/model.onnx")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--b-first", action="store_true",
                   help="time B before A in every repetition (default A first): shows an order effect")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    from wina_onnx.evaluation.bench import bench_models

    log = Log()
    log(f"# command: python benchmarks/decode_cpu_ab.py {' '.join(relative(a) for a in sys.argv[1:])}")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True)
    log(f"# A: {base.stdout.strip()} (--base), B: {head.stdout.strip()} (this checkout, with its working tree)")
    log(f"# date: {datetime.datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, threads {args.threads}")
    work = (REPO / args.work).resolve()
    tree_a = work / "base-tree"
    if not tree_a.is_dir():
        run(log, ["git", "worktree", "add", "--detach", tree_a, args.base], tail=2)
    dense = (REPO / args.dense).resolve()
    if not dense.is_file():
        run(log, ["wina-onnx", "export", "-o", dense.parent], tail=3)
    trees = {"A": (tree_a, build_library(log, tree_a, work / "build-a")),
             "B": (REPO, build_library(log, REPO, work / "build-b"))}
    if args.b_first:
        trees = {"B": trees["B"], "A": trees["A"]}

    paths, libraries = {"dense": dense}, {"dense": trees["B"][1]}
    for variant, extra in VARIANTS.items():
        for side, (tree, library) in trees.items():
            name = f"{variant}@{side}"
            paths[name] = optimize(log, tree, library, dense, work / name, extra, args.data)
            libraries[name] = library
    result = bench_models(paths, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                          repeats=args.repeats, threads=args.threads, progress=False,
                          load=lambda name, path: load(path, libraries[name], args.threads))
    log()
    log(result.table())
    log()
    # Paired by repetition (the sessions take turns), so a slow spell hits A and B alike.
    log("B/A per model, median over repetitions of the paired ratio (min-max):")
    timing = {t.name: t for t in result.models}
    for variant in VARIANTS:
        a, b = timing[f"{variant}@A"], timing[f"{variant}@B"]
        for kind in ("decode_ms", "prefill_ms"):
            ratios = [y / x for x, y in zip(getattr(a, kind), getattr(b, kind))]
            log(f"  {variant:14s} {kind:10s} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    Path(args.out).write_text("\n".join(log.lines) + "\n")


if __name__ == "__main__":
    main()
