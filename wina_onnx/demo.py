"""`wina-onnx demo`: the whole pipeline on the embedded SmolLM2-135M, end to end.

export -> calibrate (first half of the text) -> optimize (WINA and TEAL) -> perplexity
(second half of the text) and decode speed, dense and sparse side by side in one run.
Each method runs in `optimize`'s default configuration (calibrated thresholds refined
once inside the gated model, greedy per-MatMul allocation) and as the plain port
(uniform top-k).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import schema
from .calibrate.allocation import Allocation
from .progress import stage


@dataclass(frozen=True)
class Variant:
    """One optimized model of the demo."""

    name: str
    mode: str
    gating: str
    allocation: str  # "greedy" (from the calibration's error curves) or "uniform"


VARIANTS = (
    Variant("wina", schema.MODE_WINA, schema.GATING_THRESHOLD, "greedy"),
    Variant("teal", schema.MODE_TEAL, schema.GATING_THRESHOLD, "greedy"),
    Variant("wina-topk-uniform", schema.MODE_WINA, schema.GATING_TOPK, "uniform"),
    Variant("teal-topk-uniform", schema.MODE_TEAL, schema.GATING_TOPK, "uniform"),
)


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
    from .calibrate.calibration import calibrate_model
    from .data import read_text
    from .evaluation.perplexity import perplexity, tokenize_text
    from .optimize import optimize_model
    from .passes import GateConfig
    from .calibrate.refine import Refinement
    from .runtime.session import CausalLM, load_tokenizer

    work_dir.mkdir(parents=True, exist_ok=True)
    dense = work_dir / "dense" / "model.onnx"
    if not dense.is_file():
        from .export.optimum_export import export_model

        export_model(None, dense.parent)
    else:
        stage("demo", f"reusing the export in {dense.parent}", enabled=progress)

    ids = tokenize_text(load_tokenizer(dense.parent), read_text(data))
    half = len(ids) // 2
    calib_ids, eval_ids = ids[:half], ids[half:]
    calibration = calibrate_model(dense, token_ids=calib_ids, windows=16, window=256, threads=threads,
                                  progress=progress, curves=True,
                                  source=f"first half of {Path(data).name if data else 'pydoc help topics'}")
    models = {"dense": dense}
    for variant in VARIANTS:
        out = work_dir / variant.name / "model.onnx"
        # norm_on "reference": `optimize`'s default (weight norms on the k/gate projections).
        if variant.allocation == "greedy":
            allocation = calibration.curves.allocate(sparsity, mode=variant.mode, norm_on="reference")
        else:
            allocation = Allocation.uniform(sparsity)
        config = GateConfig(mode=variant.mode, gating=variant.gating, allocation=allocation,
                            calibration=calibration, norm_on="reference")
        # `optimize`'s default: threshold gates refined once, on the calibration text.
        refine = (Refinement(token_ids=calib_ids, windows=16, window=256, rounds=1, threads=threads)
                  if variant.gating == schema.GATING_THRESHOLD else None)
        stage("demo", f"optimizing {variant.name} at sparsity {sparsity}", enabled=progress)
        optimize_model(dense, out, config, progress=progress, refine=refine)
        for sidecar in dense.parent.glob("*.json"):
            (out.parent / sidecar.name).write_bytes(sidecar.read_bytes())
        models[variant.name] = out

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
