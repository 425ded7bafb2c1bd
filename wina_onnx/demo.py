"""`wina-onnx demo`: the whole pipeline on the embedded SmolLM2-135M, end to end.

export -> calibrate (first half of the text) -> optimize (WINA and TEAL) -> perplexity
(second half of the text) and decode speed, dense and sparse side by side in one run.
Each method runs in `optimize`'s recipe (wina_onnx.recipe: calibrated thresholds refined
once inside the gated model, greedy per-MatMul allocation, grouped gates) and as the
plain port (uniform top-k).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import schema
from .progress import stage
from .recipe import ALLOCATE_UNIFORM, Recipe


@dataclass(frozen=True)
class Variant:
    """One optimized model of the demo: a name and the recipe's options that differ."""

    name: str
    mode: str
    gating: str | None = None  # None: the recipe's (calibrated thresholds)
    allocate: str | None = None  # None: the recipe's (greedy, from the calibration's error curves)


VARIANTS = (
    Variant("wina", schema.MODE_WINA),
    Variant("teal", schema.MODE_TEAL),
    Variant("wina-topk-uniform", schema.MODE_WINA, schema.GATING_TOPK, ALLOCATE_UNIFORM),
    Variant("teal-topk-uniform", schema.MODE_TEAL, schema.GATING_TOPK, ALLOCATE_UNIFORM),
)


def make_models(dense: Path, work_dir: Path, token_ids: np.ndarray, *, sparsity: float = 0.5,
                variants: tuple[Variant, ...] = VARIANTS, source: str = "the calibration text",
                threads: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Optimize `dense` once per variant into work_dir/<name>/model.onnx, through the recipe.

    One calibration (with the greedy error curves) on `token_ids` serves every variant;
    threshold gates are refined on the same text. Returns the written models by name.
    """
    from .calibrate.calibration import calibrate_model

    base = Recipe(sparsity=sparsity)
    calibration = calibrate_model(dense, token_ids=token_ids, windows=base.windows, window=base.window,
                                  threads=threads, progress=progress, curves=True, source=source)
    models = {}
    for variant in variants:
        out = work_dir / variant.name / "model.onnx"
        recipe = Recipe(mode=variant.mode, gating=variant.gating, allocate=variant.allocate, sparsity=sparsity)
        stage("demo", f"optimizing {variant.name} at sparsity {sparsity}", enabled=progress)
        recipe.optimize(dense, out, token_ids=token_ids, calibration=calibration, threads=threads,
                        progress=progress)
        models[variant.name] = out
    return models


def run_demo(
    work_dir: Path,
    *,
    sparsity: float = 0.5,
    windows: int = 4,
    data: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the pipeline in `work_dir` (reusing an earlier export) and print the comparison."""
    from .evaluation.bench import bench_models
    from .evaluation.perplexity import perplexity
    from .recipe import read_token_ids, text_source
    from .runtime.session import CausalLM

    work_dir.mkdir(parents=True, exist_ok=True)
    dense = work_dir / "dense" / "model.onnx"
    if not dense.is_file():
        from .export.optimum_export import export_model

        export_model(None, dense.parent)
    else:
        stage("demo", f"reusing the export in {dense.parent}", enabled=progress)

    ids = read_token_ids(dense, data)
    half = len(ids) // 2
    calib_ids, eval_ids = ids[:half], ids[half:]
    models = {"dense": dense, **make_models(dense, work_dir, calib_ids, sparsity=sparsity, threads=threads,
                                            progress=progress, source=f"first half of {text_source(data)}")}

    results: dict[str, dict] = {}
    for name, path in models.items():
        lm = CausalLM.from_path(path, threads=threads)
        result = perplexity(lm, eval_ids, window=512, max_windows=windows, progress=progress)
        results[name] = {"perplexity": result.perplexity, "tokens": result.tokens}
    speed = bench_models(models, prompt_tokens=64, decode_tokens=32, repeats=3, threads=threads)
    speed_json = speed.to_dict()

    print(f"\nSmolLM2-135M-Instruct, fp32, sparsity {sparsity}, perplexity on {windows} windows of 512 tokens "
          f"(second half of the text; calibration on the first half)")
    print(speed.table())
    print(f"\n{'model':<20}{'perplexity':>12}")
    for name, row in results.items():
        print(f"{name:<20}{row['perplexity']:>12.3f}")
    summary = {"sparsity": sparsity, "perplexity": results, "speed": speed_json}
    (work_dir / "demo-results.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
