"""CPU decode of the GenAI model builder's int4 SmolLM2-135M: dense against WINA 50% and 40%.

Usage (from the repo root, after scripts/setup.sh):

    .venv/bin/python benchmarks/decode_cpu_int4.py \\
        --calib-data ../shared/data/wikitext-2/wiki.valid.tokens \\
        --eval-data ../shared/data/wikitext-2/wiki.test.raw --out benchmarks/results/decode_cpu_int4.txt

Steps, each command and its output recorded in --out:
  1. the builder's int4 model (`-p int4 -e cpu`: MatMulNBits, block 32, accuracy_level 4) in
     --work/smollm2-int4, made by benchmarks/genai_smollm2_builder.py if missing;
  2. `wina-onnx calibrate --allocate greedy` on --calib-data, then `wina-onnx optimize` with
     the defaults at --sparsity 0.5 and 0.4 (thresholds, greedy allocation, one refinement
     round on --calib-data), into --work/smollm2-int4-wina50 and -wina40; the op library
     of this run is copied into those folders (optimize copied the one it found), so that
     og.Model runs the same kernels; the sparsity each applies, measured on --eval-data;
  3. `wina-onnx bench` of the three, interleaved (prefill of 128 random ids, 64 decoded);
  4. decode through onnxruntime_genai.Model as a builder user runs it: the three folders
     loaded once, then --og-rounds interleaved rounds of a 128-token prompt and
     --og-tokens greedy tokens each (past end of sequence), ms per decoded token;
  5. where the time of a decoded token goes: ONNX Runtime's profiler over --profile-tokens
     decode steps of each model (same session options as bench), node time by kind
     (4-bit projections dense and gated, LM head, attention, the rest) and the time
     outside nodes; with the bound that skipping half of the gated projections' time
     would allow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from script_log import REPO, Log, relative, run  # noqa: E402 (benchmarks/ is sys.path[0])
SPARSITIES = (0.5, 0.4)
ROLE = re.compile(r"(lm_head|qkv_proj|q_proj|k_proj|v_proj|o_proj|gate_up_proj|gate_proj|up_proj|down_proj)")


def library_commit(library: Path) -> str:
    """The commit of custom_ops the op library was built from, if its build folder says
    (LIBRARY_COMMIT beside it), else the last commit of custom_ops/ in this checkout."""
    stamp = library.parent / "LIBRARY_COMMIT"
    if stamp.is_file():
        return f"{stamp.read_text().strip()[:10]} (build stamp)"
    found = subprocess.run(["git", "log", "-1", "--format=%h", "--", "custom_ops"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return f"{found or 'unknown'} (last custom_ops commit of the checkout)"


def og_model(folder: Path, threads: int):
    """onnxruntime_genai.Model of `folder` with `threads` intra-op threads (through og.Config's
    overlay, as GenAI documents; no file changes)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def og_decode_ms(model, prompt: list[int], tokens: int) -> float:
    """ms per greedy decoded token of og `model` after `prompt` (all `tokens`, past end of sequence)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + tokens, min_length=len(prompt) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)  # the prefill
    start, steps = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    return 1000 * (time.perf_counter() - start) / max(steps, 1)


def kind_of(node: str, op: str) -> str:
    """The kind a profiled node's time is counted under."""
    if op in ("MatMulNBits", "MatMul") and "lm_head" in node:
        return "LM head (MatMulNBits, not gated)"
    if op == "MatMulNBits":
        return "projections, dense MatMulNBits"
    if op == "WinaSparseMatMulNBits":
        return "projections, WinaSparseMatMulNBits"
    if op in ("GroupQueryAttention", "MultiHeadAttention", "Attention", "RotaryEmbedding"):
        return "attention (GroupQueryAttention)"
    if op in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
        return "norms"
    if op in ("GatherBlockQuantized", "Gather"):
        return "embedding"
    return "other nodes"


def profile_decode(path: Path, prompt: np.ndarray, decode_ids: np.ndarray, threads: int) -> dict:
    """Per decoded token: ms of each kind of node, ms outside nodes, and ms in all, from
    ONNX Runtime's profiler (the prefill's events left out)."""
    from wina_onnx.library import session_options
    from wina_onnx.runtime.session import CausalLM, uses_wina_domain

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads=threads, config={"session.force_spinning_stop": "1"},
                                  register=uses_wina_domain(path))
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        lm = CausalLM(session)
        _, past = lm.forward(prompt)
        for token in decode_ids:
            _, past = lm.forward(np.array([[token]], dtype=np.int64), past)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode_runs = runs[1:]  # the first run is the prefill
    first = decode_runs[0]["ts"]
    ms: dict[str, float] = {}
    roles: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            kind = kind_of(e["name"], e.get("args", {}).get("op_name", ""))
            ms[kind] = ms.get(kind, 0.0) + e["dur"] / 1000
            role = ROLE.search(e["name"]) if kind.startswith(("projections", "LM head")) else None
            if role:
                roles[role.group(1)] = roles.get(role.group(1), 0.0) + e["dur"] / 1000
    total = sum(e["dur"] for e in decode_runs) / 1000
    steps = len(decode_runs)
    per_token = {k: v / steps for k, v in sorted(ms.items(), key=lambda kv: -kv[1])}
    per_token["outside nodes (session, KV cache copies, threads)"] = total / steps - sum(per_token.values())
    return {"total": total / steps, "kinds": per_token, "roles": {k: v / steps for k, v in roles.items()}}


