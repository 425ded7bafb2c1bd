"""`optimize`: read a model, apply the WINA pass, check and write the result atomically."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from . import __version__, schema
from .errors import AlreadyOptimizedError, ConfigError, ModelCheckError, NothingToGateError
from .modelio import LAYOUT_AUTO, LAYOUT_PER_TENSOR, LAYOUT_SINGLE, LAYOUTS, external_files, load_model, save_model_atomic
from .passes import GateConfig, GateReport, apply_wina_gates
from .progress import stage

if TYPE_CHECKING:
    from .calibrate.refine import Refinement

META_VERSION = schema.META_PREFIX + "version"
META_CONFIG = schema.META_PREFIX + "config"
META_GATED = schema.META_PREFIX + "gated"
META_GROUPS = schema.META_PREFIX + "groups"  # member node names of each WinaSparseMatMulGroup (--group)


def is_optimized(model: onnx.ModelProto) -> bool:
    """Whether wina-onnx already rewrote this model (its metadata or its op domain)."""
    if any(prop.key == META_VERSION for prop in model.metadata_props):
        return True
    return any(opset.domain == schema.DOMAIN for opset in model.opset_import)


def check_paths(input_path: Path, output_path: Path, *, force: bool = False) -> onnx.ModelProto:
    """The checks that need no weights, done before any work: returns the model without weights.

    Raises ConfigError when the output would overwrite the input, ModelLoadError when the
    input is not a loadable ONNX model, AlreadyOptimizedError for a model wina-onnx already
    rewrote (unless force).
    """
    if Path(output_path).resolve() == Path(input_path).resolve():
        raise ConfigError("the output path is the input path; write the optimized model to a new file")
    header = load_model(input_path, load_weights=False)
    if is_optimized(header) and not force:
        raise AlreadyOptimizedError(
            f"{input_path} was already optimized by wina-onnx; optimize the original model "
            "(or pass --force to gate the MatMuls that are still dense)"
        )
    return header


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


def _record_metadata(model: onnx.ModelProto, config: GateConfig, report: GateReport, *,
                     refined: dict | None = None, groups: list[list[str]] | None = None,
                     quantized: dict | None = None) -> None:
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
        "thresholds_refined": refined,
        "group": config.group,
    }
    if quantized is not None:  # optimize --quantize: the float projections were quantized first
        settings["quantize"] = quantized
    entries = {
        META_VERSION: __version__,
        META_CONFIG: json.dumps(settings),
        META_GATED: json.dumps([r.to_json() for r in report.gated]),
    }
    if groups is not None:
        entries[META_GROUPS] = json.dumps(groups)
    kept = [p for p in model.metadata_props if p.key not in entries and p.key != META_GROUPS]
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
    external_data: str = LAYOUT_AUTO,
    refine: "Refinement | None" = None,
    quantized: dict | None = None,
) -> GateReport:
    """Gate every eligible MatMul of the model at `input_path`; write it to `output_path`.

    The input file is never modified. Raises NothingToGateError when nothing is
    eligible (with the reasons), AlreadyOptimizedError for a model wina-onnx already
    rewrote (unless force; even then existing gates are never stacked).
    external_data: where the output keeps its weights: "auto" (as the input: one file,
    a file per tensor, or inline when under 2 GiB), "single", "per-tensor" or "inline".
    The weights are loaded once; the rewritten model is written tensor by tensor.
    refine: re-read the thresholds inside the gated model (wina_onnx.calibrate.refine) before writing.
    quantized: the settings `optimize --quantize` quantized the input with (recorded in the
    metadata); the input is then that 4-bit model.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    config.validate()
    if external_data not in LAYOUTS:
        raise ConfigError(f"external data layout must be one of {', '.join(LAYOUTS)}, got {external_data!r}")
    header = check_paths(input_path, output_path, force=force)
    input_files = external_files(header)
    layout = external_data
    if layout == LAYOUT_AUTO and input_files:
        layout = LAYOUT_SINGLE if len(input_files) == 1 else LAYOUT_PER_TENSOR
    del header
    stage("optimize", f"loading {input_path}", enabled=progress)
    model = load_model(input_path)
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
    refined = None
    if refine is not None:
        from dataclasses import replace

        from .calibrate.refine import refine_thresholds

        stage("optimize", f"refining the thresholds inside the gated model ({refine.rounds} round(s))",
              enabled=progress)
        targets = {r.node_name: r.sparsity for r in report.gated if r.threshold is not None}
        if refine.model_dir is None:  # the input's folder says what the graph may not (the KV cache's sizes)
            refine = replace(refine, model_dir=Path(input_path).parent)
        new = refine_thresholds(model, targets, refine, progress=progress)
        report.gated = [replace(r, threshold=new.get(r.node_name, r.threshold)) for r in report.gated]
        refined = {"rounds": refine.rounds, "windows": refine.windows, "window": refine.window}
    groups = None
    if config.group:
        from .passes.group_gates import group_shared_inputs

        group_report = group_shared_inputs(model)
        stage("optimize", f"grouping gates that share an input: {group_report.summary()}", enabled=progress)
        groups = group_report.groups
    _record_metadata(model, config, report, refined=refined, groups=groups, quantized=quantized)
    if check:
        stage("optimize", "checking the rewritten model (onnx.checker, shape inference)", enabled=progress)
        _check(model)
    stage("optimize", f"writing {output_path}", enabled=progress)
    keep = {input_path.parent / name for name in input_files} | {input_path}
    save_model_atomic(model, output_path, layout=None if layout == LAYOUT_AUTO else layout, keep=keep)
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
    """onnx.checker and shape inference (types checked) on the rewritten model, at any size.

    A graph fused by ONNX Runtime's optimizer holds ORT ops in the default domain that
    onnx.checker does not know; such a graph gets the shape inference only.

    The checker reads a skeleton: the model with every large weight replaced by a stub
    that points at an empty placeholder file. The weights are never copied (memory stays
    at one copy of the model) and protobuf's 2 GiB limit does not apply.
    """
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip={"graph"})
    _copy_fields(model.graph, skeleton.graph, skip={"initializer"})
    for tensor in model.graph.initializer:
        if tensor.ByteSize() < 1024:
            skeleton.graph.initializer.add().CopyFrom(tensor)
            continue
        stub = skeleton.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="weights")
    with tempfile.TemporaryDirectory(prefix="wina-check-") as tmp:
        (Path(tmp) / "weights").touch()
        path = Path(tmp) / "model.onnx"
        path.write_bytes(skeleton.SerializeToString())
        try:
            if not any(n.op_type in ORT_DEFAULT_DOMAIN_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
                onnx.checker.check_model(str(path))
            onnx.shape_inference.infer_shapes_path(str(path), str(Path(tmp) / "inferred.onnx"), check_type=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelCheckError(f"the rewritten model fails onnx.checker ({first}); check that the input "
                                  "passes onnx.checker.check_model") from None


def _copy_fields(source, target, *, skip: set[str]) -> None:
    """Copy the set fields of one protobuf message into another, except those in `skip`."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
