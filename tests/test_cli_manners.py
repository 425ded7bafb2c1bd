"""How the CLI talks: progress, --help, option names, and silence from other libraries.

- Progress redraws one line in place on a terminal and prints a few lines when piped.
- `wina-onnx --help` gives each command's summary whole; every option has help text,
  and every option that takes a value says its default (or is required).
- The same thing has the same option name in every command; old spellings still parse.
- Export and optimize print their own lines only: other libraries' warnings and logs
  (TracerWarnings, Optimum's validation, transformers' notes) need -v.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from wina_onnx import cli
from wina_onnx.progress import Progress, third_party_quiet


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    """The visible options of a command (not -h, not hidden aliases)."""
    return [a for a in sub._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]


# ----------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = _Terminal()
    bar = Progress("job", total=50, stream=stream, min_interval=0)
    assert bar.live
    for _ in range(50):
        bar.step("detail")
    bar.done("ok")
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("[job] done in " + text.rsplit("done in ", 1)[1])
    assert text.count("\r\x1b[K") == 51 and "[job] 50/50" in text  # every redraw clears the line first


def test_progress_piped_prints_the_closing_line_only_when_fast() -> None:
    stream = io.StringIO()
    bar = Progress("job", total=200, stream=stream)
    assert not bar.live
    for _ in range(200):
        bar.step()
    bar.message("a stage")
    bar.done()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[job] a stage") and lines[1].startswith("[job] done in")
    assert "\r" not in stream.getvalue()


def test_progress_piped_prints_a_step_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 10))  # each call 10 s later
    monkeypatch.setattr("wina_onnx.progress.time.perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    bar = Progress("job", total=9, stream=stream)  # created at t=0, steps at 10, 20, ... 90
    for _ in range(9):
        bar.step()
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["3/9", "6/9", "9/9"]


def _optimize_args(tiny_llama_dir: Path, out: Path) -> list[str]:
    return ["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--windows", "2", "--window", "64"]


def test_optimize_piped_prints_a_few_lines(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Calibration, greedy curves and refinement each end with one line; no third-party output."""
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", *_optimize_args(tiny_llama_dir, tmp_path / "o.onnx")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) <= 12, result.stderr
    assert all(line.startswith(("[optimize]", "[calibrate]", "[greedy curves]", "[refine thresholds"))
               for line in lines), result.stderr


def test_calibrate_on_a_terminal_updates_in_place(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "wina_onnx.cli", "calibrate", str(tiny_llama_dir / "model.onnx"),
             "-o", str(tmp_path / "c.npz"), "--windows", "8", "--window", "32"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=follower, timeout=600)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    screen = b"".join(chunks).decode()
    assert "\r\x1b[K[calibrate]" in screen and "[calibrate] done in" in screen
    assert screen.count("\n") <= 3, screen  # the steps replaced each other


# ----------------------------------------------------------------------------- help
def test_every_command_summary_is_whole() -> None:
    parser = cli.build_parser()
    text = "".join(parser.format_help().split())  # argparse wraps lines, even at hyphens
    for name, sub in _subcommands().items():
        doc = sub.description.split("\n\n")[0]
        assert doc.endswith((".", ")")) and "".join(doc.split()) in text, name
    assert "oneWinaSparseMatMulGroupeach:--group)." in text  # optimize's, cut mid-sentence before


