"""ONNX Runtime GenAI model folders: write one for a wina-onnx model, keep one through `optimize`.

Layout (what `onnxruntime_genai.Model(folder)` loads):

    OUT/model.onnx (+ external data)   the model, copied unchanged
    OUT/libwina_onnx_ops.so            the op library, copied (only for a WINA model)
    OUT/genai_config.json              decoder inputs/outputs, sizes, search defaults
    OUT/tokenizer.json ...             tokenizer and config files from beside the model

genai_config.json names the Optimum graph's tensors (input_ids, attention_mask,
position_ids, past_key_values.%d.key/value -> logits, present.%d.key/value) and, under
model.decoder.session_options, `custom_ops_library: "libwina_onnx_ops.so"`: a relative
path that GenAI resolves against the model folder (it refuses libraries outside the
folder, an EP library folder or the working directory). The present tensors hold the
past plus the new tokens, so `past_present_share_buffer` is false.

A model that already lives in a GenAI folder (made by GenAI's model builder: model.onnx,
genai_config.json, tokenizer files, no config.json) keeps its genai_config.json: only
the decoder's filename and session_options.custom_ops_library change, every other
setting (past_present_share_buffer, the eos_token_id list, provider options, ...) stays.
`optimize` does the same for its output folder (`keep_genai_folder`).

The folder is written beside its final place and renamed in when complete.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from ..library import LIBRARY_NAME, get_library_path
from ..modelio import copy_model, load_model, model_file, write_folder

# Tokenizer and configuration files GenAI (or a user) may need beside the model.
SIDECAR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
    "config.json", "generation_config.json",
)
GENAI_CONFIG = "genai_config.json"
_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT_RE = re.compile(r"^present\.(\d+)\.(key|value)$")


def _static(dim) -> int | None:
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def _first_id(value) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def genai_config(model, config: dict, generation: dict, *, filename: str = "model.onnx",
                 library: str | None = LIBRARY_NAME, context_length: int | None = None) -> dict:
    """The genai_config.json dict for the onnx.ModelProto `model` (header only is enough).

    config / generation: the Hugging Face config.json and generation_config.json (may be
    empty when the graph has static KV shapes and the token ids are given elsewhere).
    library: the op library path written as custom_ops_library (None: no library).
    """
    initializers = {i.name for i in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    outputs = {v.name for v in model.graph.output}
    if "input_ids" not in inputs or "logits" not in outputs:
        raise ModelLoadError("the model has no input_ids input or logits output; export with task "
                             "text-generation-with-past (wina-onnx export)")
    layers = sorted({int(m.group(1)) for name in inputs if (m := _PAST_RE.match(name))})
    presents = sorted({int(m.group(1)) for name in outputs if (m := _PRESENT_RE.match(name))})
    if not layers or layers != list(range(len(layers))) or presents != layers:
        raise ModelLoadError("the model has no past_key_values.N.key/value inputs with matching present.N.key/value "
                             "outputs (export with past)")
    shape = inputs["past_key_values.0.key"].type.tensor_type.shape.dim
    kv_heads = _static(shape[1]) or config.get("num_key_value_heads") or config.get("num_attention_heads")
    head_size = _static(shape[3]) or config.get("head_dim")
    heads = config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    if head_size is None and hidden and heads:
        head_size = hidden // heads
    vocab = config.get("vocab_size")
    missing = [name for name, value in (("num_key_value_heads", kv_heads), ("head_dim", head_size),
                                        ("num_attention_heads", heads), ("hidden_size", hidden),
                                        ("vocab_size", vocab)) if not value]
    if missing:
        raise ConfigError(f"cannot tell {', '.join(missing)} from the model; keep its config.json beside it")
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    if not eos_ids:
        raise ConfigError("no eos_token_id in generation_config.json or config.json")
    bos = _first_id(generation.get("bos_token_id", config.get("bos_token_id")))
    pad = _first_id(generation.get("pad_token_id", config.get("pad_token_id")))
    context = int(context_length or config.get("max_position_embeddings") or 2048)

    session_options: dict = {"log_id": "wina-onnx", "provider_options": []}
    if library is not None:
        session_options["custom_ops_library"] = library
    names_in = {"input_ids": "input_ids",
                "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if "attention_mask" in inputs:
        names_in["attention_mask"] = "attention_mask"
    if "position_ids" in inputs:
        names_in["position_ids"] = "position_ids"
    return {
        "model": {
            "bos_token_id": bos if bos is not None else int(eos_ids[0]),
            "context_length": context,
            "decoder": {
                "session_options": session_options,
                "filename": filename,
                "head_size": int(head_size),
                "hidden_size": int(hidden),
                "inputs": names_in,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": int(heads),
                "num_hidden_layers": len(layers),
                "num_key_value_heads": int(kv_heads),
            },
            "eos_token_id": [int(e) for e in eos_ids] if len(eos_ids) > 1 else int(eos_ids[0]),
            "pad_token_id": pad if pad is not None else int(eos_ids[0]),
            "type": config.get("model_type", "llama"),
            "vocab_size": int(vocab),
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def read_genai_config(folder: str | Path) -> dict | None:
    """genai_config.json of `folder` (None when there is none); ConfigError when it is not one."""
    path = Path(folder) / GENAI_CONFIG
    if not path.is_file():
        return None
    config = _read_json(path)
    if not isinstance((config.get("model") or {}).get("decoder"), dict):
        raise ConfigError(f"{path} has no model.decoder section: not an ONNX Runtime GenAI config")
    return config


def with_op_library(config: dict, *, library: str | None, filename: str) -> dict:
    """A copy of the genai_config dict `config` for the decoder file `filename`.

    library: the op library path to name as custom_ops_library (relative to the folder),
    or None for a dense model (a custom_ops_library naming our library is then dropped;
    one naming another library is kept). Nothing else changes.
    """
    out = copy.deepcopy(config)
    decoder = out["model"]["decoder"]
    decoder["filename"] = filename
    options = decoder.setdefault("session_options", {})
    if library is not None:
        options["custom_ops_library"] = library
    elif Path(str(options.get("custom_ops_library", ""))).name == LIBRARY_NAME:
        del options["custom_ops_library"]
    return out


def _write_atomic(path: Path, data: bytes | None = None, *, source: Path | None = None) -> None:
    """Write `data` (or copy `source`) to `path` through a temporary name in its folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                out.write(data or b"")
        if source is not None:
            shutil.copymode(source, tmp)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_genai_decoder(model_path: str | Path) -> bool:
    """Whether `model_path` is the decoder that the genai_config.json beside it describes."""
    model_path = Path(model_path)
    config = read_genai_config(model_path.parent)
    return config is not None and config["model"]["decoder"].get("filename", "model.onnx") == model_path.name


