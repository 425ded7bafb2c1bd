"""Load and save ONNX models safely: clear errors on bad input, atomic writes on output."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import onnx
from google.protobuf.message import DecodeError

from .errors import ConfigError, ModelLoadError

# Protobuf cannot serialise a message of 2 GiB or more; past this, weights go to a side file.
PROTOBUF_LIMIT = 2**31 - 2**20


def load_model(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, turning every way it can fail into a one-line ModelLoadError."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; give the model's .onnx file, e.g. {path / 'model.onnx'}")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except DecodeError:
        raise ModelLoadError(f"{path} is not an ONNX model (protobuf decoding failed)") from None
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing: {exc.filename or exc}") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        if "not regular file" in str(exc):  # onnx's words for a missing external data file
            raise ModelLoadError(f"{path}: external data file missing ({exc})") from None
        raise ModelLoadError(f"{path} cannot be loaded: {exc}") from None
    # Protobuf parses some non-ONNX bytes into an empty message rather than failing.
    if model.ir_version == 0 or not model.graph.node:
        raise ModelLoadError(f"{path} is not an ONNX model (no IR version or no graph nodes)")
    return model


def model_file(path: str | Path) -> Path:
    """`path`, or the model.onnx inside it when it is a folder; ModelLoadError when there is no such file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist")
    return path


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether any initializer of the (unloaded) model lives in an external file."""
    return any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )


def external_files(model: onnx.ModelProto) -> set[str]:
    """The external data locations (relative paths) an unloaded model refers to."""
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return files


def copy_model(model: onnx.ModelProto, source: Path, target: Path) -> None:
    """Copy the model file `source` to `target` and, beside it, the external data files that
    `model` (source's graph, weights not loaded) names; ModelLoadError if one is missing."""
    shutil.copy2(source, target)
    for location in sorted(external_files(model)):
        if not (source.parent / location).is_file():
            raise ModelLoadError(f"{source.name} names external data {location}, which is missing")
        (target.parent / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.parent / location, target.parent / location)


def write_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make the folder `target` with fill(folder) in a temporary folder beside it, then rename
    it into place (replacing an existing `target` only once the new one is complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def external_layout(path: str | Path) -> str:
    """How the model at `path` stores its weights: one of LAYOUTS except "auto"."""
    files = external_files(load_model(path, load_weights=False))
    if not files:
        return LAYOUT_INLINE
    return LAYOUT_SINGLE if len(files) == 1 else LAYOUT_PER_TENSOR


LAYOUT_AUTO = "auto"
LAYOUT_SINGLE = "single"
LAYOUT_PER_TENSOR = "per-tensor"
LAYOUT_INLINE = "inline"
LAYOUTS = (LAYOUT_AUTO, LAYOUT_SINGLE, LAYOUT_PER_TENSOR, LAYOUT_INLINE)


def _previous_files(path: Path) -> set[str]:
    """External data files the current file at `path` (if any) refers to."""
    if not path.is_file():
        return set()
    try:
        return external_files(onnx.load(str(path), load_external_data=False))
    except Exception:  # an unreadable earlier output: nothing of it to keep or remove
        return set()


def _data_name(path: Path, taken: set[str], suffix: str) -> str:
    """`<model>.data` (or `.data.1`, ...), never a name the earlier output still uses."""
    name, i = path.name + suffix, 0
    while name in taken or (path.parent / name).is_symlink():
        i += 1
        name = f"{path.name}{suffix}.{i}"
    return name


def save_model_atomic(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    external_data: bool | None = None,
    layout: str | None = None,
    keep: set[Path] | None = None,
) -> None:
    """Write `model` to `path` through a temporary name in the same folder, then rename.

    A failed or interrupted save leaves any earlier file at `path` untouched, and the
    weights it refers to: new weights never overwrite a data file the earlier output
    uses (they get a fresh name; the old file is removed once the model is renamed).
    layout: "single" (all weights in `<name>.data`), "per-tensor" (one file per weight in
    the folder `<name>.data.d/`), "inline" (in the .onnx file; under 2 GiB only) or None:
    by `external_data` (True: "single"), else by size (protobuf's 2 GiB limit).
    keep: files never to remove (the input model's own data files).
    Tensors written to external files lose their in-memory bytes as they are written,
    so the model object is not reusable afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout in (None, LAYOUT_AUTO):
        if external_data is None:
            external_data = model.ByteSize() >= PROTOBUF_LIMIT
        layout = LAYOUT_SINGLE if external_data else LAYOUT_INLINE
    if layout == LAYOUT_INLINE and model.ByteSize() >= PROTOBUF_LIMIT:
        raise ConfigError("the model is over 2 GiB, protobuf's limit: it needs external data (single or per-tensor)")
    previous = _previous_files(path)
    # Names the new weights must not take: the earlier output's and the input's data files.
    taken = previous | {p.name for p in (keep or set()) if p.parent.resolve() == path.parent.resolve()}
    # Everything is written into a private folder beside the target, then renamed into
    # place (the weights first), so a failure leaves any earlier output untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        written: list[str] = []
        if layout == LAYOUT_SINGLE:
            data_name = _data_name(path, taken, ".data")
            _mark_external(model, lambda i: data_name)
            onnx.save_model(model, str(staged))
            written.append(data_name)
        elif layout == LAYOUT_PER_TENSOR:
            folder = _data_name(path, taken, ".data.d")
            # Tensor names are often not valid file names: number the files instead.
            _mark_external(model, lambda i: f"{folder}/{i:06d}.bin")
            (staging / folder).mkdir()
            onnx.save_model(model, str(staged))
            written.append(folder)
        else:
            onnx.save_model(model, str(staged))
        for name in written:
            _default_permissions(staging / name)
            target = path.parent / name
            if target.is_dir():  # a stale folder no model refers to
                shutil.rmtree(target)
            os.replace(staging / name, target)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_unused(path.parent, previous - set(written), keep or set())


def _default_permissions(path: Path) -> None:
    """Give a written data file (or folder of them) the permissions the umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def _mark_external(model: onnx.ModelProto, location) -> None:
    """Mark every initializer of 1 KiB or more as external data at location(i).

    onnx.save_model then writes each to its file (relative to the model's folder) and
    drops its bytes from memory. (save_model's own option checks the location against
    the current directory, not the model's folder, so it is not used.)
    """
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    for i, tensor in enumerate(model.graph.initializer):
        if tensor.ByteSize() < 1024 or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if not tensor.HasField("raw_data"):  # typed fields (float_data, ...): raw bytes first
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        if tensor.HasField("raw_data"):
            set_external_data(tensor, location=location(i))
            tensor.data_location = onnx.TensorProto.EXTERNAL


def _remove_unused(folder: Path, names: set[str], keep: set[Path]) -> None:
    """Remove data files of an earlier output that the new one no longer uses."""
    kept = {p.resolve() for p in keep}
    for name in names:
        target = (folder / name)
        top = folder / Path(name).parts[0]  # a per-tensor file: remove its whole folder
        victim = top if top != target and top.name.endswith(".data.d") else target
        if victim.resolve() in kept or any(k.is_relative_to(victim.resolve()) for k in kept):
            continue
        if victim.is_dir():
            shutil.rmtree(victim, ignore_errors=True)
        elif victim.is_file():
            victim.unlink()
