"""Text for calibration and evaluation that needs no download.

The default text is the English help topics that every CPython ships in
`pydoc_data.topics` (about 0.5 MB of prose and code samples), so evaluation works
offline and on any machine. Pass a file for a real benchmark such as WikiText-2.
"""

from __future__ import annotations

from pathlib import Path


def default_text() -> str:
    """The pydoc help topics joined in sorted key order (deterministic across runs)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path: str | Path | None) -> str:
    """Read a UTF-8 text file, or return `default_text()` when path is None."""
    if path is None:
        return default_text()
    return Path(path).read_text(encoding="utf-8")
