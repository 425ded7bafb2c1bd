"""optimize's recipe: the defaults of `wina-onnx optimize`, in one place.

The command line, the demo and the Python API all build their models through `Recipe`,
so the same options give the same model. The defaults are the best configuration
measured (benchmarks/results/quality.json: SmolLM2-135M, WikiText-2): WINA scores with
weight norms on the k/gate projections (norm_on "reference"), calibrated thresholds with
greedy per-MatMul sparsities averaging 0.5 in every layer, refined once inside the gated
model, the gates that share an input grouped, no --transform. The calibration is made on
the given text (16 windows of 256 tokens) when no calibration file is given.

A model that cannot run on text here (no tokenizer.json beside it) and has no
calibration file falls back to uniform top-k gating and says so; refinement needs the
op library's gates (custom-op backend), and grouping too.

    from wina_onnx import Recipe
    Recipe(sparsity=0.5).optimize("dense/model.onnx", "wina/model.onnx", data="text.txt")
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import schema
from .errors import ConfigError
from .passes import Allocation, GateConfig, GateRecord, PassResult
from .passes.wina_gate import BACKEND_CUSTOM_OP, DEFAULT_SPARSITY, NORM_ON_REFERENCE

if TYPE_CHECKING:
    import onnx

    from .calibrate.calibration import Calibration
    from .calibrate.refine import Refinement

ALLOCATE_GREEDY = "greedy"
ALLOCATE_UNIFORM = "uniform"
ALLOCATES = (ALLOCATE_GREEDY, ALLOCATE_UNIFORM)
CALIBRATION_WINDOWS = 16  # windows of the calibration (and refinement) text
CALIBRATION_WINDOW = 256  # tokens per window
REFINE_ROUNDS = 1


def print_notice(message: str) -> None:
    """Say on stderr that the recipe chose something other than its default, and why."""
    print(f"[optimize] note: {message}", file=sys.stderr, flush=True)


def cannot_run_on_text(model: str | Path) -> str | None:
    """Why the model cannot be run on text here, so not calibrated or refined (None when it can)."""
    model = Path(model)
    if not (model.parent / "tokenizer.json").is_file():
        return f"{model} has no tokenizer.json beside it"
    return None


def text_source(data: str | Path | None) -> str:
    """The name of the calibration text recorded in the calibration and the model."""
    return Path(data).name if data else "pydoc help topics"


def read_token_ids(model: str | Path, data: str | Path | None) -> np.ndarray:
    """The text `data` (default: the pydoc help topics) as token ids of the tokenizer beside `model`."""
    from .data import read_text
    from .evaluation.perplexity import tokenize_text
    from .runtime.session import load_tokenizer

    return tokenize_text(load_tokenizer(Path(model).parent), read_text(data))


@dataclass(frozen=True)
class Recipe:
    """What `optimize` does, its defaults included; None means "the recipe's choice".

    gating: "threshold" (default; top-k with a notice when no calibration can be had)
    or "topk". allocate: "greedy" (default; uniform with a notice when the calibration
    has no error curves) or "uniform"; an allocation file given to `gate_config` wins.
    group: on where it applies (threshold gating, custom-op backend). refine_rounds: 1
    where it applies (threshold gates of the op library, a model that runs on text here).
    """

    mode: str = schema.MODE_WINA
    gating: str | None = None
    sparsity: float = DEFAULT_SPARSITY
    allocate: str | None = None
    norm_on: str = NORM_ON_REFERENCE
    backend: str = BACKEND_CUSTOM_OP
    group: bool | None = None
    refine_rounds: int | None = None
    windows: int = CALIBRATION_WINDOWS
    window: int = CALIBRATION_WINDOW
    transform: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def expected_gating(self, model: str | Path, *, calibrated: bool) -> str:
        """The gating `gate_config` will choose, known before anything is calibrated.

        calibrated: a calibration is given (else one is made here, where the model can run on text).
        """
        if self.gating:
            return self.gating
        if calibrated or cannot_run_on_text(model) is None:
            return schema.GATING_THRESHOLD
        return schema.GATING_TOPK

    def refine_rounds_for(self, model: str | Path, *, gating: str,
                          notice: Callable[[str], None] = print_notice) -> int:
        """How many refinement rounds gates of `gating` get (0 for none), with the recipe's
        notices; raises ConfigError for rounds asked where refinement cannot run."""
        rounds = self.refine_rounds
        reason = cannot_run_on_text(model)
        if rounds is None:
            if gating != schema.GATING_THRESHOLD:
                return 0
            if self.backend != BACKEND_CUSTOM_OP:
                notice(f"thresholds not refined inside the gated model: refinement reads the op library's "
                       f"gates, and --backend {self.backend} writes standard ops")
                return 0
            if reason is not None:
                notice(f"thresholds not refined inside the gated model: {reason}")
                return 0
            return REFINE_ROUNDS
        if rounds <= 0:
            return 0
        if gating != schema.GATING_THRESHOLD:
            raise ConfigError("--refine-rounds needs --gating threshold")
        if self.backend != BACKEND_CUSTOM_OP:
            raise ConfigError(f"--refine-rounds reads the op library's gates; --backend {self.backend} writes "
                              "standard ops (refine with --backend custom-op, or give --refine-rounds 0)")
        if reason is not None:
            raise ConfigError(f"--refine-rounds runs the model on text: {reason}")
        return rounds

    def refinement(self, model: str | Path, *, gating: str, token_ids: np.ndarray | None = None,
                   threads: int | None = None,
                   notice: Callable[[str], None] = print_notice) -> "Refinement | None":
        """The threshold refinement for gates of `gating` (None for none; see refine_rounds_for).
        token_ids: the refinement text (default: the pydoc help topics)."""
        rounds = self.refine_rounds_for(model, gating=gating, notice=notice)
        if rounds == 0:
            return None
        from .calibrate.refine import Refinement

        ids = read_token_ids(model, None) if token_ids is None else token_ids
        return Refinement(token_ids=ids, windows=self.windows, window=self.window, rounds=rounds, threads=threads)

    def gate_config(self, model: str | Path, *, calibration: "Calibration | None" = None,
                    allocation: Allocation | None = None, token_ids: np.ndarray | None = None,
                    source: str | None = None, threads: int | None = None, progress: bool = True,
                    notice: Callable[[str], None] = print_notice) -> GateConfig:
        """The gate pass's options for `model`, calibrating it here on `token_ids` when the
        recipe needs a calibration and none is given (source: the text's name).

        Raises ConfigError when an explicit choice (gating, allocate) needs a calibration
        that cannot be had; the recipe's own defaults fall back instead, with a notice.
        """
        if allocation is not None and self.allocate:
            raise ConfigError("an allocation file and --allocate are exclusive")
        gating = self.gating or schema.GATING_THRESHOLD
        allocate = None if allocation is not None else (self.allocate or ALLOCATE_GREEDY)
        needs_histograms = gating == schema.GATING_THRESHOLD
        needs_curves = allocate == ALLOCATE_GREEDY
        if calibration is None and (needs_histograms or needs_curves):
            reason = cannot_run_on_text(model)
            if reason is None:
                from .calibrate.calibration import calibrate_model

                calibration = calibrate_model(
                    model, token_ids=read_token_ids(model, None) if token_ids is None else token_ids,
                    windows=self.windows, window=self.window, include=self.include, exclude=self.exclude,
                    threads=threads, progress=progress, transform=self.transform, curves=needs_curves,
                    source=source or text_source(None))
            elif needs_histograms and self.gating:
                raise ConfigError(f"--gating threshold needs a calibration file: {reason}, so it cannot be "
                                  "calibrated here; give --calibration FILE (wina-onnx calibrate)")
            elif needs_curves and self.allocate:
                raise ConfigError(f"--allocate greedy needs a calibration: {reason}, so it cannot be calibrated "
                                  "here; give --calibration FILE (wina-onnx calibrate --allocate greedy)")
            else:
                gating = schema.GATING_TOPK if needs_histograms else gating
                allocate = ALLOCATE_UNIFORM
                notice(f"{reason}, so it is not calibrated here: {gating} gating, uniform allocation "
                       "(give --calibration FILE for threshold gating and greedy allocation)")
        if allocation is None:
            allocation = self._allocation(allocate, calibration, notice)
        return GateConfig(mode=self.mode, gating=gating, allocation=allocation, backend=self.backend,
                          norm_on=self.norm_on, transform=self.transform, include=list(self.include),
                          exclude=list(self.exclude), calibration=calibration, group=self.group)

    def _allocation(self, allocate: str, calibration: "Calibration | None",
                    notice: Callable[[str], None]) -> Allocation:
        if allocate != ALLOCATE_GREEDY:
            return Allocation.uniform(self.sparsity)
        if calibration.curves is None:
            if self.allocate == ALLOCATE_GREEDY:
                raise ConfigError("--allocate greedy needs a calibration with error curves: "
                                  "`wina-onnx calibrate --allocate greedy`, or no --calibration to calibrate here")
            notice(f"the calibration ({calibration.source}) has no error curves (made without --allocate "
                   "greedy): uniform allocation")
            return Allocation.uniform(self.sparsity)
        return calibration.curves.allocate(self.sparsity, mode=self.mode, norm_on=self.norm_on)

    def optimize(self, model: str | Path, output: str | Path, *, data: str | Path | None = None,
                 token_ids: np.ndarray | None = None, calibration: "Calibration | None" = None,
                 allocation: Allocation | None = None, threads: int | None = None, progress: bool = True,
                 force: bool = False, external_data: str = "auto", quantized: dict | None = None,
                 header: "onnx.ModelProto | None" = None,
                 notice: Callable[[str], None] = print_notice) -> PassResult[GateRecord]:
        """Write the optimized `model` to `output` (tokenizer and config files copied beside it).

        The text for calibration and refinement is `token_ids`, else the file `data`
        (default: the pydoc help topics), read once. calibration, allocation: from files
        (`wina-onnx calibrate`, an allocation JSON), else made here as the recipe says.
        header, force, external_data, quantized: as `optimize.optimize_model`.
        Returns the gate pass's result.
        """
        from .optimize import check_library_needed, check_paths, optimize_model

        if header is None:
            header = check_paths(Path(model), Path(output), force=force)
        gating = self.expected_gating(model, calibrated=calibration is not None)
        check_library_needed(Path(model), Path(output), self.backend,
                             refine=self.refine_rounds_for(model, gating=gating, notice=lambda _: None) > 0)
        needs_text = cannot_run_on_text(model) is None and (calibration is None or gating == schema.GATING_THRESHOLD)
        if token_ids is None and needs_text:
            token_ids = read_token_ids(model, data)
        refine = self.refinement(model, gating=gating, token_ids=token_ids, threads=threads, notice=notice)
        config = self.gate_config(model, calibration=calibration, allocation=allocation, token_ids=token_ids,
                                  source=text_source(data), threads=threads, progress=progress, notice=notice)
        return optimize_model(model, output, config, force=force, progress=progress, external_data=external_data,
                              refine=refine, quantized=quantized, header=header)
