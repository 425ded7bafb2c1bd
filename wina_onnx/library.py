"""Locate and register the `WinaSparseMatMul` op library with ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WinaError

if TYPE_CHECKING:  # onnxruntime stays an optional import for the graph tools
    import onnxruntime

LIBRARY_ENV = "WINA_ONNX_LIBRARY"
LIBRARY_NAME = "libwina_onnx_ops.so"


class LibraryNotFoundError(FileNotFoundError, WinaError):
    """The op library is not where the package expects it (the CLI prints one line)."""


# Where a source checkout's builds put the library, in order of preference: the standalone
# CMake build (`cmake -S custom_ops -B build/ops && cmake --build build/ops`), then the wheel
# build (scikit-build-core's build/{wheel_tag}). Other folders under build/ (sanitizer or
# experimental builds) are never picked up implicitly: name them with WINA_ONNX_LIBRARY.
_CHECKOUT_BUILDS = ("build/ops", "build/py3-*")


def _checkout_library() -> Path | None:
    """The library built inside a source checkout, if this package is one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "custom_ops" / "CMakeLists.txt").is_file():
        return None
    for pattern in _CHECKOUT_BUILDS:
        found = sorted(root.glob(f"{pattern}/{LIBRARY_NAME}"))
        if found:
            return found[0]
    return None


def get_library_path() -> str:
    """Absolute path of the op library.

    Looked for, in order: the environment variable WINA_ONNX_LIBRARY (a library built
    elsewhere), the package's own lib/ (an installed wheel), and, in a source checkout,
    the CMake build folders under build/.
    """
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise LibraryNotFoundError(f"{LIBRARY_ENV}={override} is not a file")
        return str(path.resolve())
    path = Path(__file__).resolve().parent / "lib" / LIBRARY_NAME
    if path.is_file():
        return str(path)
    built = _checkout_library()
    if built is not None:
        return str(built)
    raise LibraryNotFoundError(
        f"the op library {LIBRARY_NAME} is not built; run `pip install .` (or "
        "`cmake -S custom_ops -B build/ops && cmake --build build/ops`), or set " + LIBRARY_ENV
    )


def register_library(options: "onnxruntime.SessionOptions") -> "onnxruntime.SessionOptions":
    """Register the op library on `options` and return them (for chaining)."""
    options.register_custom_ops_library(get_library_path())
    return options


def session_options(
    *,
    threads: int | None = None,
    optimization_level: str | None = None,
    config: dict[str, str] | None = None,
    register: bool = True,
) -> "onnxruntime.SessionOptions":
    """ONNX Runtime SessionOptions for wina-onnx models: the one place they are made.

    threads: intra-op threads (they run the MatMuls), with one inter-op thread, since a
    decoder's graph is a chain; None keeps ONNX Runtime's defaults.
    optimization_level: None keeps ORT's default; "disable", "basic", "extended" or "all".
    config: session config entries (add_session_config_entry).
    register: register the op library (the default: what a user of an optimized model
    needs); runtime.session.load_session registers it only for models that use it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimization_level is not None:
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization_level not in levels:
            raise ValueError(f"optimization_level must be one of {sorted(levels)}, not {optimization_level!r}")
        options.graph_optimization_level = levels[optimization_level]
    return register_library(options) if register else options
