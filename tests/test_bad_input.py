"""Bad input to the CLI: one line of error, exit status 2, never a traceback.

Complements tests/test_cli.py (not ONNX, missing file, no MatMul, sparsity outside
[0, 1), allocation, already optimized) with: a truncated file, a missing external data
file, an IR version or opset newer than the installed ONNX Runtime, MatMuls skipped for
a weight that is not constant, not 2-D or of an unsupported type (reported, not fatal),
and an optimized model loaded where the op library cannot be found; then every input of
the README's promise ("one line, exit 2, no traceback, nothing written") in turn:
non-UTF-8 or empty --data, counts below their minimum, an empty prompt, a folder as the
model or as the output, --include matching nothing, 4-bit models gated and quantized
forms that are not, a sparsity given as a percentage, options checked before the
calibration, bench on a model without a KV cache, and read-only output folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.graphs import mixed_model, projection_model
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_one_line_error, wina


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(projection_model(64, 32), str(path), save_as_external_data=True, location="model.onnx.data")
    return path


def test_truncated_model_is_refused(tmp_path: Path) -> None:
    full = projection_model(64, 32).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "cut.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_external_data_file_is_refused(external_model: Path, tmp_path: Path) -> None:
    (external_model.parent / "model.onnx.data").unlink()
    result = wina("optimize", str(external_model), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "external data")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("layout, files", [("auto", {"o.onnx", "o.onnx.data"}), ("inline", {"o.onnx"})])
def test_external_data_is_kept_or_inlined_as_asked(external_model: Path, tmp_path: Path, layout: str,
                                                   files: set[str]) -> None:
    out = tmp_path / "out" / "o.onnx"
    result = wina("optimize", str(external_model), "-o", str(out), "--external-data", layout, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.parent.iterdir()} == files
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.parametrize("field", ["ir_version", "opset"])
def test_model_newer_than_the_runtime_is_refused(tmp_path: Path, field: str) -> None:
    model = projection_model(16, 8)
    if field == "ir_version":
        model.ir_version = 99
    else:
        model.opset_import[0].version = 99
    path = tmp_path / "new.onnx"
    path.write_bytes(model.SerializeToString())
    result = wina("eval", str(path), cwd=tmp_path)
    assert_one_line_error(result, "cannot load")


def test_ineligible_matmuls_are_skipped_and_reported(tmp_path: Path) -> None:
    """Dynamic weight, 3-D weight and integer / float64 weights: skipped, each with its reason."""
    model = mixed_model()
    w64 = numpy_helper.from_array(np.ones((8, 8)), "w_f64")
    model.graph.initializer.append(w64)
    model.graph.node.append(helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE))
    model.graph.node.append(helper.make_node("MatMul", ["x64", "w_f64"], ["d64"],
                                             name="/model/layers.0/mlp/down_proj/MatMul"))
    shapes = {"logits": [1, 8], "scores": [1, 1], "dyn": [1, 8], "batched": [2, 1, 8], "ints": [1, 8]}
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, shapes[o.name])
               for o in model.graph.output]
    del model.graph.output[:]
    model.graph.output.extend(outputs + [helper.make_tensor_value_info("d64", TensorProto.DOUBLE, [1, 8])])
    path = tmp_path / "mixed.onnx"
    onnx.save(model, path)
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for reason in ("weight is not a constant initializer", "weight has rank 3, not 2",
                   "weight type INT32 is not float32", "weight type DOUBLE is not float32"):
        assert reason in result.stdout, result.stdout


def test_optimized_model_without_the_op_library_says_how_to_register(tmp_path: Path) -> None:
    optimized = tmp_path / "opt.onnx"
    onnx.save(projection_model(16, 8), tmp_path / "m.onnx")
    assert wina("optimize", str(tmp_path / "m.onnx"), "-o", str(optimized), cwd=tmp_path).returncode == 0
    import os
    import subprocess
    import sys

    env = {**os.environ, "WINA_ONNX_LIBRARY": str(tmp_path / "missing" / "libwina_onnx_ops.so")}
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", "eval", str(optimized)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(result, "register_custom_ops_library(wina_onnx.get_library_path())")


def test_model_failing_the_checker_is_one_line(tmp_path: Path) -> None:
    """Graph outputs without a shape fail onnx.checker: said in one line, no output written."""
    path = tmp_path / "noshape.onnx"
    model = projection_model(16, 8)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(model, path)
    result = wina("optimize", str(path), "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert_one_line_error(result, "fails onnx.checker")
    assert not (tmp_path / "o.onnx").exists()


# ----------------------------------------------------------------------------- the README's promise, input by input
# Each input below gets one line naming the problem and what to do, exit 2, no traceback,
# and leaves the folders it was given exactly as they were.
def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    """A one-projection model in its own folder (no tokenizer: nothing runs on text)."""
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    onnx.save(projection_model(16, 8), path)
    return path


def refused(tmp_path: Path, phrase: str, *args: str) -> str:
    """Run the CLI in tmp_path; assert the one-line error with `phrase` and that nothing was written."""
    before = files_under(tmp_path)
    result = wina(*args, cwd=tmp_path)
    assert_one_line_error(result, phrase)
    assert files_under(tmp_path) == before
    return result.stderr


@pytest.mark.parametrize("command", ["optimize", "calibrate", "eval"])
def test_data_that_is_not_utf8(small_model: Path, tmp_path: Path, command: str) -> None:
    data = tmp_path / "latin1.txt"
    data.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    out = {"optimize": ["-o", "out/model.onnx"], "calibrate": ["-o", "out/calib.npz"], "eval": []}[command]
    stderr = refused(tmp_path, "is not UTF-8 text", command, str(small_model), "--data", str(data), *out)
    assert "byte 0xe9 at offset 3" in stderr and "iconv" in stderr


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_text_to_eval(small_model: Path, tmp_path: Path, content: str) -> None:
    data = tmp_path / "empty.txt"
    data.write_text(content)
    refused(tmp_path, "holds no text", "eval", str(small_model), "--data", str(data))


def test_text_of_one_token_to_eval(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "one.txt"
    data.write_text("the")
    refused(tmp_path, "gives 1 token(s); perplexity needs at least 2", "eval", str(tiny_llama_dir / "model.onnx"),
            "--data", str(data))


@pytest.mark.parametrize("option, value, phrase", [
    ("--windows", "0", "at least 1"), ("--windows", "-1", "at least 1"), ("--window", "1", "at least 2 tokens"),
    ("--stride", "0", "at least 1"), ("--threads", "0", "at least 1"), ("--window", "8.5", "not a whole number")])
def test_eval_counts_below_their_minimum(small_model: Path, tmp_path: Path, option: str, value: str,
                                         phrase: str) -> None:
    stderr = refused(tmp_path, phrase, "eval", str(small_model), f"{option}={value}")
    assert f"argument {option}" in stderr


def test_eval_stride_longer_than_the_window(small_model: Path, tmp_path: Path) -> None:
    refused(tmp_path, "--stride 600 is longer than --window 512", "eval", str(small_model), "--stride", "600")


def test_generate_empty_prompt(small_model: Path, tmp_path: Path) -> None:
    refused(tmp_path, "--prompt is empty", "generate", str(small_model), "--prompt", "")


@pytest.mark.parametrize("value", ["-1", "0"])
def test_generate_max_new_tokens_below_one(small_model: Path, tmp_path: Path, value: str) -> None:
    refused(tmp_path, "at least 1", "generate", str(small_model), "--prompt", "hi", f"--max-new-tokens={value}")


def test_folder_as_the_model_means_its_model_onnx(small_model: Path, tmp_path: Path) -> None:
    result = wina("optimize", str(small_model.parent), "-o", str(tmp_path / "out" / "model.onnx"), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
    listing = wina("inspect", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert listing.returncode == 0 and json.loads(listing.stdout)["gated"], listing.stderr


def test_folder_without_model_onnx(small_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    stderr = refused(tmp_path, "is a folder with no .onnx file in it", "optimize", str(other), "-o", "o.onnx")
    assert str(other) in stderr
    small_model.rename(small_model.parent / "decoder.onnx")
    stderr = refused(tmp_path, "is a folder without model.onnx", "eval", str(small_model.parent))
    assert "decoder.onnx" in stderr  # the file it probably meant


def test_output_that_is_a_folder(small_model: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    refused(tmp_path, "-o out is a folder; give the path of the file to write in it",
            "optimize", str(small_model), "-o", "out")


def test_include_matching_nothing(small_model: Path, tmp_path: Path) -> None:
    stderr = refused(tmp_path, "--include 'q_prj' matches no MatMul node", "optimize", str(small_model),
                     "-o", "out/model.onnx", "--include", "down_proj", "--include", "q_prj")
    assert "/model/layers.0/mlp/down_proj/MatMul" in stderr  # what the names look like


def test_include_matching_nothing_is_said_before_calibrating(tiny_llama_dir: Path, tmp_path: Path) -> None:
    stderr = refused(tmp_path, "matches no MatMul node", "calibrate", str(tiny_llama_dir / "model.onnx"),
                     "-o", "calib.npz", "--include", "nothing*")
    assert "[calibrate]" not in stderr


def test_sparsity_given_as_a_percentage(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Refused while parsing, before the calibration that the defaults run."""
    import time

    start = time.perf_counter()
    stderr = refused(tmp_path, "50 is not a fraction in [0, 1): for 50% give 0.5", "optimize",
                     str(tiny_llama_dir / "model.onnx"), "-o", "out/model.onnx", "--sparsity", "50")
    assert "[" not in stderr.split("error:")[0] and time.perf_counter() - start < 30
    refused(tmp_path, "for 65% give 0.65", "calibrate", str(tiny_llama_dir / "model.onnx"), "-o", "c.npz",
            "--allocate", "greedy", "--target-sparsity", "65", "--allocation-out", "a.json")


