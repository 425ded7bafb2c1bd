"""`wina-onnx report`: PNG plots of quality results and allocation heatmaps."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'wina-onnx[report]')")

from conftest import REPO_ROOT  # noqa: E402

from wina_onnx import cli  # noqa: E402
from wina_onnx.passes.allocation import Allocation  # noqa: E402
from wina_onnx.evaluation.report import allocation_grid, read_quality  # noqa: E402


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"  # written whole
    return struct.unpack(">II", data[16:24])


def _not_blank(path: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # lines, text and colours, not an empty canvas


def test_quality_plot_of_committed_results(tmp_path: Path, capsys):
    results = REPO_ROOT / "benchmarks" / "results" / "quality_smollm2.json"
    lines, dense = read_quality(results)
    assert set(lines) == {"teal", "wina"} and dense == pytest.approx(36.1546, rel=1e-4)
    assert [s for s, _ in lines["wina"]] == [0.25, 0.4, 0.5, 0.65]
    out = tmp_path / "quality.png"
    assert cli.main(["report", "--quality", str(results), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    width, height = _png_size(out)
    assert width > 400 and height > 300
    _not_blank(out)


def test_family_field_groups_lines(tmp_path: Path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"results": [
        {"config": "dense", "mode": "dense", "sparsity": 0.0, "perplexity": 10.0},
        {"config": "a", "mode": "wina", "family": "wina greedy", "sparsity": 0.5, "perplexity": 12.0},
        {"config": "b", "mode": "wina", "family": "wina uniform", "sparsity": 0.5, "perplexity": 13.0},
        {"config": "c", "mode": "wina", "family": "wina uniform", "sparsity": 0.25, "perplexity": 11.0},
    ]}))
    lines, dense = read_quality(results)
    assert lines == {"wina greedy": [(0.5, 12.0)], "wina uniform": [(0.25, 11.0), (0.5, 13.0)]} and dense == 10.0
    out = tmp_path / "f.png"
    assert cli.main(["report", "--quality", str(results), "-o", str(out), "--title", "families"]) == 0
    _png_size(out)


def test_allocation_heatmap(tiny_llama_dir: Path, tmp_path: Path):
    allocation = Allocation(default=0.5, sparsity={"/model/layers.1/mlp/*": 0.7,
                                                   "/model/layers.0/self_attn/q_proj/MatMul": 0.2})
    path = tmp_path / "alloc.json"
    allocation.save(path)
    out = tmp_path / "heat.png"
    assert cli.main(["report", "--allocation", str(path), "--model", str(tiny_llama_dir / "model.onnx"),
                     "-o", str(out)]) == 0
    _png_size(out)
    _not_blank(out)
    names = [f"/model/layers.{i}/{part}/MatMul" for i in range(2)
             for part in ("self_attn/q_proj", "self_attn/k_proj", "mlp/down_proj")] + ["/lm_head/MatMul"]
    layers, roles, grid = allocation_grid(allocation, names)
    assert layers == [0, 1] and roles == ["q_proj", "k_proj", "down_proj"]
    assert grid == [[0.2, 0.5, 0.5], [0.5, 0.5, 0.7]]
    # Without a model only the file's exact names are placed; the other cells are empty.
    layers, roles, grid = allocation_grid(allocation, list(allocation.sparsity))
    assert layers == [0] and roles == ["q_proj"] and grid == [[0.2]]
    _, _, grid = allocation_grid(allocation, names[:1] + names[5:6])
    assert grid[0][0] == 0.2 and math.isnan(grid[0][1])


def test_errors(tmp_path: Path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"mode": "wina", "sparsity": 0.5}]}))
    assert cli.main(["report", "--quality", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "needs numeric" in capsys.readouterr().err
    assert cli.main(["report", "--quality", str(bad), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "must be a .png" in capsys.readouterr().err
    patterns = tmp_path / "p.json"
    Allocation(default=0.5, sparsity={"/model/layers.*/mlp/*": 0.7}).save(patterns)
    assert cli.main(["report", "--allocation", str(patterns), "-o", str(tmp_path / "y.png")]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
