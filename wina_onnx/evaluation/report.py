"""PNG plots of results (`wina-onnx report`): perplexity vs sparsity, per-layer sparsity heatmap.

Needs matplotlib (the `report` extra); it is imported only here, with the Agg backend.

Quality results JSON (what benchmarks/quality_smollm2.py writes):
    {"results": [{"config": "wina-50", "mode": "wina", "sparsity": 0.5, "perplexity": 63.0, ...}, ...]}
Lines are grouped by each result's "family" when present, else by its "mode"; results
with mode "dense" (or sparsity 0 and no family) are drawn as a horizontal reference line.

Allocation heatmap: rows are decoder layers, columns projection roles, the colour the
sparsity the allocation file gives each MatMul. Node names come from MODEL.onnx (every
MatMul the pass recognises as a projection) or, without a model, from the exact node
names in the file.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .. import schema
from ..errors import ConfigError
from ..gates import read_gate
from ..passes.allocation import Allocation


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("matplotlib is not installed: pip install 'wina-onnx[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_quality(path: str | Path) -> tuple[dict[str, list[tuple[float, float]]], float | None]:
    """({family: [(sparsity, perplexity), ...] sorted}, dense perplexity or None) of a results file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not results:
        raise ConfigError(f"{path} has no \"results\" list")
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    dense = None
    for i, r in enumerate(results):
        try:
            sparsity, ppl = float(r["sparsity"]), float(r["perplexity"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: result {i} needs numeric \"sparsity\" and \"perplexity\"") from None
        family = r.get("family") or r.get("mode")
        if family == "dense" or (family is None and sparsity == 0.0):
            dense = ppl
            continue
        if family is None:
            raise ConfigError(f"{path}: result {i} has neither \"family\" nor \"mode\"")
        lines[str(family)].append((sparsity, ppl))
    if not lines:
        raise ConfigError(f"{path} has only dense results: nothing to plot against sparsity")
    return {k: sorted(v) for k, v in lines.items()}, dense


def plot_quality(results: str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of perplexity (log scale) against sparsity, one line per family."""
    _check_png(out)
    lines, dense = read_quality(results)
    plt = _pyplot()
    many = len(lines) > 8
    # Tall enough for a legend of one line per family beside the axes (about 0.16 in each).
    size = (10.5, max(5.6, 0.16 * (len(lines) + 1) + 0.9)) if many else (6.4, 4.4)
    fig, ax = plt.subplots(figsize=size, dpi=120)
    colors = plt.get_cmap("tab20").colors
    for i, (family, points) in enumerate(sorted(lines.items())):
        xs, ys = zip(*points)
        # A grid's families differ in several parts: colour per family, dashes for the
        # transformed model, square markers for top-k, so 20+ lines stay apart.
        style = "--" if "rotated" in family else "-"
        marker = "s" if "topk" in family else "o"
        ax.plot([100 * x for x in xs], ys, linestyle=style, marker=marker, markersize=4,
                color=colors[i % len(colors)], label=family)
    if dense is not None:
        ax.axhline(dense, color="gray", linestyle=":", linewidth=1, label=f"dense ({dense:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title or Path(results).stem)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        fig.tight_layout()
    else:
        ax.legend()
    return _save(fig, plt, out)


def allocation_grid(allocation: Allocation, node_names: list[str]) -> tuple[list[int], list[str], list[list[float]]]:
    """(layers, roles, sparsity[layer][role], NaN where no MatMul) for the projections among node_names."""
    from ..passes.roles import ROLES, classify

    cells: dict[tuple[int, str], float] = {}
    for name in node_names:
        role = classify(name)
        if role is not None and role.layer is not None:
            cells[role.layer, role.kind] = allocation.for_node(name)
    if not cells:
        raise ConfigError("no decoder projection (layer and role) among the node names; pass --model MODEL.onnx")
    layers = sorted({layer for layer, _ in cells})
    roles = [r for r in ROLES if any(kind == r for _, kind in cells)]
    grid = [[cells.get((layer, r), math.nan) for r in roles] for layer in layers]
    return layers, roles, grid


def _matmul_names(model_path: str | Path) -> list[str]:
    from ..modelio import load_model
    from ..passes.candidates import node_display_name

    model = load_model(model_path, load_weights=False)
    names = []
    for node in model.graph.node:
        gate = read_gate(node)
        if gate is not None:  # a group: the gates it replaced, by name
            names += gate.member_names()
        elif node.op_type in ("MatMul", schema.MATMUL_NBITS_OP_TYPE):
            names.append(node_display_name(node))
    return names


def plot_allocation(allocation_path: str | Path, out: str | Path, *, model: str | Path | None = None,
                    title: str | None = None) -> Path:
    """Write a PNG heatmap of the allocation's sparsity per layer (rows) and role (columns)."""
    _check_png(out)
    allocation = Allocation.load(allocation_path)
    names = _matmul_names(model) if model is not None else list(allocation.sparsity)
    layers, roles, grid = allocation_grid(allocation, names)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(roles) + 2.2, 0.28 * len(layers) + 1.8), dpi=120)
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(roles)), roles, rotation=30, ha="right")
    step = max(1, len(layers) // 16)
    ax.set_yticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
    ax.set_ylabel("layer")
    ax.set_title(title or f"sparsity per MatMul: {Path(allocation_path).name}")
    fig.colorbar(image, ax=ax, label="sparsity")
    return _save(fig, plt, out)


def _check_png(out: str | Path) -> None:
    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"{out}: the output must be a .png file")


def _save(fig, plt, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
