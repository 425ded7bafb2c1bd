"""Progress of long commands on stderr, and quiet third-party libraries.

Progress goes to stderr (never stdout, so a command's results stay machine-readable),
with the count, the elapsed time and an ETA, and nothing at all when disabled. On a
terminal one line is redrawn in place; piped into a file or a CI log (where carriage
returns are unreadable) a step prints a line only every `PIPED_INTERVAL` seconds, so a
command prints its stage lines and one closing line per long step.

`third_party_quiet()` hides the warnings and log records of the libraries wina-onnx
drives (Optimum, transformers, PyTorch's exporter, ONNX Runtime), which a user of
wina-onnx cannot act on; the command line turns it off with -v.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from typing import Iterator, TextIO

# Piped output: at most one step line per this many seconds (the closing line always prints).
PIPED_INTERVAL = 30.0
# On a terminal: at most this many redraws per second.
_LIVE_INTERVAL = 0.1
_CLEAR_LINE = "\r\x1b[K"


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Report progress of `total` steps (or an unknown number when total is None).

    Usage:
        progress = Progress("perplexity", total=8, enabled=True)
        for ...:
            ...
            progress.step("window 3 nll=2.31")
        progress.done()

    live: redraw one line in place (default: when the stream is a terminal).
    min_interval: seconds between step lines when not live (default: PIPED_INTERVAL;
    0 prints every step).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float | None = None,
        live: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.live = _is_terminal(self._stream()) if live is None else live
        if min_interval is None:
            min_interval = _LIVE_INTERVAL if self.live else PIPED_INTERVAL
        self.min_interval = min_interval
        self.count = 0
        self.start = time.perf_counter()
        self._last_print = self.start if not self.live else -float("inf")
        self._drawn = False  # a live line is on screen, not yet ended

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was created."""
        return time.perf_counter() - self.start

    def _write(self, line: str, *, redraw: bool = False) -> None:
        if not self.enabled:
            return
        stream = self._stream()
        if redraw:  # live: replace the line on screen
            stream.write(_CLEAR_LINE + line)
            self._drawn = True
        else:
            stream.write((_CLEAR_LINE if self._drawn else "") + line + "\n")
            self._drawn = False
        stream.flush()

    def message(self, text: str) -> None:
        """Print a free-form stage message, prefixed with the label and elapsed time."""
        self._write(f"[{self.label}] {text} ({_fmt_seconds(self.elapsed)})")

    def step(self, detail: str = "", n: int = 1) -> None:
        """Count `n` finished steps; show count/total, elapsed and ETA (throttled, see the class)."""
        self.count += n
        now = time.perf_counter()
        last = self.total is not None and self.count >= self.total
        if now - self._last_print < self.min_interval and not (last and self.live):
            return
        self._last_print = now
        elapsed = now - self.start
        if self.total:
            remaining = elapsed / self.count * (self.total - self.count) if self.count else 0.0
            head = f"{self.count}/{self.total} elapsed {_fmt_seconds(elapsed)} eta {_fmt_seconds(remaining)}"
        else:
            head = f"{self.count} elapsed {_fmt_seconds(elapsed)}"
        self._write(f"[{self.label}] {head}" + (f" {detail}" if detail else ""), redraw=self.live)

    def done(self, detail: str = "") -> None:
        """Print a closing line with the total time (on a terminal, in place of the live line)."""
        self._write(
            f"[{self.label}] done in {_fmt_seconds(self.elapsed)}" + (f": {detail}" if detail else "")
        )


def stage(label: str, text: str, *, enabled: bool = True) -> None:
    """Print one stage message to stderr (for steps that have no count)."""
    if enabled:
        print(f"[{label}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def third_party_quiet(enabled: bool = True) -> Iterator[None]:
    """Within the block, hide other libraries' Python warnings (TracerWarning, UserWarning,
    FutureWarning, ...) and log records below CRITICAL (Optimum's "values not close enough",
    transformers' deprecation notes), and ONNX Runtime's own log below errors.

    wina-onnx's own warnings still show (it logs nothing). enabled=False (the CLI's -v)
    changes nothing. Logging is muted process-wide (logging.disable) rather than per
    logger, because transformers resets its loggers' levels when it is first imported.
    """
    if not enabled:
        yield
        return
    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)
    ort_severity = _set_ort_severity(3)  # errors and fatal only
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"wina_onnx(\.|$)")
            yield
    finally:
        logging.disable(disabled)
        if ort_severity is not None:
            _set_ort_severity(ort_severity)


def _set_ort_severity(severity: int) -> int | None:
    """Set ONNX Runtime's default log severity; return the one before (None without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    # ORT has no getter; its default is 2 (warnings).
    ort.set_default_logger_severity(severity)
    return 2
