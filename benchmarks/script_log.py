"""The results log of the benchmark scripts that run other commands (decode_cpu_int4.py,
genai_smollm2_builder.py): each command and the tail of its output, with repo-relative paths."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Log:
    """Collects the lines of the results file (and echoes them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])


def relative(arg: str) -> str:
    """A path inside the repo as the repo-relative path (the log names no machine's folders)."""
    if os.path.isabs(arg) and Path(arg).is_relative_to(REPO):
        return os.path.relpath(arg, REPO)
    return arg


def run(log: Log, command: list, *, tail: int = 12, env: dict | None = None) -> str:
    """Run `command` from the repo root; log it and the last `tail` lines of its output.

    Exits the script (SystemExit) when the command fails; returns its stdout otherwise.
    """
    shown = " ".join(shlex.quote(relative(str(c))) for c in command)
    log(f"$ {shown}")
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    output = (result.stdout + result.stderr).replace("\r", "\n").replace(f"{REPO}{os.sep}", "")
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines[-tail:]:
        log(f"  {line}")
    log(f"  (exit {result.returncode}, {time.perf_counter() - start:.1f} s)")
    if result.returncode != 0:
        raise SystemExit(f"failed: {shown}")
    return result.stdout
