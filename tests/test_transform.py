"""WINA's tensor transformation (passes.rotate, `optimize --transform`) on real exported models.

The transformed dense model must compute the same function as the original: logits and
KV cache equal within float32 rounding. The key weights (k_proj, gate_proj) must come
out row-orthogonal, which is the property WINA's selection rule relies on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from wina_onnx import schema
from wina_onnx.passes.allocation import Allocation
from wina_onnx.calibrate.calibration import calibrate_model
from wina_onnx.errors import ConfigError
from wina_onnx.modelio import save_model_atomic
from wina_onnx.optimize import optimize_model
from wina_onnx.passes import GateConfig, TransformError, rotate_residual_stream
from wina_onnx.passes.rotate import find_rms_norms

from helpers.pipeline_helpers import logits


def _distinct_norm_scales(model: onnx.ModelProto, seed: int = 0) -> None:
    """Give every RMSNorm its own random scale (the random-init export shares one all-ones vector)."""
    rng = np.random.default_rng(seed)
    for norm in find_rms_norms(model.graph):
        d = next(i for i in model.graph.initializer if i.name == "model.layers.0.input_layernorm.weight").dims[0]
        name = f"{norm.scale_node.name}_test_scale"
        model.graph.initializer.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, d).astype(np.float32), name))
        index = 0 if norm.scale_node.input[0] == norm.scale_name else 1
        norm.scale_node.input[index] = name


@pytest.fixture(scope="module")
def tiny_variants(tiny_llama_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama with distinct norm scales, and its transformed copy."""
    root = tmp_path_factory.mktemp("transform")
    paths = {}
    for name in ("plain", "rotated"):
        folder = root / name
        folder.mkdir()
        for sidecar in tiny_llama_dir.glob("*.json"):
            shutil.copy2(sidecar, folder / sidecar.name)
        paths[name] = folder / "model.onnx"
    model = onnx.load(tiny_llama_dir / "model.onnx")
    _distinct_norm_scales(model)
    save_model_atomic(model, paths["plain"])
    report = rotate_residual_stream(model)
    assert report.details["blocks"] == 4 and report.details["shortcut_matmuls"] == 3
    assert report.details["added_weight_bytes_per_token"] == 3 * 64 * 64 * 4
    save_model_atomic(model, paths["rotated"])
    return paths


def test_dense_transformed_equals_original_on_the_tiny_llama(tiny_variants: dict[str, Path]) -> None:
    ids = np.random.default_rng(1).integers(0, 49152, 24)
    plain = logits(tiny_variants["plain"], ids)
    rotated = logits(tiny_variants["rotated"], ids)
    np.testing.assert_allclose(rotated, plain, rtol=0, atol=2e-4 * np.abs(plain).max())
    assert np.abs(rotated - plain).max() > 0  # it really changed the weights


def test_transformed_model_passes_the_checker_and_records_what_it_did(tiny_variants: dict[str, Path]) -> None:
    model = onnx.load(tiny_variants["rotated"])
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert '"shortcut_matmuls": 3' in props[schema.META_TRANSFORM]
    # The scales were folded: every norm now multiplies by ones.
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for norm in find_rms_norms(model.graph):
        assert np.all(inits[norm.scale_name] == 1.0)


def test_key_weights_become_row_orthogonal(tiny_variants: dict[str, Path]) -> None:
    model = onnx.load(tiny_variants["rotated"])
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and ("k_proj" in node.name or "gate_proj" in node.name):
            b = inits[node.input[1]]
            gram = b @ b.T
            off_diagonal = gram - np.diag(np.diag(gram))
            assert np.abs(off_diagonal).max() < 1e-4 * np.abs(np.diag(gram)).max()
            checked += 1
    assert checked == 4


def test_transform_refuses_a_second_time_and_graphs_without_norms(tiny_variants: dict[str, Path]) -> None:
    model = onnx.load(tiny_variants["rotated"])
    with pytest.raises(TransformError, match="already transformed"):
        rotate_residual_stream(model)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="q_proj/MatMul")],
                              "g", [x], [y], [weight])
    with pytest.raises(TransformError, match="found 0 RMSNorm"):
        rotate_residual_stream(helper.make_model(graph))


def test_optimize_transform_at_sparsity_zero_equals_dense(tiny_variants: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    for sidecar in tiny_variants["plain"].parent.glob("*.json"):
        shutil.copy2(sidecar, tmp_path / sidecar.name)
    config = GateConfig(allocation=Allocation.uniform(0.0), transform=True)
    report = optimize_model(tiny_variants["plain"], out, config, progress=False)
    assert len(report.records) == 14  # the shortcut rotations are not decoder projections
    assert any("wina_shortcut" in s.node_name for s in report.skipped)
    ids = np.random.default_rng(2).integers(0, 49152, 16)
    dense = logits(tiny_variants["plain"], ids)
    np.testing.assert_allclose(logits(out, ids), dense, rtol=0, atol=2e-4 * np.abs(dense).max())


def test_threshold_gating_needs_a_calibration_of_the_same_model(tiny_variants: dict[str, Path],
                                                                tmp_path: Path) -> None:
    plain_calibration = calibrate_model(tiny_variants["plain"], windows=2, window=32, progress=False)
    assert not plain_calibration.transformed
    config = GateConfig(gating="threshold", calibration=plain_calibration, transform=True)
    with pytest.raises(ConfigError, match="calibrate with --transform"):
        optimize_model(tiny_variants["plain"], tmp_path / "m.onnx", config, progress=False)
    rotated_calibration = calibrate_model(tiny_variants["plain"], windows=2, window=32, progress=False,
                                          transform=True)
    assert rotated_calibration.transformed
    config = GateConfig(gating="threshold", calibration=rotated_calibration, transform=True)
    optimize_model(tiny_variants["plain"], tmp_path / "m.onnx", config, progress=False)
    assert not (tmp_path / "m.onnx.tmp").exists()


def test_dense_transformed_equals_original_on_smollm2(smollm2_dir: Path, tmp_path: Path) -> None:
    model = onnx.load(smollm2_dir / "model.onnx")
    report = rotate_residual_stream(model)
    assert report.details["blocks"] == 60 and report.details["hidden_size"] == 576
    out = tmp_path / "model.onnx"
    save_model_atomic(model, out)
    del model
    ids = np.random.default_rng(3).integers(0, 49152, 12)
    dense = logits(smollm2_dir / "model.onnx", ids)
    rotated = logits(out, ids)
    # 60 blocks of float32 rounding on logits of magnitude ~30.
    np.testing.assert_allclose(rotated, dense, rtol=0, atol=2e-3 * np.abs(dense).max())
    assert (rotated.argmax(-1) == dense.argmax(-1)).all()
