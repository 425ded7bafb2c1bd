"""Greedy per-matrix allocation (`calibrate --allocate greedy`) and the measured-sparsity probe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wina_onnx.passes.allocation import Allocation
from wina_onnx.cli import main as cli_main
from wina_onnx.errors import ConfigError
from wina_onnx.calibrate.greedy import Target, error_curve, greedy_allocation, sparsity_levels
from wina_onnx.evaluation.sparsity_probe import measure_sparsity


def test_error_curve_starts_at_zero_grows_and_reaches_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 48)).astype(np.float32)
    weight = rng.standard_normal((48, 20)).astype(np.float32)
    levels = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    curve = error_curve(x, weight, np.ones(48, np.float32), levels)
    assert curve[0] == 0.0
    assert np.all(np.diff(curve) > 0)
    assert curve[-1] == pytest.approx(1.0, rel=1e-5)


def test_error_curve_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 10)).astype(np.float32)
    weight = rng.standard_normal((10, 6)).astype(np.float32)
    scale = rng.uniform(0.1, 2.0, 10).astype(np.float32)
    [error] = error_curve(x, weight, scale, np.array([0.3]))
    keep = 10 - 3
    expected_num = 0.0
    for row in x:
        best = np.argsort(-np.abs(row) * scale, kind="stable")[:keep]
        gated = np.zeros_like(row)
        gated[best] = row[best]
        expected_num += np.sum(((row - gated) @ weight) ** 2)
    assert error == pytest.approx(expected_num / np.sum((x @ weight) ** 2), rel=1e-5)


def test_greedy_hits_the_weighted_target_in_every_group_and_favours_cheap_matrices() -> None:
    levels = sparsity_levels(0.05)
    targets = [Target("a", "L0", 100), Target("b", "L0", 300), Target("c", "L1", 50), Target("d", "L1", 50)]
    curves = {
        "a": levels ** 2 * 10.0,  # expensive to sparsify
        "b": levels ** 2 * 0.1,  # cheap
        "c": levels ** 2,
        "d": levels ** 2,
    }
    allocation = greedy_allocation(targets, curves, 0.5)
    s = allocation.sparsity
    assert (100 * s["a"] + 300 * s["b"]) / 400 == pytest.approx(0.5, abs=1e-12)
    assert (50 * s["c"] + 50 * s["d"]) / 100 == pytest.approx(0.5, abs=1e-12)
    assert s["b"] > 0.5 > s["a"]
    assert abs(s["c"] - s["d"]) <= 0.05 + 1e-9  # symmetric curves stay within one step
    assert allocation.default == 0.5


def test_greedy_rejects_targets_out_of_range() -> None:
    with pytest.raises(ConfigError):
        greedy_allocation([Target("a", "L0", 1)], {"a": sparsity_levels()}, 1.0)
    with pytest.raises(ConfigError, match="maximum"):
        greedy_allocation([Target("a", "L0", 1)], {"a": sparsity_levels()}, 0.97)


def test_calibrate_greedy_then_optimize_reads_the_allocation(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    calib, alloc = tmp_path / "calib.npz", tmp_path / "alloc.json"
    code = cli_main(["calibrate", str(tiny_llama_dir / "model.onnx"), "-o", str(calib), "--windows", "4",
                     "--window", "64", "--allocate", "greedy", "--target-sparsity", "0.5",
                     "--allocation-out", str(alloc), "-q"])
    assert code == 0
    data = json.loads(alloc.read_text())
    assert len(data["sparsity"]) == 14
    allocation = Allocation.load(alloc)
    assert len(set(round(v, 6) for v in allocation.sparsity.values())) > 1  # not uniform
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for sidecar in tiny_llama_dir.glob("*.json"):
        shutil.copy2(sidecar, out_dir / sidecar.name)
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out_dir / "model.onnx"),
                     "--gating", "topk", "--allocation", str(alloc), "-q"]) == 0
    ids = np.random.default_rng(0).integers(0, 49152, 128)
    probe = measure_sparsity(out_dir / "model.onnx", ids, windows=1, window=128)
    # top-k: K - round(s K) kept per gate, so the weighted measure is the target up to rounding.
    assert probe["weighted"] == pytest.approx(0.5, abs=0.01)


def test_allocation_out_needs_a_target(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["calibrate", str(tiny_llama_dir / "model.onnx"), "-o", str(tmp_path / "c.npz"),
                     "--allocate", "greedy", "--allocation-out", str(tmp_path / "a.json")])
    assert code == 2
    assert "--sparsity and --allocation-out go together" in capsys.readouterr().err
    assert not (tmp_path / "c.npz").exists()


def test_error_curves_survive_the_calibration_file_and_match_the_search(tiny_llama_dir: Path,
                                                                        tmp_path: Path) -> None:
    from wina_onnx.calibrate.calibration import Calibration, calibrate_model
    from wina_onnx.calibrate.greedy import ActivationSample, Target, error_curve, greedy_allocation, sparsity_levels
    from wina_onnx.passes import uses_norm

    sample = ActivationSample(rows=64)
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", windows=2, window=64, sample=sample,
                                  curves=True, progress=False)
    calibration.save(tmp_path / "c.npz")
    loaded = Calibration.load(tmp_path / "c.npz").curves
    assert loaded is not None and len(loaded.targets) == 14
    levels = sparsity_levels()
    for mode, norm_on in (("wina", "all"), ("wina", "reference"), ("teal", "all")):
        # Recomputed directly from the sample, one curve per target with this mode's score.
        targets, direct_curves = [], {}
        for name, weight in sample.weights.items():
            norm = uses_norm(mode, norm_on, sample.roles[name])
            scale = np.linalg.norm(weight, axis=1) if norm else np.ones(weight.shape[0], np.float32)
            direct_curves[name] = error_curve(sample.matrix(name), weight, scale, levels)
            targets.append(Target(name, sample.groups[name], weight.size * weight.dtype.itemsize))
        direct = greedy_allocation(targets, direct_curves, 0.5)
        assert loaded.allocate(0.5, mode=mode, norm_on=norm_on).sparsity == pytest.approx(direct.sparsity)
    # The two scores give different allocations, and reference mixes them by role.
    wina, teal = loaded.allocate(0.5, mode="wina").sparsity, loaded.allocate(0.5, mode="teal").sparsity
    assert wina != pytest.approx(teal)


def _optimized_config(path: Path) -> dict:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(meta["wina_onnx.config"])


def test_optimize_defaults_calibrate_here_with_thresholds_and_greedy(tiny_llama_dir: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "model.onnx"
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--sparsity", "0.4",
                     "--calib-windows", "2", "--calib-window", "64", "-q"]) == 0
    config = _optimized_config(out)
    assert config["gating"] == "threshold"
    assert config["mode"] == "wina"
    assert config["norm_on"] == "reference"
    assert "greedy 0.4" in json.dumps(config)
    assert config["calibration"]  # the text it was calibrated on is recorded


def test_optimize_without_a_tokenizer_falls_back_to_uniform_topk_and_says_so(tiny_llama_dir: Path,
                                                                            tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(tiny_llama_dir / "model.onnx", bare / "model.onnx")
    out = tmp_path / "out.onnx"
    assert cli_main(["optimize", str(bare / "model.onnx"), "-o", str(out), "-q"]) == 0
    assert "not calibrated here: topk gating, uniform allocation" in capsys.readouterr().err
    config = _optimized_config(out)
    assert config["gating"] == "topk"
    assert cli_main(["optimize", str(bare / "model.onnx"), "-o", str(out), "--allocate", "greedy", "-q"]) == 2
    assert "--allocate greedy needs a calibration" in capsys.readouterr().err


def test_optimize_with_a_calibration_file_uses_its_curves(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    model = str(tiny_llama_dir / "model.onnx")
    plain, greedy = tmp_path / "plain.npz", tmp_path / "greedy.npz"
    common = ["--windows", "2", "--window", "64", "-q"]
    assert cli_main(["calibrate", model, "-o", str(plain), *common]) == 0
    assert cli_main(["calibrate", model, "-o", str(greedy), "--allocate", "greedy", *common]) == 0
    capsys.readouterr()
    assert cli_main(["optimize", model, "-o", str(tmp_path / "a.onnx"), "--calibration", str(greedy), "-q"]) == 0
    assert "greedy 0.5" in json.dumps(_optimized_config(tmp_path / "a.onnx"))
    assert cli_main(["optimize", model, "-o", str(tmp_path / "b.onnx"), "--calibration", str(plain), "-q"]) == 0
    assert "no error curves" in capsys.readouterr().err
    assert "greedy" not in json.dumps(_optimized_config(tmp_path / "b.onnx"))
    assert cli_main(["optimize", model, "-o", str(tmp_path / "c.onnx"), "--calibration", str(plain),
                     "--allocate", "greedy", "-q"]) == 2


def test_probe_measures_threshold_sparsity_near_the_calibrated_target(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from wina_onnx.calibrate.calibration import calibrate_model
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.data import read_text
    from wina_onnx.runtime.session import load_tokenizer

    from helpers.pipeline_helpers import optimized_copy

    ids = tokenize_text(load_tokenizer(tiny_llama_dir), read_text(None))[:1024]
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", token_ids=ids, windows=4, window=256,
                                  progress=False)
    out = optimized_copy(tiny_llama_dir, tmp_path, gating="threshold", calibration=calibration, sparsity=0.4)
    probe = measure_sparsity(out, ids, windows=4, window=256)
    # Measured on the calibration text itself: the histogram quantile is accurate to a bin.
    assert probe["weighted"] == pytest.approx(0.4, abs=0.01)
    assert all(0.3 < f < 0.5 for f in probe["gates"].values())


def test_refined_thresholds_hit_the_target_inside_the_gated_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from wina_onnx.calibrate.calibration import calibrate_model
    from wina_onnx.data import read_text
    from wina_onnx.evaluation.perplexity import tokenize_text
    from wina_onnx.optimize import optimize_model
    from wina_onnx.passes import GateConfig
    from wina_onnx.calibrate.refine import Refinement
    from wina_onnx.runtime.session import load_tokenizer

    ids = tokenize_text(load_tokenizer(tiny_llama_dir), read_text(None))[:1024]
    calibration = calibrate_model(tiny_llama_dir / "model.onnx", token_ids=ids, windows=4, window=256,
                                  progress=False)
    config = GateConfig(gating="threshold", allocation=Allocation.uniform(0.6), calibration=calibration)
    plain, refined = tmp_path / "plain" / "model.onnx", tmp_path / "refined" / "model.onnx"
    optimize_model(tiny_llama_dir / "model.onnx", plain, config, progress=False)
    report = optimize_model(tiny_llama_dir / "model.onnx", refined, config, progress=False,
                            refine=Refinement(token_ids=ids, windows=4, window=256, rounds=2))
    before = measure_sparsity(plain, ids, windows=4, window=256)
    after = measure_sparsity(refined, ids, windows=4, window=256)
    # Every gate at its target on the refinement text, given the others' thresholds.
    assert all(abs(f - 0.6) < 0.02 for f in after["gates"].values()), after["gates"]
    assert abs(after["weighted"] - 0.6) <= abs(before["weighted"] - 0.6) + 1e-3
    assert {r.threshold for r in report.records} != {r.threshold for r in
                                                   optimize_model(tiny_llama_dir / "model.onnx",
                                                                  tmp_path / "again.onnx", config,
                                                                  progress=False).records}
    assert _optimized_config(refined)["thresholds_refined"] == {"rounds": 2, "windows": 4, "window": 256}


def test_refinement_needs_threshold_gates(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(tmp_path / "o.onnx"),
                     "--gating", "topk", "--allocate", "uniform", "--refine-rounds", "1", "-q"])
    assert code == 2
    assert "--refine-rounds needs --gating threshold" in capsys.readouterr().err


def test_optimize_refines_threshold_gates_by_default(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The default (the grid's measured best): thresholds re-read once inside the gated model."""
    out = tmp_path / "default" / "model.onnx"
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--sparsity", "0.5",
                     "--calib-windows", "2", "--calib-window", "64", "-q"]) == 0
    config = _optimized_config(out)
    assert config["gating"] == "threshold"
    assert config["thresholds_refined"] == {"rounds": 1, "windows": 2, "window": 64}

    off = tmp_path / "off" / "model.onnx"
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(off), "--sparsity", "0.5",
                     "--calib-windows", "2", "--calib-window", "64", "--refine-rounds", "0", "-q"]) == 0
    assert _optimized_config(off)["thresholds_refined"] is None


def test_top_k_gating_is_not_refined_and_needs_no_text(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "topk" / "model.onnx"
    assert cli_main(["optimize", str(tiny_llama_dir / "model.onnx"), "-o", str(out), "--gating", "topk",
                     "--allocate", "uniform", "-q"]) == 0
    assert _optimized_config(out)["thresholds_refined"] is None
