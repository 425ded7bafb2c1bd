"""Checks of the command line's arguments, made before any long step.

Each check raises a WinaError whose message is one line: what is wrong and what to do.
The argparse types (fraction, positive_int, ...) reject a bad value while the command
line is parsed, before any model is loaded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx

from .errors import ConfigError, ModelLoadError, NothingToGateError

MODEL_FILE = "model.onnx"


# ----------------------------------------------------------------------------- argparse types
def fraction(text: str) -> float:
    """A sparsity: a number in [0, 1). `50` gets the hint that 0.5 is meant."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction in [0, 1), e.g. 0.5") from None
    if not 0.0 <= value < 1.0:  # NaN fails too
        hint = f": for {value:g}% give {value / 100:g}" if 1.0 <= value < 100.0 else ""
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1){hint}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A whole number of at least 1 (windows, tokens, repeats, threads)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number of at least 0 (rounds)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 0")
    return value


def window_int(text: str) -> int:
    """Tokens per window: at least 2 (one token predicts the next)."""
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text} is too small: a window needs at least 2 tokens")
    return value


# ----------------------------------------------------------------------------- paths
def model_file(path: str | Path) -> Path:
    """The ONNX file a model argument names: a file as given, or the model.onnx of a folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    found = sorted(p.name for p in path.glob("*.onnx"))
    if not found:
        raise ModelLoadError(f"{path} is a folder with no .onnx file in it; give the model's .onnx file")
    raise ModelLoadError(f"{path} is a folder without {MODEL_FILE}; give the model's .onnx file, e.g. "
                         f"{path / found[0]}")


def check_writable(path: str | Path, *, folder: bool = False, option: str = "-o") -> None:
    """Refuse an output that cannot be written, before any work: a folder where a file is
    meant (or the reverse), or a read-only or missing-permission place.

    Probes the nearest existing folder by creating and removing a temporary file there,
    so read-only mounts are caught as well as permissions; nothing is left behind.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give the path of the file to write in it")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder to write into")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; choose another output path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".wina-write-test-", dir=parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {option} {path}: {parent} is not writable ({exc.strerror or exc}); "
                          "choose another output folder") from None
    os.close(handle)
    os.unlink(probe)


# ----------------------------------------------------------------------------- gate targets
def check_targets(header: onnx.ModelProto, model: str | Path, include: list[str], exclude: list[str]) -> None:
    """Refuse, before any calibration, a model with nothing that the pass would gate.

    header: the model loaded without weights. Says which --include pattern matches no
    MatMul, when the model's projections are quantized in a form the pass does not gate
    (and what does), or why each MatMul was skipped.
    """
    from .passes import find_candidates

    graph = header.graph
    candidates, skipped = find_candidates(graph, include=include, exclude=exclude)
    all_candidates, all_skipped = find_candidates(graph)
    names = [c.node_name for c in all_candidates] + [s.node_name for s in all_skipped]
    for pattern in include:
        matched, refused = find_candidates(graph, include=[pattern])
        if not matched and not refused:
            example = f"names look like {names[0]}" if names else "the model has no MatMul"
            raise NothingToGateError(f"--include {pattern!r} matches no MatMul node of {model} ({example}; "
                                     "patterns are fnmatch globs or substrings of node names)")
    if candidates:
        return
    if not skipped and not names:
        raise NothingToGateError(f"no eligible MatMul in {model}: the model has no MatMul")
    nbits = [s for s in skipped if s.reason.startswith("MatMulNBits")]
    if nbits:
        raise NothingToGateError(
            f"no eligible MatMul in {model}: its quantized projections ({len(nbits)} MatMulNBits) are in a form "
            f"wina-onnx does not gate ({nbits[0].reason}); it gates 4-bit MatMulNBits (no g_idx, block size a "
            "power of two of 16 or more) and float MatMuls: optimize the float model, with --quantize int4 for "
            "4-bit weights")
    reasons: dict[str, list[str]] = {}
    for skip in skipped:
        reasons.setdefault(skip.reason, []).append(skip.node_name)
    text = "; ".join(f"{len(v)} skipped: {k} ({v[0]})" for k, v in sorted(reasons.items()))
    raise NothingToGateError(f"no eligible MatMul in {model}: {text or 'the model has no MatMul'}")