def projection_bytes(path: Path) -> dict[str, int]:
    """Bytes of the 4-bit codes, scales and zero points of each projection role's MatMulNBits."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = {i.name: int(np.prod(i.dims)) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
             for i in model.graph.initializer}
    found: dict[str, int] = {}
    for node in model.graph.node:
        role = ROLE.search(node.name) if node.op_type == "MatMulNBits" else None
        if role:
            found[role.group(1)] = found.get(role.group(1), 0) + sum(sizes.get(x, 0) for x in node.input[1:4])
    return found


def median_profile(profiles: list[dict]) -> dict:
    """The median over runs of each kind's ms per token and of the total."""
    kinds = dict.fromkeys(k for p in profiles for k in p["kinds"])
    roles = dict.fromkeys(k for p in profiles for k in p["roles"])
    return {"total": statistics.median(p["total"] for p in profiles),
            "kinds": {k: statistics.median(p["kinds"].get(k, 0.0) for p in profiles) for k in kinds},
            "roles": {k: statistics.median(p["roles"].get(k, 0.0) for p in profiles) for k in roles}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=".cache/genai", help="folder for the models (default: .cache/genai)")
    parser.add_argument("--calib-data", required=True, help="calibration text (wiki.valid.tokens)")
    parser.add_argument("--eval-data", required=True, help="text for the measured sparsity (wiki.test.raw)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="bench repeats (default: 15)")
    parser.add_argument("--og-rounds", type=int, default=10, help="interleaved og.Model rounds (default: 10)")
    parser.add_argument("--og-tokens", type=int, default=64, help="tokens decoded per og.Model round (default: 64)")
    parser.add_argument("--profile-tokens", type=int, default=64, help="decode steps profiled (default: 64)")
    parser.add_argument("--profile-rounds", type=int, default=3,
                        help="interleaved profiled runs per model; the median of each kind is shown (default: 3)")
    parser.add_argument("--out", default=None, help="results file to write")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import onnxruntime_genai as og

    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.library import get_library_path
    from wina_onnx.runtime.session import load_tokenizer
    from wina_onnx.evaluation.sparsity_probe import measure_sparsity

    log = Log()
    library = Path(get_library_path())
    log(f"# command: .venv/bin/python benchmarks/decode_cpu_int4.py {' '.join(argv or sys.argv[1:])}")
    log(f"# date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"{platform.machine()}, onnxruntime {ort.__version__}, onnxruntime-genai {og.__version__}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    log(f"# op library: {library.name} from custom_ops at {library_commit(library)}")
    work = Path(args.work)
    if not work.is_absolute():
        work = REPO / work
    dense = work / "smollm2-int4"
    wina_cli = [sys.executable, "-m", "wina_onnx.cli"]

    log("\n## 1. The GenAI builder's int4 model")
    if not (dense / "genai_config.json").is_file():
        run(log, [sys.executable, "benchmarks/genai_smollm2_builder.py", "--work", relative(str(work))], tail=4)
    else:
        log(f"(kept from an earlier run: {relative(str(dense))})")

    log("\n## 2. wina-onnx optimize, defaults, calibrated on the calibration text")
    calibration = work / "smollm2-int4-calib.npz"
    if not calibration.is_file():
        run(log, [*wina_cli, "calibrate", dense / "model.onnx", "-o", calibration, "--allocate", "greedy",
                  "--data", args.calib_data, "-q"])
    else:
        log(f"(calibration kept from an earlier run: {relative(str(calibration))})")
    folders = {"dense int4": dense}
    for sparsity in SPARSITIES:
        folder = work / f"smollm2-int4-wina{int(sparsity * 100)}"
        if not (folder / "model.onnx").is_file():
            run(log, [*wina_cli, "optimize", dense / "model.onnx", "-o", folder / "model.onnx", "--sparsity",
                      str(sparsity), "--calibration", calibration, "--data", args.calib_data, "-q"], tail=4)
        else:
            log(f"(kept from an earlier run: {relative(str(folder))})")
        shutil.copy2(library, folder / library.name)
        folders[f"WINA int4 {int(sparsity * 100)}%"] = folder
    log(f"op library of this run copied into the WINA folders ({library.name})")
    ids = tokenize_text(load_tokenizer(dense), read_text(args.eval_data))
    for label, folder in list(folders.items())[1:]:
        probe = measure_sparsity(folder / "model.onnx", ids, windows=1, window=512, threads=args.threads)
        log(f"{label}: sparsity applied on 512 tokens of {Path(args.eval_data).name}: {probe['weighted']:.3f} "
            f"(weighted by weight bytes), {len(probe['gates'])} gates")

    log(f"\n## 3. wina-onnx bench, {args.threads} threads")
    run(log, [*wina_cli, "bench", *(f / "model.onnx" for f in folders.values()), "--prompt-tokens", "128",
              "--decode-tokens", "64", "--repeats", str(args.repeats), "--threads", str(args.threads), "-q"],
        tail=8)

    log(f"\n## 4. onnxruntime_genai.Model decode, {args.threads} threads: 128-token prompt, {args.og_tokens} "
        f"tokens, {args.og_rounds} interleaved rounds after one warm-up, median ms/token")
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, 49152, size=128)]
    models = {label: og_model(folder, args.threads) for label, folder in folders.items()}
    times: dict[str, list[float]] = {label: [] for label in models}
    for round_ in range(args.og_rounds + 1):
        for label, model in models.items():
            ms = og_decode_ms(model, prompt, args.og_tokens)
            if round_:
                times[label].append(ms)
    base = statistics.median(times["dense int4"])
    for label, values in times.items():
        median = statistics.median(values)
        log(f"{label:<16} {median:7.2f} ms/token  {1000 / median:6.1f} tokens/s  ({base / median:.3f}x dense; "
            f"runs {', '.join(f'{v:.2f}' for v in values)})")
    del models

    log(f"\n## 5. Where a decoded token's time goes: ONNX Runtime profiler, {args.profile_tokens} decode steps "
        f"after a 128-token prefill, {args.threads} threads, ms per token, median of {args.profile_rounds} "
        "interleaved runs per kind (profiling adds its own overhead)")
    decode_ids = rng.integers(0, 49152, size=args.profile_tokens)
    prompt_ids = np.asarray([prompt], dtype=np.int64)
    runs: dict[str, list[dict]] = {label: [] for label in folders}
    for _ in range(args.profile_rounds):
        for label, folder in folders.items():
            runs[label].append(profile_decode(folder / "model.onnx", prompt_ids, decode_ids, args.threads))
    profiles = {label: median_profile(found) for label, found in runs.items()}
    kinds = list(dict.fromkeys(k for p in profiles.values() for k in p["kinds"]))
    log(f"{'':<52}" + "".join(f"{label:>20}" for label in profiles))
    for kind in kinds:
        cells = "".join(f"{p['kinds'].get(kind, 0.0):11.3f} ({p['kinds'].get(kind, 0.0) / p['total']:5.1%})"
                        for p in profiles.values())
        log(f"{kind:<52}{cells}")
    log(f"{'all (model_run)':<52}" + "".join(f"{p['total']:11.3f} {'':8}" for p in profiles.values()))
    dense_profile = profiles["dense int4"]
    projections = dense_profile["kinds"].get("projections, dense MatMulNBits", 0.0)
    for label, p in list(profiles.items())[1:]:
        gated = p["kinds"].get("projections, WinaSparseMatMulNBits", 0.0)
        log(f"{label}: gated projections {gated:.3f} ms/token against dense {projections:.3f} "
            f"({projections / gated:.2f}x); the rest {p['total'] - gated:.3f} against {dense_profile['total'] - projections:.3f}")
    weights = projection_bytes(dense / "model.onnx")
    log("\nprojections by role, ms per token: dense with the rate at which it reads its 4-bit codes, scales "
        "and zero points; WINA with its speed-up over dense")
    log(f"{'role':<14}{'MiB':>6}" + "".join(f"{label:>22}" for label in profiles))
    for role, size in weights.items():
        base_ms = dense_profile["roles"].get(role, float("nan"))
        cells = [f"{base_ms:.3f} ({size / base_ms / 1e6:.1f} GB/s)"]
        cells += [f"{p['roles'].get(role, float('nan')):.3f} ({base_ms / p['roles'].get(role, float('nan')):.2f}x)"
                  for p in list(profiles.values())[1:]]
        log(f"{role:<14}{size / 2**20:6.1f}" + "".join(f"{c:>22}" for c in cells))
    sparsity = 0.5
    bound = dense_profile["total"] / (dense_profile["total"] - sparsity * projections)
    log(f"bound at 50%: if the gated projections took exactly half the dense projections' time and all else "
        f"stayed, decode would be {bound:.2f}x dense (projections are {projections / dense_profile['total']:.1%} "
        f"of the dense token)")
    if args.out:
        Path(args.out).write_text("\n".join(log.lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
