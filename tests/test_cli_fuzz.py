"""The command line under random and hostile argument combinations (hypothesis).

Every run of `wina_onnx.cli.main` must end in one of three ways: success (0), a user
error (2: exactly one line `wina-onnx ...: error: ...` on stderr), or argparse's own
exits (0 for --help, 2 for a usage error, also on one line). Anything else (an exception
escaping main, which is a traceback for a user) fails the test. After a failed run the
working folder must be exactly as before (no partial output: names, sizes and times);
after a successful one, only the outputs it was asked to write may have changed.

Each example runs in a fresh folder holding a one-projection model (no tokenizer), the
tiny random Llama (copied, so that nothing can write through to the test cache), a short
text, a non-UTF-8 text, an empty text and a file that is not a model. The commands are
those that finish in about a second on that data: optimize, calibrate, eval, generate,
bench, inspect, package and report (not export, demo or lm-eval, which load PyTorch or a
real model). Bounded options come first in argv, so random values of the same option
override them while a run never grows past the tiny text; value pools keep thread
counts and generation lengths small. Runs in-process (no interpreter start per example):
about 40 s for 120 examples on 2 cores; derandomized, so CI sees the same cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import onnx
import pytest
from helpers.graphs import projection_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wina_onnx import cli
from wina_onnx.calibrate.calibration import calibrate_model

COMMANDS = ("optimize", "calibrate", "eval", "generate", "bench", "inspect", "package", "report")
GOOD_MODELS = ("in/model.onnx", "llama/model.onnx", "llama")
BAD_MODELS = ("in", "missing.onnx", "notes.onnx", "small.txt", "/dev/null", "", "ü/ß.onnx", "a" * 300 + ".onnx",
              ".", "out/")
BAD_PATHS = BAD_MODELS + ("latin1.txt", "empty.txt", "llama/model.onnx", "in/model.onnx", "x/", "notes.onnx/x")
BAD_NUMBERS = ("0", "-1", "50", "1.0", "1e309", "nan", "inf", "-0", "abc", "", "3.7", "0x10", "1_000")
BAD_CHOICES = ("x", "", "WINA", "--")
# option -> values a user would give; hostile values come from the pools above
GOOD: dict[str, tuple[str, ...]] = {
    "-o": ("out/model.onnx", "o.onnx", "out/sub/m.onnx"), "--data": ("small.txt",), "--calibration": ("llama.npz",),
    "--allocation": ("alloc.json",), "--reference": ("llama/model.onnx",), "--allocation-out": ("out/a.json",),
    "--genai": ("out/genai",), "--triton": ("out/models",), "--quality": ("alloc.json",), "--model": GOOD_MODELS,
    "--sparsity": ("0", "0.25", "0.5", "0.9"), "--target-sparsity": ("0.5",), "--windows": ("1", "2"),
    "--window": ("8", "16", "32"), "--stride": ("4", "8"), "--calib-windows": ("1",), "--calib-window": ("16",),
    "--refine-rounds": ("0", "1"), "--sample-rows": ("8", "64"), "--threads": ("1", "2"),
    "--max-new-tokens": ("1", "3"), "--prompt-tokens": ("2", "4"), "--decode-tokens": ("1", "2"),
    "--repeats": ("1",), "--prompt": ("hello", "The quick brown fox", " "), "--mode": ("wina", "teal"),
    "--gating": ("topk", "threshold"), "--allocate": ("greedy", "uniform"), "--norm-on": ("all", "reference"),
    "--backend": ("custom-op", "onnx"), "--include": ("down_proj", "*q_proj*", "nothing"),
    "--exclude": ("down_proj", "*"), "--quantize": ("int4",), "--block-size": ("16", "32", "7"),
    "--accuracy-level": ("0", "4"), "--external-data": ("auto", "single", "per-tensor", "inline"),
    "--device": ("cpu",), "--name": ("m", "../escape"), "--title": ("t",), "--library-path": ("/models/lib.so",),
}
OUTPUT_FILES = {"calibrate": ("calib.npz", "out/c.npz"), "report": ("out/plot.png",)}
REQUIRED = {"generate": ("--prompt",), "calibrate": ("-o",), "optimize": ("-o",), "report": ("-o", "--allocation"),
            "package": ("--genai", "--triton")}  # package: one of the two
# Bounded runs: the tiny text, one short window, few tokens; placed before the random options.
BOUNDS = {
    "optimize": ["--data", "small.txt", "--windows", "1", "--window", "16"],
    "calibrate": ["--data", "small.txt", "--windows", "1", "--window", "16"],
    "eval": ["--data", "small.txt", "--window", "16"],
    "generate": ["--max-new-tokens", "2"],
    "bench": ["--repeats", "1", "--prompt-tokens", "4", "--decode-tokens", "2"],
}
# Values that would make a run long or large: kept off the options they would affect.
UNBOUNDED = {"--threads", "--max-new-tokens", "--prompt-tokens", "--decode-tokens", "--repeats", "--sample-rows"}


def _parser_options() -> dict[str, dict[str, bool]]:
    """command -> option string -> whether it is a flag (hidden aliases included)."""
    import argparse

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: {s: a.nargs == 0 for a in subs[name]._actions for s in a.option_strings
                   if s not in ("-h", "--help")} | {"--help": True} for name in COMMANDS}


PARSER_OPTIONS = _parser_options()
ALL_OPTIONS = sorted({o for options in PARSER_OPTIONS.values() for o in options})


@pytest.fixture(scope="module")
def pristine(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files every example starts from (copied into a fresh folder per example)."""
    root = tmp_path_factory.mktemp("fuzz-pristine")
    (root / "in").mkdir()
    onnx.save(projection_model(16, 8), root / "in" / "model.onnx")
    shutil.copytree(tiny_llama_dir, root / "llama")
    (root / "small.txt").write_text("The quick brown fox jumps over the lazy dog. " * 6, encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    (root / "empty.txt").write_text("")
    (root / "notes.onnx").write_text("not a model\n" * 8)
    (root / "alloc.json").write_text(json.dumps({"format": "wina-onnx-allocation", "version": 1, "default": 0.5,
                                                 "sparsity": {"*down_proj*": 0.3}}))
    calibrate_model(root / "llama" / "model.onnx", data=root / "small.txt", windows=1, window=16, curves=True,
                    progress=False).save(root / "llama.npz")
    return root


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time (folders: 0, 0)."""
    out = {}
    for path in folder.rglob("*"):
        stat = path.lstat()
        out[str(path.relative_to(folder))] = (0, 0) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return out


def _outputs(argv: list[str]) -> list[str]:
    """The paths a successful run was asked to write (normalized like the tree's keys)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = cli.build_parser().parse_args(argv)
        except SystemExit:  # --help: nothing to write
            return []
    named = [getattr(args, name, None) for name in ("output", "genai", "triton", "allocation_out")]
    return [str(Path(p)) for p in named if p]


def _under(path: str, folder: str) -> bool:
    return folder == "." or path == folder or path.startswith(folder + "/")


def _check_writes(before: dict, after: dict, outputs: list[str]) -> None:
    """Files that existed may change only if they are outputs (or inside an output folder);
    new files may appear only beside or inside an output (data files, tokenizer and config)."""
    changed = {p for p in before if after.get(p) != before[p]}
    new = set(after) - set(before)
    assert all(any(_under(p, out) for out in outputs) for p in changed), (sorted(changed), outputs)
    assert all(any(_under(p, out) or _under(p, str(Path(out).parent)) for out in outputs) for p in new), \
        (sorted(new), outputs)


@st.composite
def command_lines(draw) -> list[str]:
    """Mostly plausible command lines, each with a few hostile parts."""
    chance = lambda percent: draw(st.integers(0, 99)) < percent  # noqa: E731
    if chance(5):
        return [draw(st.sampled_from(("optimise", "", "--version", "-h", "eval=x")))]
    command = draw(st.sampled_from(COMMANDS))
    argv = [command]

    def value(option: str) -> str:
        good = OUTPUT_FILES.get(command, GOOD.get(option, ())) if option in ("-o", "--output") else GOOD.get(option, ())
        if good and chance(75):
            return draw(st.sampled_from(good))
        if option in UNBOUNDED:
            return draw(st.sampled_from(("0", "-1", "x", "", "1.5")))
        return draw(st.sampled_from(BAD_NUMBERS + BAD_PATHS + BAD_CHOICES))

    def add(option: str) -> None:
        if PARSER_OPTIONS[command].get(option, False):
            argv.append(option)
        elif chance(20):
            argv.append(f"{option}={value(option)}")
        else:
            argv.extend([option, value(option)])

    if command != "report" and chance(90):  # report's model is --model
        for _ in range(2 if command == "bench" and chance(60) else 1):
            argv.append(draw(st.sampled_from(GOOD_MODELS)) if chance(80) else draw(st.sampled_from(BAD_MODELS)))
    argv += BOUNDS.get(command, [])
    required = REQUIRED.get(command, ())
    if command == "package":
        required = (draw(st.sampled_from(required)),)
    for option in required:
        if chance(90):
            add(option)
    own = sorted(PARSER_OPTIONS[command])
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from(own)) if chance(85) else draw(st.sampled_from(ALL_OPTIONS))
        if option == "--help" and not chance(20):
            continue
        add(option)
    return argv


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(argv=command_lines())
def test_hostile_command_lines(pristine: Path, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="wina-fuzz-") as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(pristine, work)
        before = _tree(work)
        with contextlib.chdir(work):
            code, stderr = _run(argv)
        after = _tree(work)
    assert code in (0, 2), (argv, code, stderr)
    if code == 2:
        errors = [line for line in stderr.splitlines() if not line.startswith("[")]
        assert len(errors) == 1 and "error:" in errors[0], (argv, stderr)
        assert after == before, (argv, stderr, set(after) ^ set(before))
        return
    _check_writes(before, after, _outputs(argv))
