"""`optimize`: read a model, apply the WINA pass, check and write the result atomically."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from . import __version__, schema
from .errors import AlreadyOptimizedError, ConfigError, NothingToGateError
from .modelio import load_model, save_model_atomic, uses_external_data
from .passes import GateConfig, GateReport, apply_wina_gates
from .progress import stage

META_VERSION = schema.META_PREFIX + "version"
META_CONFIG = schema.META_PREFIX + "config"
META_GATED = schema.META_PREFIX + "gated"


def is_optimized(model: onnx.ModelProto) -> bool:
    """Whether wina-onnx already rewrote this model (its metadata or its op domain)."""
    if any(prop.key == META_VERSION for prop in model.metadata_props):
        return True
    return any(opset.domain == schema.DOMAIN for opset in model.opset_import)


def read_metadata(model: onnx.ModelProto) -> dict[str, object]:
    """The wina-onnx entries of metadata_props, JSON values decoded."""
    out: dict[str, object] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(schema.META_PREFIX):
            key = prop.key[len(schema.META_PREFIX):]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def _record_metadata(model: onnx.ModelProto, config: GateConfig, report: GateReport) -> None:
    # Only threshold gating reads the calibration; top-k models do not depend on it.
    calibration = getattr(config.calibration, "source", None) if config.gating == schema.GATING_THRESHOLD else None
    settings = {
        "mode": config.mode,
        "gating": config.gating,
        "backend": config.backend,
        "norm_on": config.norm_on,
        "transform": config.transform,
        "sparsity": config.allocation.source,
        "calibration": calibration,
        "include": config.include,
        "exclude": config.exclude,
    }
    entries = {
        META_VERSION: __version__,
        META_CONFIG: json.dumps(settings),
        META_GATED: json.dumps([r.to_json() for r in report.gated]),
    }
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def optimize_model(
    input_path: str | Path,
    output_path: str | Path,
    config: GateConfig,
    *,
    force: bool = False,
    check: bool = True,
    progress: bool = True,
) -> GateReport:
    """Gate every eligible MatMul of the model at `input_path`; write it to `output_path`.

    The input file is never modified. Raises NothingToGateError when nothing is
    eligible (with the reasons), AlreadyOptimizedError for a model wina-onnx already
    rewrote (unless force; even then existing gates are never stacked).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ConfigError("the output path is the input path; write the optimized model to a new file")
    config.validate()
    stage("optimize", f"loading {input_path}", enabled=progress)
    model = load_model(input_path)
    if is_optimized(model) and not force:
        raise AlreadyOptimizedError(
            f"{input_path} was already optimized by wina-onnx; optimize the original model "
            "(or pass --force to gate the MatMuls that are still dense)"
        )
    external = uses_external_data(load_model(input_path, load_weights=False))
    _check_calibration_fits(model, config)
    if config.transform:
        from .passes.rotate import rotate_residual_stream

        stage("optimize", "rotating the residual stream (--transform)", enabled=progress)
        transform_report = rotate_residual_stream(model)
        stage("optimize", transform_report.summary(), enabled=progress)
    stage("optimize", f"gating ({config.mode}, {config.gating}, {config.backend})", enabled=progress)
    report = apply_wina_gates(model, config)
    if not report.changed:
        reasons = "; ".join(report.summary().splitlines()[1:]) or "the model has no MatMul"
        raise NothingToGateError(f"no eligible MatMul in the model: {reasons}")
    _record_metadata(model, config, report)
    if check:
        stage("optimize", "checking the rewritten model (onnx.checker, shape inference)", enabled=progress)
        _check(model)
    stage("optimize", f"writing {output_path}", enabled=progress)
    save_model_atomic(model, output_path, external_data=True if external else None)
    return report


def is_transformed(model: onnx.ModelProto) -> bool:
    """Whether the residual stream of this model was rotated by --transform."""
    from .passes.rotate import META_TRANSFORM

    return any(prop.key == META_TRANSFORM for prop in model.metadata_props)


def _check_calibration_fits(model: onnx.ModelProto, config: GateConfig) -> None:
    """Thresholds calibrated on the plain model are wrong for the rotated one, and vice versa."""
    if config.gating != schema.GATING_THRESHOLD or config.calibration is None:
        return
    rotated = config.transform or is_transformed(model)
    calibrated_rotated = bool(getattr(config.calibration, "transformed", False))
    if rotated != calibrated_rotated:
        raise ConfigError(
            f"the calibration file was made on the {'rotated' if calibrated_rotated else 'plain'} model but "
            f"the model to gate is {'rotated' if rotated else 'plain'}; calibrate with --transform exactly "
            "when you optimize with it")


# Ops that ONNX Runtime's transformer optimizer and model builder put in the default
# domain although ONNX has no such op: onnx.checker refuses them, ONNX Runtime runs them.
ORT_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def _check(model: onnx.ModelProto) -> None:
    """onnx.checker and strict shape inference on the rewritten model (in memory).

    A graph fused by ONNX Runtime's optimizer holds ORT ops in the default domain that
    onnx.checker does not know; such a graph gets the shape inference only.
    """
    try:
        size = model.ByteSize()
    except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GiB
        return
    if size < 2**31 - 2**20:
        if not any(n.op_type in ORT_DEFAULT_DOMAIN_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
            onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
