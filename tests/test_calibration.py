"""Calibration histograms: bounded memory, accurate quantiles, a file that checks its fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wina_onnx.calibrate.calibration import NUM_BINS, Calibration, histogram_of, quantile
from wina_onnx.errors import ConfigError


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.65, 0.9])
def test_quantile_of_the_histogram_matches_numpy(fraction: float) -> None:
    rng = np.random.default_rng(0)
    scores = np.abs(rng.standard_normal(200_000)) * rng.lognormal(0, 1, 200_000)
    counts = histogram_of(scores)
    assert counts.shape == (NUM_BINS,) and counts.sum() == scores.size
    threshold = quantile(counts, fraction)
    # The masked fraction, not the threshold itself, is what the user asked for.
    assert abs((scores <= threshold).mean() - fraction) < 0.002


def test_zeros_nan_and_extremes_are_counted() -> None:
    counts = histogram_of(np.array([0.0, 0.0, np.nan, 1e-30, 1e30, 1.0], dtype=np.float32))
    assert counts.sum() == 6 and counts[0] == 2  # zeros in bin 0; tiny and huge values clipped to the ends
    assert quantile(counts, 0.3) == 0.0


def test_file_round_trip_and_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    calib = Calibration(features={"a": 4}, source="unit", tokens=10)
    calib.add("a", "wina", rng.random(1000))
    calib.add("a", "teal", rng.random(1000))
    calib.add("a", "wina", rng.random(1000))  # accumulates
    calib.save(tmp_path / "c.npz")
    loaded = Calibration.load(tmp_path / "c.npz")
    assert loaded.source == "unit" and loaded.features == {"a": 4}
    assert loaded.counts["a"]["wina"].sum() == 2000
    assert loaded.threshold("a", "wina", 0.5) == pytest.approx(calib.threshold("a", "wina", 0.5))
    assert loaded.threshold("a", "wina", 0.0) < 0  # sparsity 0 keeps everything


def test_calibration_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    calib = Calibration(features={"a": 4})
    calib.add("a", "wina", np.ones(4))
    with pytest.raises(ConfigError, match="does not match this model"):
        calib.check_covers(["a", "b"])
    (tmp_path / "bad.npz").write_bytes(b"not a calibration")
    with pytest.raises(ConfigError, match="cannot read calibration file"):
        Calibration.load(tmp_path / "bad.npz")
