"""Calibration: the distribution of gate scores at every target MatMul, in bounded memory.

The model runs in ONNX Runtime over calibration text with the input of every target
MatMul added as a graph output. For each target, two histograms are kept: of |x_i|
(TEAL's score) and of |x_i| * ||B[i, :]||_2 (WINA's). Bins are logarithmic, 64 per
octave from 2^-40 to 2^24 (a bin spans 1.1% of its value), plus one bin for zero, so
memory is fixed whatever the amount of text. The threshold for sparsity s is the
s-quantile of the histogram, interpolated inside its bin.

File format: a .npz with one int64 array of counts per (target, mode) and a JSON
header (`meta`) naming the targets, their K and the calibration source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import onnx

from .. import schema
from ..errors import ConfigError

if TYPE_CHECKING:
    from .greedy import ActivationSample, ErrorCurves

LOG2_MIN = -40
LOG2_MAX = 24
BINS_PER_OCTAVE = 64
NUM_BINS = (LOG2_MAX - LOG2_MIN) * BINS_PER_OCTAVE + 1  # bin 0 holds zeros and underflow
FORMAT = "wina-onnx-calibration"


def histogram_of(scores: np.ndarray) -> np.ndarray:
    """Counts of `scores` (non-negative) in the calibration bins."""
    flat = np.asarray(scores, dtype=np.float32).ravel()
    flat = np.where(np.isnan(flat), np.float32(np.inf), flat)
    with np.errstate(divide="ignore"):
        position = (np.log2(flat) - LOG2_MIN) * BINS_PER_OCTAVE
    bins = np.where(flat > 0, np.clip(np.floor(position), 0, NUM_BINS - 2) + 1, 0).astype(np.int64)
    return np.bincount(bins, minlength=NUM_BINS).astype(np.int64)


def _bin_edges(index: int) -> tuple[float, float]:
    """Lower and upper score edge of bin `index` (>= 1)."""
    low = 2.0 ** (LOG2_MIN + (index - 1) / BINS_PER_OCTAVE)
    return low, low * 2.0 ** (1.0 / BINS_PER_OCTAVE)


def quantile(counts: np.ndarray, fraction: float) -> float:
    """Score below which `fraction` of the counted scores lie (log-interpolated in a bin)."""
    total = int(counts.sum())
    if total == 0:
        raise ConfigError("empty histogram: the calibration saw no scores for this MatMul")
    target = fraction * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, len(counts) - 1)
    if index == 0:
        return 0.0
    below = cumulative[index - 1]
    inside = counts[index]
    low, high = _bin_edges(index)
    position = 0.0 if inside == 0 else float(np.clip((target - below) / inside, 0.0, 1.0))
    return float(low * (high / low) ** position)


@dataclass
class Calibration:
    """Score histograms of each target MatMul, keyed by node name, for both modes."""

    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    features: dict[str, int] = field(default_factory=dict)
    source: str = ""
    tokens: int = 0
    transformed: bool = False  # calibrated on the model after --transform (passes.rotate)
    curves: "ErrorCurves | None" = None  # greedy allocation's error curves (calibrate --allocate greedy)

    def add(self, node_name: str, mode: str, scores: np.ndarray) -> None:
        """Accumulate `scores` into the histogram of (node, mode)."""
        per_mode = self.counts.setdefault(node_name, {})
        hist = histogram_of(scores)
        per_mode[mode] = per_mode[mode] + hist if mode in per_mode else hist

    def threshold(self, node_name: str, mode: str, sparsity: float) -> float:
        """Threshold that masks a fraction `sparsity` of the calibration scores."""
        if sparsity <= 0.0:
            return -1.0  # every score (>= 0, NaN as +inf) exceeds it: nothing masked
        try:
            counts = self.counts[node_name][mode]
        except KeyError:
            raise ConfigError(f"the calibration has no {mode} scores for {node_name}") from None
        return quantile(counts, sparsity)

    def check_covers(self, node_names: Iterable[str]) -> None:
        """Raise ConfigError unless every node has histograms (the file fits the model)."""
        missing = [name for name in node_names if name not in self.counts]
        if missing:
            raise ConfigError(
                f"the calibration file does not match this model: no scores for {len(missing)} "
                f"MatMul(s), e.g. {missing[0]}; run `wina-onnx calibrate` on this model"
            )

    def save(self, path: str | Path) -> None:
        """Write the .npz calibration file."""
        names = sorted(self.counts)
        arrays = {}
        for i, name in enumerate(names):
            for mode, hist in self.counts[name].items():
                arrays[f"t{i}_{mode}"] = hist
        meta = {
            "format": FORMAT,
            "version": 1,
            "targets": names,
            "features": [self.features.get(n, 0) for n in names],
            "source": self.source,
            "tokens": self.tokens,
            "transformed": self.transformed,
            "bins": {"log2_min": LOG2_MIN, "log2_max": LOG2_MAX, "per_octave": BINS_PER_OCTAVE},
        }
        if self.curves is not None:
            meta["greedy"] = self.curves.to_json()
            arrays.update(self.curves.arrays())
        with open(path, "wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration file, with a clear error when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT:
                    raise ConfigError(f"{path} is not a wina-onnx calibration file")
                bins = meta["bins"]
                if (bins["log2_min"], bins["log2_max"], bins["per_octave"]) != (LOG2_MIN, LOG2_MAX, BINS_PER_OCTAVE):
                    raise ConfigError(f"{path} uses other histogram bins; recalibrate")
                calib = cls(source=meta.get("source", ""), tokens=int(meta.get("tokens", 0)),
                            transformed=bool(meta.get("transformed", False)))
                for i, name in enumerate(meta["targets"]):
                    calib.features[name] = int(meta["features"][i])
                    for mode in schema.MODES:
                        key = f"t{i}_{mode}"
                        if key in data:
                            calib.counts.setdefault(name, {})[mode] = data[key].astype(np.int64)
                if "greedy" in meta:
                    from .greedy import ErrorCurves

                    calib.curves = ErrorCurves.from_saved(meta["greedy"], data)
                return calib
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read calibration file {path}: {exc}") from None


def collect(
    calibration: Calibration,
    activations: dict[str, np.ndarray],
    exposed: dict[str, str],
    norms: dict[str, np.ndarray],
) -> None:
    """Add one run's activations (tensor name -> x) to the histograms of every target."""
    for node_name, tensor in exposed.items():
        x = np.abs(activations[tensor].astype(np.float32)).reshape(-1, norms[node_name].shape[0])
        calibration.add(node_name, schema.MODE_TEAL, x)
        calibration.add(node_name, schema.MODE_WINA, x * norms[node_name])


