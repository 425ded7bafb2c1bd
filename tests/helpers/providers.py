"""The execution providers the op tests run on, and sessions of the op library on each.

An op test takes a `provider` argument parametrized with `providers(...)`: "cpu" always
runs; "cuda" carries the `gpu` marker and skips, with the reason, where ONNX Runtime has
no CUDAExecutionProvider (a CPU-only build) or the provider cannot start (no GPU, no
driver). CUDA sessions disable the CPU fallback, so a node without a CUDA kernel fails the
session instead of silently running the CPU kernel.

Adding a provider: a name in ORT_NAMES, its availability check in `unavailable_reason`,
its marker in `providers`, and the session options it needs in `provider_session`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers.op_models import finish_model, session

CPU = "cpu"
CUDA = "cuda"
ALL = (CPU, CUDA)
ORT_NAMES = {CPU: "CPUExecutionProvider", CUDA: "CUDAExecutionProvider"}
# Markers of each provider's cases (pyproject.toml's markers): `-m gpu` selects the CUDA ones.
MARKS = {CPU: (), CUDA: (pytest.mark.gpu,)}
ISAS = ("generic", "avx2", "avx512")  # the CPU kernels' instruction-set paths
ISA_VARIABLE = "WINA_ONNX_ISA"


def _available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _load_cuda_libraries() -> None:
    """Make the CUDA libraries of the CUDA EP loadable (torch's, else ORT's preload)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()


def _probe_model() -> onnx.ModelProto:
    """y = x + x: a standard op every provider has, to see whether a session starts."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return finish_model(graph)


def _missing_reason(provider: str) -> str | None:
    """Why this ONNX Runtime build has no `provider` (checked at collection: no GPU is touched)."""
    if provider not in ORT_NAMES:
        raise ValueError(f"unknown provider {provider!r}: expected one of {ALL}")
    if ORT_NAMES[provider] in _available():
        return None
    return (f"onnxruntime has no {ORT_NAMES[provider]} (a CPU-only build): install onnxruntime-gpu "
            "on a machine with an NVIDIA GPU to run these cases")


@functools.cache
def unavailable_reason(provider: str) -> str | None:
    """Why `provider` cannot run here, or None when it can (a session is tried once per process)."""
    missing = _missing_reason(provider)
    if missing is not None or provider == CPU:
        return missing
    _load_cuda_libraries()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        sess = ort.InferenceSession(_probe_model().SerializeToString(), options, providers=[ORT_NAMES[provider]])
        sess.run(None, {"x": np.ones(2, np.float32)})
    except Exception as exc:  # noqa: BLE001 (any failure to start means: cannot run here)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"onnxruntime's {ORT_NAMES[provider]} cannot start (no GPU or driver?): {first_line[:300]}"
    if sess.get_providers()[0] != ORT_NAMES[provider]:
        return f"onnxruntime's {ORT_NAMES[provider]} did not take the session (providers {sess.get_providers()})"
    return None


def providers(*names: str) -> list:
    """pytest parameters for a test's `provider` argument: each of `names` (default: all) with
    its markers, skipped with the reason where this ONNX Runtime build lacks it. Whether the
    provider starts (a GPU is there) is checked when the case makes its first session."""
    params = []
    for name in names or ALL:
        marks = list(MARKS[name])
        missing = _missing_reason(name)
        if missing is not None:
            marks.append(pytest.mark.skip(reason=missing))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def require(provider: str) -> None:
    """Skip the running test, with the reason, if `provider` cannot run here."""
    reason = unavailable_reason(provider)
    if reason is not None:
        pytest.skip(reason)


def provider_session(model: onnx.ModelProto, provider: str, *, threads: int | None = 1, isa: str | None = None):
    """An ORT session of `model` with the op library on `provider` alone (for CUDA: CPU fallback
    disabled; get_providers() still lists the CPU provider, which ORT always appends).

    isa caps the CPU kernels' instruction set ("generic", "avx2", "avx512": WINA_ONNX_ISA, read
    at session creation; an older CPU falls back to what it has).
    """
    require(provider)
    if isa is not None:
        if provider != CPU:
            raise ValueError(f"an instruction-set cap applies to the CPU kernels only, not to {provider!r}")
        previous = os.environ.get(ISA_VARIABLE)
        os.environ[ISA_VARIABLE] = isa
        try:
            return session(model, threads=threads)
        finally:
            if previous is None:
                del os.environ[ISA_VARIABLE]
            else:
                os.environ[ISA_VARIABLE] = previous
    if provider == CPU:
        return session(model, threads=threads)
    sess = session(model, threads=threads, providers=[ORT_NAMES[provider]],
                   config={"session.disable_cpu_ep_fallback": "1"})
    assert sess.get_providers()[0] == ORT_NAMES[provider], sess.get_providers()
    return sess


def error_message(run: Callable, model: onnx.ModelProto, x: np.ndarray, provider: str) -> str:
    """The message of the error that run(session, x) raises for `model` on `provider`."""
    with pytest.raises(Exception) as info:
        run(provider_session(model, provider), x)
    return str(info.value)


def provider_cases(table: Mapping[str, Iterable[Any]], name: Callable[[Any], str] = str) -> list:
    """pytest parameters (provider, case) for cases that differ by provider: `table` maps each
    provider to its cases (a provider's own plans or launch shapes); ids read "<provider>-<name(case)>"."""
    params = []
    for provider, cases in table.items():
        (base,) = providers(provider)
        params.extend(pytest.param(provider, case, marks=base.marks, id=f"{provider}-{name(case)}") for case in cases)
    return params
