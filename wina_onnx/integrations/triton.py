"""Write a Triton Inference Server model repository for a wina-onnx model.

Layout (onnxruntime backend):

    REPO/NAME/config.pbtxt            backend "onnxruntime", inputs/outputs, model_operations
    REPO/NAME/libwina_onnx_ops.so     the op library, copied
    REPO/NAME/1/model.onnx            the model (+ its external data files)

`model_operations { op_library_filename: PATH }` makes the backend register the library
before it creates each session. Triton needs PATH to be absolute and to exist on every
node that loads the model; it defaults to the absolute path of the copied library, so
pass `library_path` when the repository will be mounted elsewhere. Build the library
against the ONNX Runtime version your Triton release ships.

The model folder NAME is written beside its final place and renamed in when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..library import LIBRARY_NAME, get_library_path
from ..modelio import copy_model, load_model, model_file, write_folder

# onnx.TensorProto.DataType -> Triton's DataType enum name.
_TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}


def _tensors(values) -> list[dict]:
    """name, Triton data type and dims (-1 for symbolic or unknown axes) of graph inputs/outputs."""
    tensors = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _TRITON_TYPES:
            raise ConfigError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton data type")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        tensors.append({"name": value.name, "data_type": _TRITON_TYPES[tensor.elem_type], "dims": dims})
    return tensors


def model_io(model) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an onnx.ModelProto as Triton sees them; initializers are not inputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return _tensors(inputs), _tensors(model.graph.output)


def _block(kind: str, tensors: list[dict]) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {json.dumps(t['name'])}",
            f"    data_type: {t['data_type']}",
            f"    dims: [ {', '.join(str(d) for d in t['dims'])} ]",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    return lines + ["]"]


def config_text(name: str, inputs: list[dict], outputs: list[dict], library_path: str) -> str:
    """The config.pbtxt text. max_batch_size 0: the dims include the batch axis."""
    lines = [
        f"name: {json.dumps(name)}",
        'backend: "onnxruntime"',
        "max_batch_size: 0",
        *_block("input", inputs),
        *_block("output", outputs),
        "model_operations {",
        f"  op_library_filename: {json.dumps(library_path)}",
        "}",
        'default_model_filename: "model.onnx"',
        "instance_group [ { kind: KIND_AUTO } ]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    repo: str | Path,
    model_path: str | Path,
    *,
    name: str | None = None,
    library_path: str | None = None,
    force: bool = False,
) -> Path:
    """Write REPO/NAME for `model_path` (see the module docstring); return REPO/NAME.

    name defaults to the model's folder name (its file stem when not called model.onnx).
    library_path is written as op_library_filename; default: the absolute path of the
    copied REPO/NAME/libwina_onnx_ops.so. force replaces an existing REPO/NAME.
    The input model is only read.
    """
    model_path = model_file(model_path)
    model = load_model(model_path, load_weights=False)
    if name is None:
        name = model_path.parent.resolve().name if model_path.name == "model.onnx" else model_path.stem
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid Triton model name {name!r}; pass --name")
    repo = Path(repo)
    target = repo / name
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; pass --force to replace it")
    library = get_library_path()
    if library_path is None:
        library_path = str((target / LIBRARY_NAME).resolve())
    elif not os.path.isabs(library_path):
        raise ConfigError(f"--library-path must be absolute (Triton needs it on every node): {library_path}")
    inputs, outputs = model_io(model)

    def fill(folder: Path) -> None:
        (folder / "1").mkdir()
        copy_model(model, model_path, folder / "1" / "model.onnx")
        shutil.copy2(library, folder / LIBRARY_NAME)
        (folder / "config.pbtxt").write_text(config_text(name, inputs, outputs, library_path), encoding="utf-8")

    write_folder(target, fill)
    return target
