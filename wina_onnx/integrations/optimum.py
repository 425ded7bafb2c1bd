"""Load a wina-onnx model folder with Optimum's `ORTModelForCausalLM`.

The folder is what `wina-onnx optimize` writes: model.onnx (+ external data) with the
tokenizer and config JSON files beside it. The only change from loading a dense Optimum
export is the session options, which must register the WinaSparseMatMul op library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_causal_lm(folder: str | Path, *, file_name: str = "model.onnx", **kwargs: Any):
    """`ORTModelForCausalLM.from_pretrained(folder, ...)` with the op library registered.

    Defaults (each overridable through kwargs): session_options=wina_onnx.session_options(),
    provider="CPUExecutionProvider", use_cache=True, use_io_binding=False.
    Needs optimum-onnx (`pip install optimum-onnx`).
    """
    from optimum.onnxruntime import ORTModelForCausalLM

    from ..library import session_options

    kwargs.setdefault("session_options", session_options())
    kwargs.setdefault("provider", "CPUExecutionProvider")
    kwargs.setdefault("use_cache", True)
    kwargs.setdefault("use_io_binding", False)
    return ORTModelForCausalLM.from_pretrained(str(folder), file_name=file_name, **kwargs)