def _targets_and_norms(model: onnx.ModelProto, include: list[str], exclude: list[str], base_dir: str | None = None):
    """Target MatMul names and the row norms of their weights.

    base_dir: the model's folder, when its weights were not loaded (external data read
    here, one target weight at a time).
    """
    from ..passes import find_candidates
    from ..passes.candidates import load_weight

    candidates, _ = find_candidates(model.graph, include=include, exclude=exclude)
    if not candidates:
        from ..errors import NothingToGateError

        raise NothingToGateError("no eligible MatMul in the model to calibrate")
    weights = {init.name: init for init in model.graph.initializer}
    # 4-bit weights (MatMulNBits) are dequantized: the norms are those of the rows the model multiplies.
    norms = {
        c.node_name: np.linalg.norm(load_weight(c, weights, base_dir or "").astype(np.float32), axis=1)
        for c in candidates
    }
    return candidates, norms


def calibrate_model(
    model_path: str | Path,
    *,
    data: str | Path | None = None,
    token_ids: np.ndarray | None = None,
    windows: int = 16,
    window: int = 256,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    source: str | None = None,
    transform: bool = False,
    sample: "ActivationSample | None" = None,
    providers: list | None = None,
    curves: bool = False,
) -> Calibration:
    """Run the dense model over calibration text and return the score histograms.

    Text comes from `token_ids` if given, else from the file `data` (default: the
    pydoc help topics), tokenized with the tokenizer beside the model; it is cut into
    `windows` consecutive windows of `window` tokens, each run as one prefill.
    `source` names the text in the file (default: the data file's name).
    transform: calibrate the model as `optimize --transform` will rewrite it.
    sample: also keep rows of every target's input and its weight, for the greedy
    allocation (wina_onnx.calibrate.greedy.ErrorCurves).
    curves: also compute the greedy allocation's error curves of both scores and keep
    them in the calibration (and its file), so `optimize` can allocate at any sparsity.
    providers: ONNX Runtime execution providers (default CPU). A model whose weights are
    in an external file is never loaded whole: the instrumented graph is written beside
    it (pointing at the same weights) for the session, and removed again.
    """
    from ..data import read_text
    from ..evaluation.perplexity import tokenize_text
    from ..modelio import load_model
    from ..progress import Progress
    from ..modelio import uses_external_data
    from ..runtime.session import load_tokenizer
    from .instrument import InstrumentedRun, window_count

    model_path = Path(model_path)
    if curves and sample is None:
        from .greedy import ActivationSample

        sample = ActivationSample()
    # Large models keep their weights on disk: only the target weights are read, for norms.
    lazy = not transform and sample is None and uses_external_data(load_model(model_path, load_weights=False))
    model = load_model(model_path, load_weights=not lazy)
    from ..passes.rotate import rotate_residual_stream

    if transform:
        rotate_residual_stream(model)
    transformed = any(p.key == schema.META_TRANSFORM for p in model.metadata_props)
    candidates, norms = _targets_and_norms(
        model, list(include or []), list(exclude or []), base_dir=str(model_path.parent) if lazy else None)
    if sample is not None:
        from ..passes.candidates import load_weight

        inits = {init.name: init for init in model.graph.initializer}
        # A 4-bit weight is dequantized (to float32, 8 times its size) only when its curve is made.
        sample.bind(candidates, {c.node_name: (lambda c=c: load_weight(c, inits)) if c.quantized is not None
                                 else load_weight(c, inits) for c in candidates})
    if token_ids is None:
        token_ids = tokenize_text(load_tokenizer(model_path.parent), read_text(data))
    count = window_count(token_ids, windows, window, text="calibration")
    targets = {c.node_name for c in candidates}
    run = InstrumentedRun(model, [n for n in model.graph.node if (n.name or n.output[0]) in targets],
                          model_dir=model_path.parent, threads=threads, providers=providers,
                          beside=model_path if lazy else None)
    del model  # the session holds what it needs
    exposed = run.exposed
    calibration = Calibration(
        features={c.node_name: c.k for c in candidates},
        source=source or (Path(data).name if data else "pydoc help topics"),
        transformed=transformed,
    )
    bar = Progress("calibrate", total=count, enabled=progress)
    for outputs in run.windows(token_ids, count, window):
        collect(calibration, outputs, exposed, norms)
        if sample is not None:
            for node_name, tensor in exposed.items():
                sample.add(node_name, outputs[tensor].reshape(-1, norms[node_name].shape[0]), count)
        calibration.tokens += window
        bar.step()
    bar.done(f"{len(candidates)} MatMuls, {calibration.tokens} tokens")
    if curves:
        from .greedy import ErrorCurves

        calibration.curves = ErrorCurves.from_sample(sample, progress=progress)
    return calibration
