"""Load and save ONNX models safely: clear errors on bad input, atomic writes on output."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError

# Protobuf cannot serialise a message of 2 GiB or more; past this, weights go to a side file.
_PROTOBUF_LIMIT = 2**31 - 2**20


def load_model(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, turning every way it can fail into a one-line ModelLoadError."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except DecodeError:
        raise ModelLoadError(f"{path} is not an ONNX model (protobuf decoding failed)") from None
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing: {exc.filename or exc}") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path} cannot be loaded: {exc}") from None
    # Protobuf parses some non-ONNX bytes into an empty message rather than failing.
    if model.ir_version == 0 or not model.graph.node:
        raise ModelLoadError(f"{path} is not an ONNX model (no IR version or no graph nodes)")
    return model


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether any initializer of the (unloaded) model lives in an external file."""
    return any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )


def save_model_atomic(model: onnx.ModelProto, path: str | Path, *, external_data: bool | None = None) -> None:
    """Write `model` to `path` through a temporary name in the same folder, then rename.

    A failed or interrupted save leaves any earlier file at `path` untouched.
    external_data: None decides by size (protobuf's 2 GiB limit); True writes the weights
    to `<name>.data` beside the model (also atomically renamed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() >= _PROTOBUF_LIMIT
    # Everything is written into a private folder beside the target, then renamed into
    # place (the weights first), so a failure leaves any earlier output untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    data_name = path.name + ".data"
    try:
        staged = staging / path.name
        if external_data:
            onnx.save_model(
                model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )
            os.replace(staging / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(staged))
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
