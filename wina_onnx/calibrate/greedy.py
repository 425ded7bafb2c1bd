"""Greedy per-matrix sparsity allocation (TEAL's greedy search), from ONNX Runtime runs only.

During calibration, a fixed number of token rows of each target MatMul's input x are
sampled (ActivationSample). For every target and every sparsity level s = 0, step,
2 * step, ... the relative output error of top-k gating at s,

    e(s) = ||x B - gate_s(x) B||^2 / ||x B||^2,

is computed on those rows with the mode's score (|x| for TEAL, |x| * ||B[i, :]|| for
WINA). Then, within each decoder layer, all matrices start dense and the matrix whose
next step costs the least added error per weight byte skipped is made sparser, until
the layer's average sparsity weighted by weight bytes reaches the target; the last step
is cut so the average is exactly the target. Every layer, and so the model, averages
the target sparsity weighted by weight bytes (the bytes a decode step reads).

Memory: the samples hold rows x K floats per target (256 rows by default), and the
error curves need each target's weight once, one at a time. A 4-bit weight (MatMulNBits)
is dequantized to float32 only when its curve is computed, and weighs its stored bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..passes.allocation import Allocation, check_sparsity
from ..passes.wina_gate import NORM_ON_REFERENCE, uses_norm
from ..errors import ConfigError

DEFAULT_STEP = 0.05
MAX_SPARSITY = 0.95


@dataclass
class ActivationSample:
    """Up to `rows` input rows per target MatMul, drawn evenly from the calibration windows."""

    rows: int = 256
    seed: int = 0
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # node -> B [K, N], or a function returning it (a 4-bit weight, dequantized when needed)
    weights: dict[str, "np.ndarray | Callable[[], np.ndarray]"] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # node -> decoder layer
    roles: dict[str, str | None] = field(default_factory=dict)  # node -> role kind
    weight_bytes: dict[str, int] = field(default_factory=dict)  # node -> bytes the weight is stored in

    def bind(self, candidates: list, weights: dict[str, "np.ndarray | Callable[[], np.ndarray]"]) -> None:
        """Remember the targets (passes.Candidate) and their weights, for the error curves."""
        for c in candidates:
            self.weights[c.node_name] = weights[c.node_name]
            if getattr(c, "quantized", None) is not None:
                self.weight_bytes[c.node_name] = c.weight_bytes
            layer = c.role.layer if c.role is not None else None
            self.groups[c.node_name] = f"layer {layer}" if layer is not None else c.node_name
            self.roles[c.node_name] = c.role.kind if c.role is not None else None

    def add(self, node_name: str, x: np.ndarray, windows: int) -> None:
        """Keep ceil(rows / windows) random rows of this window's x ([tokens, K])."""
        per_window = -(-self.rows // max(windows, 1))
        rng = np.random.default_rng(self.seed + len(self.samples.get(node_name, [])))
        count = min(per_window, x.shape[0])
        picked = rng.choice(x.shape[0], size=count, replace=False)
        self.samples.setdefault(node_name, []).append(np.asarray(x[np.sort(picked)], dtype=np.float32))

    def matrix(self, node_name: str) -> np.ndarray:
        """The sampled rows of one target, [rows, K]."""
        if node_name not in self.samples:
            raise ConfigError(f"no activation samples for {node_name}")
        return np.concatenate(self.samples[node_name], axis=0)[: self.rows]


def error_curve(x: np.ndarray, weight: np.ndarray, scale: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Relative output error of top-k gating of x @ weight at each sparsity in `levels`."""
    x = x.astype(np.float32)
    weight = weight.astype(np.float32)
    k = x.shape[1]
    dense = x @ weight
    norm = float(np.square(dense, dtype=np.float64).sum()) or 1.0
    scores = np.abs(x) * scale[None, :]
    scores = np.where(np.isnan(scores), np.inf, scores)
    # rank 0 = best score; stable sort so ties go to the lower index, as the op does.
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(x.shape[0], axis=0), axis=1)
    errors = np.zeros(len(levels), dtype=np.float64)
    for i, s in enumerate(levels):
        keep = k - int(round(s * k))
        dropped = np.where(rank >= keep, x, 0.0).astype(np.float32)
        errors[i] = float(np.square(dropped @ weight, dtype=np.float64).sum()) / norm
    return errors


@dataclass(frozen=True)
class Target:
    """One gated MatMul as the greedy search sees it."""

    node_name: str
    group: str  # decoder layer (the search keeps each group at the target)
    weight_bytes: int


def greedy_allocation(
    targets: list[Target],
    curves: dict[str, np.ndarray],
    target_sparsity: float,
    *,
    step: float = DEFAULT_STEP,
    source: str = "greedy",
) -> Allocation:
    """Per-matrix sparsities: each group averages `target_sparsity` weighted by weight bytes."""
    target_sparsity = check_sparsity(target_sparsity, "target sparsity")
    levels = sparsity_levels(step)
    if target_sparsity > levels[-1]:
        raise ConfigError(f"target sparsity {target_sparsity} is above the greedy search's maximum {levels[-1]}")
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.group, []).append(t)
    sparsity: dict[str, float] = {}
    for members in groups.values():
        sparsity.update(_greedy_group(members, curves, levels, target_sparsity))
    return Allocation(default=target_sparsity, sparsity=sparsity, source=source)


def sparsity_levels(step: float = DEFAULT_STEP) -> np.ndarray:
    """0, step, 2 step, ... up to MAX_SPARSITY."""
    return np.round(np.arange(0.0, MAX_SPARSITY + 1e-9, step), 6)


def _greedy_group(members: list[Target], curves: dict[str, np.ndarray], levels: np.ndarray,
                  target: float) -> dict[str, float]:
    total = sum(t.weight_bytes for t in members)
    level = {t.node_name: 0 for t in members}
    skipped = 0.0  # bytes skipped so far (sum of sparsity * bytes)
    goal = target * total
    while skipped < goal - 1e-9:
        best, best_cost = None, np.inf
        for t in members:
            i = level[t.node_name]
            if i + 1 >= len(levels):
                continue
            cost = (curves[t.node_name][i + 1] - curves[t.node_name][i]) / t.weight_bytes
            if cost < best_cost:
                best, best_cost = t, cost
        if best is None:
            break
        i = level[best.node_name]
        gain = (levels[i + 1] - levels[i]) * best.weight_bytes
        if skipped + gain > goal:
            # Cut the last step so the group's average is exactly the target.
            partial = levels[i] + (goal - skipped) / best.weight_bytes
            result = {t.node_name: float(levels[level[t.node_name]]) for t in members}
            result[best.node_name] = float(partial)
            return result
        level[best.node_name] = i + 1
        skipped += gain
    return {t.node_name: float(levels[level[t.node_name]]) for t in members}


# The two scores an error curve can use: |x| (TEAL) and |x| * ||B[i, :]|| (WINA). WINA with
# norms on some projections only (norm_on="reference") takes each target's curve from one.
CURVE_SCORES = ("teal", "wina")


@dataclass
class ErrorCurves:
    """Error curves of every target for both scores: a greedy allocation for any mode and target.

    Small (a few numbers per target and level), so a calibration file carries them and
    `optimize` can allocate greedily at any sparsity without seeing activations again.
    """

    step: float
    targets: list[Target]
    roles: dict[str, str | None]
    curves: dict[str, dict[str, np.ndarray]]  # score ("teal"/"wina") -> node -> curve

    @classmethod
    def from_sample(cls, sample: ActivationSample, *, step: float = DEFAULT_STEP,
                    progress: bool = True) -> "ErrorCurves":
        """Compute both curves of every sampled target (one weight in float32 at a time)."""
        from ..progress import Progress

        if not sample.weights:
            raise ConfigError("the activation sample has no targets; calibrate with sampling enabled")
        levels = sparsity_levels(step)
        curves: dict[str, dict[str, np.ndarray]] = {score: {} for score in CURVE_SCORES}
        targets = []
        bar = Progress("greedy curves", total=len(sample.weights), enabled=progress)
        for name, weight in sample.weights.items():
            weight = weight() if callable(weight) else weight
            x = sample.matrix(name)
            norms = np.linalg.norm(weight.astype(np.float32), axis=1)
            curves["teal"][name] = error_curve(x, weight, np.ones_like(norms), levels)
            curves["wina"][name] = error_curve(x, weight, norms, levels)
            stored = sample.weight_bytes.get(name, int(weight.size * weight.dtype.itemsize))
            targets.append(Target(name, sample.groups[name], stored))
            bar.step()
        bar.done(f"{len(targets)} MatMuls")
        return cls(step=step, targets=targets, roles=dict(sample.roles), curves=curves)

    def allocate(self, target_sparsity: float, *, mode: str, norm_on: str = NORM_ON_REFERENCE) -> Allocation:
        """Per-matrix sparsities averaging `target_sparsity` in every layer, for this scoring
        (norm_on as the gate pass's: which WINA scores use the weight norms)."""
        chosen = {t.node_name: self.curves["wina" if uses_norm(mode, norm_on, self.roles.get(t.node_name))
                                           else "teal"][t.node_name] for t in self.targets}
        source = f"greedy {target_sparsity:g} ({mode}, norm on {norm_on}, weighted by weight bytes)"
        return greedy_allocation(self.targets, chosen, target_sparsity, step=self.step, source=source)

    def to_json(self) -> dict:
        """Everything but the curves (which go in arrays, see `arrays`)."""
        return {"step": self.step, "targets": [[t.node_name, t.group, t.weight_bytes] for t in self.targets],
                "roles": self.roles}

    def arrays(self) -> dict[str, np.ndarray]:
        """The curves as one [targets, levels] array per score, in the order of `targets`."""
        return {f"curves_{score}": np.stack([self.curves[score][t.node_name] for t in self.targets])
                for score in CURVE_SCORES}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "ErrorCurves":
        """Inverse of to_json + arrays."""
        targets = [Target(name, group, int(size)) for name, group, size in meta["targets"]]
        curves = {score: {t.node_name: np.asarray(arrays[f"curves_{score}"][i], dtype=np.float64)
                          for i, t in enumerate(targets)} for score in CURVE_SCORES}
        return cls(step=float(meta["step"]), targets=targets, roles=dict(meta["roles"]), curves=curves)
