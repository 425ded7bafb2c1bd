"""Text for calibration and evaluation that needs no download.

The default text is the English help topics that every CPython ships in
`pydoc_data.topics` (about 0.5 MB of prose and code samples), so evaluation works
offline and on any machine. Pass a file for a real benchmark such as WikiText-2.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def default_text() -> str:
    """The pydoc help topics joined in sorted key order (deterministic across runs)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path: str | Path | None) -> str:
    """Read a UTF-8 text file, or return `default_text()` when path is None.

    Line ends are read as Python's text mode reads them: CRLF and CR become LF (the
    WikiText-2 files here end their lines with CRLF; kept, the CR tokens change the
    token stream and the perplexity: 29.85 instead of 30.37 for SmolLM2, 8 x 512).

    Raises ConfigError (one line: the problem and what to do) for a file that is
    missing, a folder, unreadable, not UTF-8, or holds no text.
    """
    if path is None:
        return default_text()
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--data {path} is a folder; give a UTF-8 text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--data {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--data {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--data {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise ConfigError(f"--data {path} holds no text; give a file with the text to run the model on")
    return text.replace("\r\n", "\n").replace("\r", "\n")
