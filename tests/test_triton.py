"""`wina-onnx package --triton`: the config.pbtxt parses, matches the model and names the library.

Triton itself cannot run here, so the config is parsed with protobuf's text_format against
a minimal message holding the ModelConfig fields we write (field numbers need not match
Triton's: text format goes by field names).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from helpers.pipeline_helpers import optimized_copy

from wina_onnx import schema
from wina_onnx.cli import main
from wina_onnx.integrations import triton
from wina_onnx.library import LIBRARY_NAME

_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
          "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
          "TYPE_BF16"]


def _config_message():
    """A minimal ModelConfig message class built at run time (no Triton protos needed)."""
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="wina_test_model_config.proto", package="winatest", syntax="proto3")
    dtype = f.enum_type.add(name="DataType")
    for i, n in enumerate(_TYPES):
        dtype.value.add(name=n, number=i)

    def field(msg, name, number, kind, label=F.LABEL_OPTIONAL, type_name=None):
        fd = msg.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            fd.type_name = type_name

    tensor = f.message_type.add(name="Tensor")
    field(tensor, "name", 1, F.TYPE_STRING)
    field(tensor, "data_type", 2, F.TYPE_ENUM, type_name=".winatest.DataType")
    field(tensor, "dims", 3, F.TYPE_INT64, F.LABEL_REPEATED)
    ops = f.message_type.add(name="ModelOperations")
    field(ops, "op_library_filename", 1, F.TYPE_STRING, F.LABEL_REPEATED)
    group = f.message_type.add(name="InstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    field(group, "kind", 1, F.TYPE_ENUM, type_name=".winatest.InstanceGroup.Kind")
    config = f.message_type.add(name="ModelConfig")
    field(config, "name", 1, F.TYPE_STRING)
    field(config, "backend", 2, F.TYPE_STRING)
    field(config, "max_batch_size", 3, F.TYPE_INT32)
    field(config, "input", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".winatest.Tensor")
    field(config, "output", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".winatest.Tensor")
    field(config, "model_operations", 6, F.TYPE_MESSAGE, type_name=".winatest.ModelOperations")
    field(config, "default_model_filename", 7, F.TYPE_STRING)
    field(config, "instance_group", 8, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".winatest.InstanceGroup")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("winatest.ModelConfig"))


def _parse(path: Path):
    return text_format.Parse(path.read_text(encoding="utf-8"), _config_message()())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wina_model(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return optimized_copy(tiny_llama_dir, tmp_path_factory.mktemp("wina-triton"), sparsity=0.5)


def _expected_io(model_path: Path):
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(values):
        out = []
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            name = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                    onnx.TensorProto.FLOAT16: "TYPE_FP16"}[t.elem_type]
            out.append((v.name, name, dims))
        return out

    return spec(model.graph.input), spec(model.graph.output)


def test_cli_writes_repository(wina_model: Path, tmp_path: Path, capsys):
    before = {p.name: _digest(p) for p in wina_model.parent.iterdir() if p.is_file()}
    repo = tmp_path / "repo"
    assert main(["package", "--triton", str(repo), str(wina_model), "--name", "wina_llama"]) == 0
    assert "wina_llama" in capsys.readouterr().out
    target = repo / "wina_llama"
    assert (target / "1" / "model.onnx").is_file()
    assert _digest(target / "1" / "model.onnx") == before["model.onnx"]
    assert (target / LIBRARY_NAME).is_file()
    assert not (target / "1" / "tokenizer.json").exists()
    # The input folder is untouched; nothing but the model folder is left in REPO (no temp folders).
    assert {p.name: _digest(p) for p in wina_model.parent.iterdir() if p.is_file()} == before
    assert [p.name for p in repo.iterdir()] == ["wina_llama"]

    config = _parse(target / "config.pbtxt")
    assert config.name == "wina_llama"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 0
    libraries = list(config.model_operations.op_library_filename)
    assert len(libraries) == 1
    assert os.path.isabs(libraries[0]) and Path(libraries[0]).is_file()
    assert Path(libraries[0]).samefile(target / LIBRARY_NAME)

    dtype = config.DESCRIPTOR.file.enum_types_by_name["DataType"]
    got_in = [(t.name, dtype.values_by_number[t.data_type].name, list(t.dims)) for t in config.input]
    got_out = [(t.name, dtype.values_by_number[t.data_type].name, list(t.dims)) for t in config.output]
    want_in, want_out = _expected_io(wina_model)
    assert got_in == want_in and got_out == want_out
    names = [n for n, _, _ in got_in]
    assert {"input_ids", "attention_mask", "past_key_values.0.key"} <= set(names)
    assert dict((n, (t, d)) for n, t, d in got_in)["input_ids"] == ("TYPE_INT64", [-1, -1])
    assert got_out[0][0] == "logits" and got_out[0][1] == "TYPE_FP32"
    # The copied model still uses the op the library provides.
    assert any(n.op_type == schema.OP_TYPE for n in onnx.load(str(target / "1" / "model.onnx")).graph.node)


def test_library_path_option_and_errors(wina_model: Path, tmp_path: Path, capsys):
    repo = tmp_path / "repo"
    remote = "/opt/tritonserver/models/wina/libwina_onnx_ops.so"
    assert main(["package", "--triton", str(repo), str(wina_model), "--library-path", remote]) == 0
    name = wina_model.parent.name  # default name: the model's folder
    config = _parse(repo / name / "config.pbtxt")
    assert list(config.model_operations.op_library_filename) == [remote]
    # An existing model folder is kept unless --force; a relative library path is refused.
    assert main(["package", "--triton", str(repo), str(wina_model)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["package", "--triton", str(repo), str(wina_model), "--force", "--library-path", "lib.so"]) == 2
    assert list(_parse(repo / name / "config.pbtxt").model_operations.op_library_filename) == [remote]
    assert main(["package", "--triton", str(repo), str(wina_model), "--force"]) == 0
    assert Path(_parse(repo / name / "config.pbtxt").model_operations.op_library_filename[0]).is_file()
    assert sorted(p.name for p in repo.iterdir()) == [name]


def test_failed_write_leaves_nothing(wina_model: Path, tmp_path: Path, monkeypatch):
    repo = tmp_path / "repo"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(triton, "config_text", boom)
    with pytest.raises(RuntimeError):
        triton.write_triton_repository(repo, wina_model, name="m")
    assert list(repo.iterdir()) == []


def test_help_mentions_absolute_library_path(capsys):
    with pytest.raises(SystemExit):
        main(["package", "--help"])
    out = capsys.readouterr().out
    assert "--library-path" in out and "absolute" in out


def test_external_data_is_copied(wina_model: Path, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(wina_model))
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)
    repo = tmp_path / "repo"
    target = triton.write_triton_repository(repo, src / "model.onnx", name="ext")
    assert (target / "1" / "model.onnx.data").is_file()
    assert _digest(target / "1" / "model.onnx.data") == _digest(src / "model.onnx.data")
    onnx.checker.check_model(str(target / "1" / "model.onnx"))  # loads with its external data