@pytest.mark.parametrize("args, phrase", [
    (["--allocation", "{alloc}"], "[0, 1)"),
    (["--allocation", "{alloc}", "--quantize", "int4"], "[0, 1)"),  # before quantizing too
    (["--gating", "topk", "--refine-rounds", "2"], "--refine-rounds needs --gating threshold"),
    (["--gating", "topk", "--refine-rounds", "1", "--quantize", "int4"], "--refine-rounds needs --gating threshold")])
def test_options_checked_before_calibrating(tiny_llama_dir: Path, tmp_path: Path, args: list[str],
                                            phrase: str) -> None:
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"format": "wina-onnx-allocation", "version": 1, "default": 1.5, "sparsity": {}}))
    stderr = refused(tmp_path, phrase, "optimize", str(tiny_llama_dir / "model.onnx"), "-o", "out/model.onnx",
                     *[a.format(alloc=alloc) for a in args])
    assert not [line for line in stderr.splitlines() if line.startswith("[")], stderr  # no step began


def _matmul_nbits_file(tmp_path: Path, *, bits: int = 4, g_idx: bool = False) -> Path:
    """A one-projection MatMulNBits model made by ONNX Runtime's quantizer, with typed shapes."""
    from helpers.nbits_models import nbits_node, quantized_matmul

    model = quantized_matmul(64, 32, block_size=32, bits=bits)
    for value, size in ((model.graph.input[0], 64), (model.graph.output[0], 32)):
        value.CopyFrom(helper.make_tensor_value_info(value.name, TensorProto.FLOAT, ["tokens", size]))
    if g_idx:  # act-order: MatMulNBits' input 4
        node = nbits_node(model)
        while len(node.input) < 4:
            node.input.append("")
        node.input.append("g_idx")
        model.graph.initializer.append(numpy_helper.from_array(np.arange(64, dtype=np.int32) // 32, "g_idx"))
    path = tmp_path / "in" / f"int{bits}{'_gidx' if g_idx else ''}.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, path)
    return path


def test_int4_model_is_gated(tmp_path: Path) -> None:
    model = _matmul_nbits_file(tmp_path)
    result = wina("optimize", str(model), "-o", str(tmp_path / "out" / "model.onnx"), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ops = {n.op_type for n in onnx.load(tmp_path / "out" / "model.onnx").graph.node}
    assert "WinaSparseMatMulNBits" in ops and "MatMulNBits" not in ops


@pytest.mark.parametrize("bits, g_idx, reason", [(8, False, "bits=8"), (4, True, "g_idx")])
def test_quantized_forms_not_gated_say_what_is(tmp_path: Path, bits: int, g_idx: bool, reason: str) -> None:
    model = _matmul_nbits_file(tmp_path, bits=bits, g_idx=g_idx)
    stderr = refused(tmp_path, "MatMulNBits", "optimize", str(model), "-o", "out/model.onnx")
    assert reason in stderr and "it gates 4-bit MatMulNBits" in stderr and "--quantize int4" in stderr


def test_bench_names_the_model_without_a_kv_cache(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A causal LM exported without past (input_ids in, logits out): the error says which model."""
    emb = numpy_helper.from_array(np.ones((10, 4), np.float32), "emb")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
         helper.make_node("MatMul", ["h", "head"], ["logits"])], "no_past",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 10])],
        [emb, numpy_helper.from_array(np.ones((4, 10), np.float32), "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    no_past = tmp_path / "no-past" / "model.onnx"
    no_past.parent.mkdir()
    onnx.save(model, no_past)
    stderr = refused(tmp_path, "has no KV cache", "bench", str(tiny_llama_dir / "model.onnx"), str(no_past),
                     "--repeats", "1", "--prompt-tokens", "4", "--decode-tokens", "1")
    assert f"{no_past} has no KV cache" in stderr


def _run_with_read_only(folder: Path, args: list[str], cwd: Path):
    """Run the CLI while `folder` is read-only. A normal user gets chmod 555; root ignores
    permissions, so for root a read-only tmpfs is mounted over the folder in a private
    mount namespace (unshare), which only that command sees."""
    import os
    import shutil
    import subprocess
    import sys

    command = [sys.executable, "-m", "wina_onnx.cli", *args]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a read-only folder")
    script = 'mount -t tmpfs -o ro none "$0" || exit 99; exec "$@"'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(folder), *command], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 99:
        pytest.skip(f"running as root and cannot mount a read-only folder: {result.stderr.strip()}")
    return result


@pytest.mark.parametrize("args", [
    ["optimize", "{model}", "-o", "ro/model.onnx"],
    ["optimize", "{model}", "-o", "ro/sub/model.onnx"],
    ["calibrate", "{model}", "-o", "ro/calib.npz"],
    ["package", "{model}", "--genai", "ro/genai"],
    ["package", "{model}", "--triton", "ro/models"],
    ["report", "--quality", "{model}", "-o", "ro/plot.png"]], ids=lambda a: "-".join(a[:1] + a[-2:-1]))
def test_read_only_output_folder(small_model: Path, tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "ro").mkdir()
    before = files_under(tmp_path)
    result = _run_with_read_only(tmp_path / "ro", [a.format(model=small_model) for a in args], tmp_path)
    assert_one_line_error(result, "is not writable")
    assert "choose another output folder" in result.stderr
    assert files_under(tmp_path) == before
