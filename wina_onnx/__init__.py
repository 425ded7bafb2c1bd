"""wina-onnx: WINA activation sparsity for LLMs in ONNX Runtime.

Public API:
    Recipe                    optimize's defaults; Recipe(sparsity=0.5).optimize(model, output, data=...)
                              writes what `wina-onnx optimize` writes (wina_onnx.recipe)
    optimize_model()          the graph passes with a GateConfig of your own (wina_onnx.optimize)
    get_library_path()        path of the WinaSparseMatMul op library
    session_options()         ORT SessionOptions with the library registered
    reference.wina_sparse_matmul   the NumPy oracle of the op
"""

from __future__ import annotations

from typing import Any

from .library import get_library_path, register_library, session_options

__version__ = "0.1.0"

__all__ = ["Recipe", "__version__", "get_library_path", "optimize_model", "register_library", "session_options"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import wina_onnx` stays light (no onnx, no numpy).
    if name == "Recipe":
        from .recipe import Recipe

        return Recipe
    if name == "optimize_model":
        from .optimize import optimize_model

        return optimize_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
