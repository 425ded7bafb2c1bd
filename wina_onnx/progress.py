"""A tiny dependency-free progress reporter for long commands.

It writes one line per step to stderr (never stdout, so a command's results stay
machine-readable) with the count, the elapsed time and an ETA, and nothing at all
when disabled. Lines rather than a redrawn bar, because the output often ends up in
CI logs where carriage returns are unreadable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Report progress of `total` steps (or an unknown number when total is None).

    Usage:
        progress = Progress("perplexity", total=8, enabled=True)
        for ...:
            ...
            progress.step("window 3 nll=2.31")
        progress.done()

    `min_interval` throttles lines when steps are very fast (the last step always prints).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.0,
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.min_interval = min_interval
        self.count = 0
        self.start = time.perf_counter()
        self._last_print = -float("inf")

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was created."""
        return time.perf_counter() - self.start

    def _write(self, line: str) -> None:
        if not self.enabled:
            return
        stream = self.stream if self.stream is not None else sys.stderr
        print(line, file=stream, flush=True)

    def message(self, text: str) -> None:
        """Print a free-form stage message, prefixed with the label and elapsed time."""
        self._write(f"[{self.label}] {text} ({_fmt_seconds(self.elapsed)})")

    def step(self, detail: str = "", n: int = 1) -> None:
        """Count `n` finished steps and print a line with count/total, elapsed and ETA."""
        self.count += n
        now = time.perf_counter()
        last = self.total is not None and self.count >= self.total
        if not last and now - self._last_print < self.min_interval:
            return
        self._last_print = now
        elapsed = now - self.start
        if self.total:
            remaining = elapsed / self.count * (self.total - self.count) if self.count else 0.0
            head = f"{self.count}/{self.total} elapsed {_fmt_seconds(elapsed)} eta {_fmt_seconds(remaining)}"
        else:
            head = f"{self.count} elapsed {_fmt_seconds(elapsed)}"
        self._write(f"[{self.label}] {head}" + (f" {detail}" if detail else ""))

    def done(self, detail: str = "") -> None:
        """Print a closing line with the total time."""
        self._write(
            f"[{self.label}] done in {_fmt_seconds(self.elapsed)}" + (f": {detail}" if detail else "")
        )


def stage(label: str, text: str, *, enabled: bool = True) -> None:
    """Print one stage message to stderr (for steps that have no count)."""
    if enabled:
        print(f"[{label}] {text}", file=sys.stderr, flush=True)
