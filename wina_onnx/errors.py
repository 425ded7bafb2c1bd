"""Errors the user can act on. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class WinaError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ModelLoadError(WinaError):
    """The file is not a readable ONNX model."""


class NothingToGateError(WinaError):
    """The model has no MatMul that the pass can gate."""


class ConfigError(WinaError):
    """An option, allocation or calibration file is invalid or does not fit the model."""


class AlreadyOptimizedError(WinaError):
    """The model was already rewritten by wina-onnx."""


class ModelCheckError(WinaError):
    """The rewritten model does not pass onnx.checker (usually: neither does the input)."""
