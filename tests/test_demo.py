"""The README's main job, `wina-onnx demo`, end to end on SmolLM2 (reusing the cached export)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_prints_dense_wina_teal_perplexity_and_speed(smollm2_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "dense").symlink_to(smollm2_dir, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-m", "wina_onnx.cli", "demo", "--work-dir", str(tmp_path), "--windows", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo-results.json").read_text())
    ppl = {name: row["perplexity"] for name, row in summary["perplexity"].items()}
    assert set(ppl) == {"dense", "wina", "teal", "wina-topk-uniform", "teal-topk-uniform"}
    assert all(math.isfinite(v) for v in ppl.values())
    assert all(ppl[name] > ppl["dense"] for name in ppl if name != "dense")  # sparsity costs some quality
    for name in ppl:
        assert name in result.stdout
    assert "decode ms/token" in result.stdout
