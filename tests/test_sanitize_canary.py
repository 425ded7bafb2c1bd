"""Under scripts/sanitize.sh: the op tests really ran against the ASan + UBSan library.

Skipped (with its reason) in a normal run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.op_models import run, session, wina_model

import wina_onnx

pytestmark = pytest.mark.skipif(
    os.environ.get("WINA_ONNX_SANITIZED") != "1", reason="checks the sanitizer build; run scripts/sanitize.sh"
)


def test_sanitized_library_is_the_one_loaded() -> None:
    library = Path(wina_onnx.get_library_path())
    assert library == Path(os.environ["WINA_ONNX_LIBRARY"]).resolve()
    b = np.eye(4, dtype=np.float32)
    run(session(wina_model(b, np.ones(4, np.float32), gating="topk", k=2)), np.ones((1, 4), np.float32))
    maps = Path("/proc/self/maps").read_text()
    assert str(library) in maps, "the op library was not loaded from WINA_ONNX_LIBRARY"
    assert "libasan" in maps and "libubsan" in maps, "the sanitizer runtimes are not loaded"
