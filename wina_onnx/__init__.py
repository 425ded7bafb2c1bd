"""wina-onnx: WINA activation sparsity for LLMs in ONNX Runtime.

Public API:
    get_library_path()        path of the WinaSparseMatMul op library
    session_options()         ORT SessionOptions with the library registered
    reference.wina_sparse_matmul   the NumPy oracle of the op
"""

from __future__ import annotations

from .library import get_library_path, register_library, session_options

__version__ = "0.1.0"

__all__ = ["__version__", "get_library_path", "register_library", "session_options"]
