"""The op library against runtimes that offer an older C API than the one it was built for.

The library is built on ONNX Runtime 1.21's headers. In a newer runtime it asks for API
21 and gets it. An older runtime returns no API for 21: the library then falls back to
the oldest API it needs (17), leaving out the CUDA kernels when API 18 is missing too;
below 17 it refuses with a one-line error status instead of crashing.

These tests call the library's entry point directly (ctypes) with an OrtApiBase that
wraps the installed runtime's and hides every API version above a limit, which is what
an older runtime looks like to the library.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import onnxruntime
import pytest

import wina_onnx

GET_API = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
GET_VERSION = ctypes.CFUNCTYPE(ctypes.c_char_p)
CREATE_STATUS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
CREATE_SESSION_OPTIONS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))
CREATE_SESSION_OPTIONS_SLOT = 10  # OrtApi: CreateStatus, GetErrorCode, ..., Run, CreateSessionOptions
ORT_FAIL = 1


class OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", GET_API), ("GetVersionString", GET_VERSION)]


def _runtime_api_base() -> OrtApiBase:
    capi = Path(onnxruntime.__file__).parent / "capi"
    libraries = sorted(capi.glob("libonnxruntime.so*"))
    if not libraries:
        pytest.skip(f"no libonnxruntime.so in {capi}: this onnxruntime build does not expose the C API")
    runtime = ctypes.CDLL(str(libraries[0]))
    runtime.OrtGetApiBase.restype = ctypes.POINTER(OrtApiBase)
    return runtime.OrtGetApiBase().contents


def _register(limit: int, *, fake_api: ctypes.Array | None = None) -> tuple[int | None, list]:
    """Call RegisterCustomOps with the runtime's API hidden above `limit`; (status, calls)."""
    real = _runtime_api_base()
    asked: list[int] = []

    def get_api(version: int) -> int | None:
        asked.append(version)
        if fake_api is not None and version == 1:
            return ctypes.addressof(fake_api)
        return real.GetApi(version) if version <= limit else None

    base = OrtApiBase(GET_API(get_api), real.GetVersionString)
    options = ctypes.c_void_p()
    api = ctypes.cast(real.GetApi(17), ctypes.POINTER(ctypes.c_void_p))
    create_options = CREATE_SESSION_OPTIONS(api[CREATE_SESSION_OPTIONS_SLOT])
    assert create_options(ctypes.byref(options)) is None
    library = ctypes.CDLL(wina_onnx.get_library_path())
    library.RegisterCustomOps.restype = ctypes.c_void_p
    library.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.POINTER(OrtApiBase)]
    status = library.RegisterCustomOps(options, ctypes.byref(base))
    return status, asked


def test_newer_runtime_gives_the_built_api():
    status, asked = _register(limit=10_000)
    assert status is None
    assert asked[0] >= 21  # the version of the headers the library was built on


def test_runtime_older_than_the_headers_falls_back_to_api_17():
    status, asked = _register(limit=17)
    assert status is None, "the library must register on a runtime that offers API 17"
    assert 17 in asked


def test_runtime_older_than_17_gets_a_one_line_error():
    messages: list[tuple[int, str]] = []

    def create_status(code: int, message: bytes) -> int:
        messages.append((code, message.decode()))
        return 0x1234  # any non-null pointer: the library only returns it

    callback = CREATE_STATUS(create_status)
    fake_api = (ctypes.c_void_p * 512)()  # an OrtApi of version 1 whose CreateStatus records
    fake_api[0] = ctypes.cast(callback, ctypes.c_void_p).value
    status, asked = _register(limit=0, fake_api=fake_api)
    assert status == 0x1234
    assert messages == [(ORT_FAIL, "libwina_onnx_ops needs ONNX Runtime 1.17 or newer; this one is older")]
    assert "\n" not in messages[0][1]
