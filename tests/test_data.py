"""wina_onnx.data.read_text: the text every command evaluates or calibrates on.

Line ends must not change the token stream: a file with CRLF line ends (as the
WikiText-2 files used by the benchmarks) reads as the same text with LF, as Python's
text mode reads it, so perplexities measured on it do not depend on how the file was
saved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wina_onnx.data import read_text

LINES = [" = Robert Boulter = ", "", " Robert Boulter is an English film , television and theatre actor . ", ""]


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_ends_read_as_lf(tmp_path: Path, newline: str) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(newline.join(LINES).encode("utf-8"))
    text = read_text(path)
    assert text == "\n".join(LINES)
    assert text == path.read_text(encoding="utf-8")  # Python's text mode: universal newlines


def test_mixed_line_ends_and_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes("a\r\nb\rc\nd é\r\n\r\n".encode("utf-8"))
    assert read_text(path) == "a\nb\nc\nd é\n\n"
