"""`optimize`: read a model, run the graph passes as one sequence, check and write the result atomically.

The sequence: rotate the residual stream (GateConfig.transform), gate (passes.wina_gate),
refine the thresholds inside the gated model (calibrate.refine, when asked), group the
gates that share an input (GateConfig.group). Each step returns a passes.PassResult.
`wina_onnx.recipe` decides the configuration that the CLI, the demo and the Python API use.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import onnx

from . import __version__, schema
from .errors import AlreadyOptimizedError, ConfigError, ModelCheckError, NothingToGateError
from .modelio import LAYOUT_AUTO, LAYOUT_PER_TENSOR, LAYOUT_SINGLE, LAYOUTS, external_files, load_model, save_model_atomic
from .passes import GateConfig, GateRecord, PassResult, Sequential, apply_wina_gates, group_shared_inputs, groups_of
from .passes.wina_gate import BACKEND_CUSTOM_OP, PASS_NAME as GATE_PASS
from .progress import stage

if TYPE_CHECKING:
    from .calibrate.refine import Refinement

REFINE_PASS = "refine"
# The files beside a model that make its folder complete (tokenizer, config, chat template).
SIDECAR_PATTERNS = ("*.json", "*.jinja", "*.txt")


def is_optimized(model: onnx.ModelProto) -> bool:
    """Whether wina-onnx already rewrote this model (its metadata or its op domain)."""
    if any(prop.key == schema.META_VERSION for prop in model.metadata_props):
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


def _record_metadata(model: onnx.ModelProto, config: GateConfig, gated: list[GateRecord], *,
                     refined: dict | None = None, groups: list[list[str]] | None = None,
                     quantized: dict | None = None) -> None:
    # Only threshold gating reads the calibration; top-k models do not depend on it.
    calibration = config.calibration.source if config.gating == schema.GATING_THRESHOLD else None
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
        schema.META_VERSION: __version__,
        schema.META_CONFIG: json.dumps(settings),
        schema.META_GATED: json.dumps([r.to_json() for r in gated]),
    }
    if groups is not None:
        entries[schema.META_GROUPS] = json.dumps(groups)
    kept = [p for p in model.metadata_props if p.key not in entries and p.key != schema.META_GROUPS]
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
    header: onnx.ModelProto | None = None,
) -> PassResult[GateRecord]:
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
    header: the input without weights, as `check_paths` returned it, when the caller has
    already checked the paths (they are not checked again).
    The tokenizer and config files beside the input are copied beside the output (an ONNX
    Runtime GenAI folder stays one, see copy_sidecar_files).
    Returns the gate pass's result, with the thresholds as refined.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    config.validate()
    if external_data not in LAYOUTS:
        raise ConfigError(f"external data layout must be one of {', '.join(LAYOUTS)}, got {external_data!r}")
    if header is None:
        header = check_paths(input_path, output_path, force=force)
    check_library_needed(input_path, output_path, config.backend, refine=refine is not None)
    input_files = external_files(header)
    layout = external_data
    if layout == LAYOUT_AUTO and input_files:
        layout = LAYOUT_SINGLE if len(input_files) == 1 else LAYOUT_PER_TENSOR
    del header
    stage("optimize", f"loading {input_path}", enabled=progress)
    model = load_model(input_path)
    _check_calibration_fits(model, config)
    sequence = Sequential([], after=lambda result: stage("optimize", result.summary().splitlines()[0],
                                                         enabled=progress and result.name != GATE_PASS))
    sequence.passes = optimize_passes(config, refine, input_path.parent, sequence, progress=progress)
    sequence(model)
    gate = sequence.result_of(GATE_PASS)
    refined, groups = None, None
    if refine is not None:
        new = {r.node_name: r.threshold for r in sequence.result_of(REFINE_PASS).records}
        gate = replace(gate, records=[replace(r, threshold=new.get(r.node_name, r.threshold)) for r in gate.records])
        refined = {"rounds": refine.rounds, "windows": refine.windows, "window": refine.window}
    if config.group:
        groups = groups_of(sequence.result_of("group_gates"))
    _record_metadata(model, config, gate.records, refined=refined, groups=groups, quantized=quantized)
    if check:
        stage("optimize", "checking the rewritten model (onnx.checker, shape inference)", enabled=progress)
        _check(model)
    stage("optimize", f"writing {output_path}", enabled=progress)
    keep = {input_path.parent / name for name in input_files} | {input_path}
    save_model_atomic(model, output_path, layout=None if layout == LAYOUT_AUTO else layout, keep=keep)
    copy_sidecar_files(input_path, output_path)
    return gate


def optimize_passes(config: GateConfig, refine: "Refinement | None", model_dir: Path, sequence: Sequential, *,
                    progress: bool = True) -> list[Callable[[onnx.ModelProto], PassResult]]:
    """optimize's passes for `config`, in order: rotate, gate, refine, group (as they apply).

    model_dir: the input's folder (its config files give the KV cache's sizes to the
    refinement when `refine` names none). sequence: the Sequential they run in (the
    refinement reads the gate pass's result from it).
    """
    def announce(line: str, run: Callable[[onnx.ModelProto], PassResult]) -> Callable[[onnx.ModelProto], PassResult]:
        def step(model: onnx.ModelProto) -> PassResult:
            stage("optimize", line, enabled=progress)
            return run(model)
        return step

    passes: list[Callable[[onnx.ModelProto], PassResult]] = []
    if config.transform:
        from .passes.rotate import rotate_residual_stream

        passes.append(announce("rotating the residual stream (--transform)", rotate_residual_stream))
    passes.append(announce(f"gating ({config.mode}, {config.gating}, {config.backend})",
                           lambda model: _gate(model, config)))
    if refine is not None:
        refinement = refine if refine.model_dir is not None else replace(refine, model_dir=model_dir)
        passes.append(announce(f"refining the thresholds inside the gated model ({refine.rounds} round(s))",
                               _Refine(refinement, sequence, progress)))
    if config.group:
        passes.append(announce("grouping gates that share an input", group_shared_inputs))
    return passes


def _gate(model: onnx.ModelProto, config: GateConfig) -> PassResult[GateRecord]:
    """The gate pass; nothing gated is an error (with the reasons) that stops the sequence."""
    result = apply_wina_gates(model, config)
    if not result.changed:
        reasons = "; ".join(result.summary().splitlines()[1:]) or "the model has no MatMul"
        raise NothingToGateError(f"no eligible MatMul in the model: {reasons}")
    return result


@dataclass(frozen=True)
class ThresholdChange:
    """One threshold gate's threshold, as refinement reset it."""

    node_name: str
    threshold: float


class _Refine:
    """Refinement as a step of optimize's sequence: its targets are the gate pass's records."""

    def __init__(self, refine: "Refinement", sequence: Sequential, progress: bool) -> None:
        self.refine, self.sequence, self.progress = refine, sequence, progress

    def __call__(self, model: onnx.ModelProto) -> PassResult[ThresholdChange]:
        from .calibrate.refine import refine_thresholds

        gated = self.sequence.result_of(GATE_PASS).records
        targets = {r.node_name: r.sparsity for r in gated if r.threshold is not None}
        new = refine_thresholds(model, targets, self.refine, progress=self.progress)
        records = [ThresholdChange(name, float(value)) for name, value in new.items()]
        return PassResult(REFINE_PASS, records=records,
                          headline=f"refined {len(records)} threshold(s) in {self.refine.rounds} round(s)")


def check_library_needed(model: Path, output: Path, backend: str, *, refine: bool) -> None:
    """Find the op library before any long step, where the work needs it (one line if not):
    a GenAI folder written for a custom-op model holds a copy of it, and refinement runs
    the gated model."""
    if backend != BACKEND_CUSTOM_OP:
        return
    from .integrations.genai import is_genai_decoder
    from .library import LibraryNotFoundError, get_library_path

    genai = is_genai_decoder(model) and Path(model).resolve().parent != Path(output).resolve().parent
    if not (genai or refine):
        return
    why = ("the output's GenAI folder gets a copy of the op library" if genai
           else "refining the thresholds runs the gated model")
    try:
        get_library_path()
    except LibraryNotFoundError as exc:
        raise LibraryNotFoundError(f"{why}, but {exc}") from None


def copy_sidecar_files(model: Path, output: Path) -> None:
    """Copy the tokenizer and config files beside `model` to the output's folder, so that
    it is a complete model; files already there are kept.

    An ONNX Runtime GenAI folder stays one: its genai_config.json is written for the
    output (custom_ops_library naming the op library, copied in), all else kept.
    Nothing is copied when the output shares the input's folder.
    """
    from .integrations.genai import GENAI_CONFIG, is_genai_decoder, keep_genai_folder

    if model.resolve().parent == output.resolve().parent:
        return
    genai = is_genai_decoder(model)
    for pattern in SIDECAR_PATTERNS:
        for file in model.parent.glob(pattern):
            target = output.parent / file.name
            if not target.exists() and not (genai and file.name == GENAI_CONFIG):
                shutil.copy2(file, target)
    if genai:
        keep_genai_folder(model, output)


def is_transformed(model: onnx.ModelProto) -> bool:
    """Whether the residual stream of this model was rotated by --transform."""

    return any(prop.key == schema.META_TRANSFORM for prop in model.metadata_props)


def _check_calibration_fits(model: onnx.ModelProto, config: GateConfig) -> None:
    """Thresholds calibrated on the plain model are wrong for the rotated one, and vice versa."""
    if config.gating != schema.GATING_THRESHOLD or config.calibration is None:
        return
    rotated = config.transform or is_transformed(model)
    calibrated_rotated = bool(config.calibration.transformed)
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