def keep_genai_folder(input_model: str | Path, output_model: str | Path) -> Path | None:
    """After `optimize`: make the output's folder a GenAI folder when the input's was one.

    Writes genai_config.json (the input's, with the output's file name and, when the
    output uses WinaSparseMatMul, custom_ops_library naming the op library copied beside
    it) into the output's folder. Returns that file, or None when the input's folder is
    not a GenAI folder for it, or the output shares the input's folder (whose config is
    then left as it is).
    """
    from ..runtime.session import uses_wina_domain

    input_model, output_model = Path(input_model), Path(output_model)
    if not is_genai_decoder(input_model):
        return None
    if output_model.parent.resolve() == input_model.parent.resolve():
        return None
    wina = uses_wina_domain(output_model)
    config = with_op_library(read_genai_config(input_model.parent), library=LIBRARY_NAME if wina else None,
                             filename=output_model.name)
    folder = output_model.parent
    if wina:
        _write_atomic(folder / LIBRARY_NAME, source=Path(get_library_path()))
    target = folder / GENAI_CONFIG
    _write_atomic(target, (json.dumps(config, indent=4) + "\n").encode("utf-8"))
    return target


def write_genai_folder(out: str | Path, model_path: str | Path, *, context_length: int | None = None,
                       force: bool = False) -> Path:
    """Write OUT (see the module docstring) for `model_path` (a model.onnx or its folder); return OUT.

    The op library is copied and named in genai_config.json only when the model uses
    WinaSparseMatMul. force replaces an existing OUT. The input is only read.
    """
    from ..runtime.session import uses_wina_domain

    model_path = model_file(model_path)
    model = load_model(model_path, load_weights=False)
    out = Path(out)
    if out.resolve() == model_path.parent.resolve():
        raise ConfigError("the GenAI folder must differ from the model's folder")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    source = model_path.parent
    wina = uses_wina_domain(model_path)
    library = LIBRARY_NAME if wina else None
    if is_genai_decoder(model_path):  # a GenAI folder already: its settings stay as they are
        config = with_op_library(read_genai_config(source), library=library, filename="model.onnx")
        if context_length is not None:
            config["model"]["context_length"] = int(context_length)
    else:
        config = genai_config(model, _read_json(source / "config.json"), _read_json(source / "generation_config.json"),
                              library=library, context_length=context_length)
    if not (source / "tokenizer.json").is_file():
        raise ModelLoadError(f"no tokenizer.json beside {model_path}; GenAI needs the tokenizer files")

    def fill(folder: Path) -> None:
        copy_model(model, model_path, folder / "model.onnx")
        for name in SIDECAR_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
        if wina:
            shutil.copy2(get_library_path(), folder / LIBRARY_NAME)
        (folder / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_folder(out, fill)
    return out