def test_every_option_has_help_and_its_default() -> None:
    missing = []
    for name, sub in _subcommands().items():
        one_of = {a for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in _options(sub):
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            required = action.required or action in one_of
            if not action.help:
                missing.append(f"{label}: no help")
            elif (action.option_strings and action.nargs != 0 and not required
                  and "default" not in action.help.lower()):
                missing.append(f"{label}: no default in its help")
    assert not missing, "\n".join(missing)


# ----------------------------------------------------------------------------- option names
# What the options mean -> the commands that have it; each must spell it the same.
SAME_NAME = {
    "--windows": ("calibrate", "optimize", "eval", "demo"),  # how many windows of text
    "--window": ("calibrate", "optimize", "eval"),  # tokens per window
    "--sparsity": ("calibrate", "optimize", "demo"),
    "--data": ("calibrate", "optimize", "eval", "demo"),
    "--include": ("calibrate", "optimize"),
    "--exclude": ("calibrate", "optimize"),
    "--mode": ("calibrate", "optimize"),
    "--norm-on": ("calibrate", "optimize"),
    "--transform": ("calibrate", "optimize"),
    "--threads": ("calibrate", "eval", "generate", "bench", "demo"),
    "--json": ("optimize", "eval", "bench", "inspect"),
    "--quiet": ("export", "calibrate", "optimize", "eval", "bench", "demo"),
    "--verbose": ("export", "calibrate", "optimize", "eval", "generate", "bench", "inspect", "demo", "package",
                  "report"),
}


def test_option_names_agree_across_commands() -> None:
    subs = _subcommands()
    for option, commands in SAME_NAME.items():
        for name in commands:
            strings = {s for a in _options(subs[name]) for s in a.option_strings}
            assert option in strings, f"{name} has no {option}"
    # Optimize's windows are calibrate's (same defaults), whatever they are called inside.
    calibrate = {a.option_strings[0]: a.default for a in _options(subs["calibrate"]) if a.option_strings}
    optimize = {a.option_strings[0]: a.default for a in _options(subs["optimize"]) if a.option_strings}
    assert calibrate["--windows"] == optimize["--windows"] and calibrate["--window"] == optimize["--window"]


@pytest.mark.parametrize("argv, dest, value", [
    (["optimize", "m.onnx", "-o", "o.onnx", "--calib-windows", "3"], "windows", 3),
    (["optimize", "m.onnx", "-o", "o.onnx", "--calib-window", "64"], "window", 64),
    (["optimize", "m.onnx", "-o", "o.onnx", "--windows", "3"], "windows", 3),
    (["calibrate", "m.onnx", "-o", "c.npz", "--target-sparsity", "0.4"], "target_sparsity", 0.4),
    (["calibrate", "m.onnx", "-o", "c.npz", "--sparsity", "0.4"], "target_sparsity", 0.4),
])
def test_old_spellings_still_parse_hidden(argv: list[str], dest: str, value) -> None:
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    if argv[-2] in ("--calib-windows", "--calib-window", "--target-sparsity"):
        assert argv[-2] not in _subcommands()[argv[0]].format_help()
    defaults = cli.build_parser().parse_args(argv[:4])
    assert getattr(defaults, dest) == {"windows": 16, "window": 256, "target_sparsity": None}[dest]


# ----------------------------------------------------------------------------- quiet
def test_third_party_warnings_and_logs_need_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("optimum.exporters.onnx.convert")
    logger.addHandler(handler)

    def emit() -> None:
        warnings.warn_explicit("Converting a tensor to a Python boolean", UserWarning, "cache_utils.py", 132,
                               module="transformers.cache_utils")
        logger.error("\t\t-[x] values not close enough, max diff: 1e-3 (atol: 1e-5)")
        warnings.warn_explicit("a note of ours", UserWarning, "optimize.py", 1, module="wina_onnx.optimize")

    def shown(enabled: bool) -> str:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with third_party_quiet(enabled):
                emit()
        return capsys.readouterr().err + "".join(str(w.message) for w in seen)

    try:
        quiet, verbose = shown(True), shown(False)
    finally:
        logger.removeHandler(handler)
    assert "a note of ours" in quiet and "Python boolean" not in quiet and "not close enough" not in quiet
    assert "a note of ours" in verbose and "Python boolean" in verbose and "not close enough" in verbose
    assert logging.root.manager.disable == logging.NOTSET  # restored


def test_export_prints_its_own_lines_only(tiny_llama_hf_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", "export", str(tiny_llama_hf_dir),
                             "-o", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() and all(line.startswith("[export]") for line in result.stderr.splitlines()), \
        result.stderr
