"""`WinaSparseMatMulGroup` (several threshold-gated products on one X) against the oracle.

Every case takes a `provider` (tests/helpers/providers.py): the CPU always; CUDA (marked
`gpu`, CPU fallback disabled) where ONNX Runtime has the provider and a GPU, else skipped
with the reason. Output s must equal `WinaSparseMatMul` of weight s, so the cases also
compare with the single op's oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from wina_onnx import reference  # noqa: E402

from helpers.op_models import DTYPES, assert_close, group_model, run_group  # noqa: E402
from helpers.providers import error_message, provider_session, providers  # noqa: E402

# Token counts: empty, decode (fused kernel up to 8 tokens on CUDA), prefill.
TOKENS = (0, 1, 2, 5, 8, 9, 40)
# Column counts per weight: q/k/v-like, gate/up-like, off the 16-byte vectors and tiles.
GROUPS = {
    "qkv": (64, (64, 16, 16)),
    "gate_up": (48, (136, 136)),
    "odd": (37, (3, 77, 1, 520)),
    "one": (200, (1000,)),
    "wide": (1000, (1536, 512, 512)),
}


def _case(rng, k, ns, dtype, sparsity):
    weights = [(rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32).astype(dtype) for n in ns]
    scale = np.stack([reference.weight_row_norms(w) for w in weights])
    x = rng.standard_normal((max(TOKENS), k)).astype(np.float32).astype(dtype)
    # Each weight its own threshold (its own sparsity around `sparsity`), as calibrated.
    thresholds = np.array(
        [np.quantile(reference.gate_scores(x, scale[s]), min(sparsity + 0.1 * s, 0.95)) if sparsity > 0 else -1.0
         for s in range(len(ns))],
        dtype=np.float32,
    )
    return weights, scale, thresholds, x


@pytest.mark.parametrize("provider", providers())
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("group", list(GROUPS))
def test_group_matches_reference(group, dtype_name, provider):
    k, ns = GROUPS[group]
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(len(ns) * 1000 + k)
    for sparsity in (0.0, 0.5, 0.8):
        weights, scale, thresholds, x_all = _case(rng, k, ns, dtype, sparsity)
        biases = [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in ns] if sparsity == 0.5 else None
        sess = provider_session(group_model(weights, scale, thresholds, biases=biases), provider)
        for m in TOKENS:
            x = x_all[:m]
            if m == 8:
                x = x.reshape(2, 4, k)  # rank 3: every leading index is a token
            ys = run_group(sess, x)
            expected = reference.wina_sparse_matmul_group(x, scale, thresholds, weights, biases)
            assert len(ys) == len(ns)
            for s, (y, e) in enumerate(zip(ys, expected)):
                assert_close(y, e, dtype_name, f"{group} s={sparsity} output {s} X{x.shape}")


@pytest.mark.parametrize("provider", providers())
def test_each_output_has_its_own_keep_set(provider):
    """B_s = identity: Y_s is X masked by weight s's own scale and threshold, exactly."""
    rng = np.random.default_rng(7)
    k = 96
    weights = [np.eye(k, dtype=np.float32)] * 3
    scale = np.stack([np.ones(k, np.float32), rng.uniform(0.5, 2, k).astype(np.float32), np.ones(k, np.float32)])
    thresholds = np.array([0.5, 1.0, np.inf], dtype=np.float32)  # the last keeps nothing
    x = (rng.integers(-4, 5, size=(6, k)) * 0.5).astype(np.float32)
    sess = provider_session(group_model(weights, scale, thresholds), provider)
    for m in (1, 3, 6):
        ys = run_group(sess, x[:m])
        for s in range(3):
            mask = reference.keep_mask(x[:m], scale[s], threshold=float(thresholds[s]))
            np.testing.assert_array_equal(ys[s], np.where(mask, x[:m], 0.0), err_msg=f"output {s}, {m} tokens")
    assert not ys[2].any()


@pytest.mark.parametrize("provider", providers())
def test_error_score_scale_rows_must_match_weights(provider):
    w = np.ones((8, 4), np.float32)
    model = group_model([w, w], np.ones((3, 8), np.float32), np.zeros(3, np.float32))
    msg = error_message(run_group, model, np.ones((1, 8), np.float32), provider)
    assert "score_scale has 3 rows, so the node needs 3 weights" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_threshold_shape(provider):
    w = np.ones((8, 4), np.float32)
    model = group_model([w, w], np.ones((2, 8), np.float32), np.zeros(3, np.float32))
    msg = error_message(run_group, model, np.ones((1, 8), np.float32), provider)
    assert "input 'threshold' (index 2) must have shape [2]" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_weight_k_mismatch(provider):
    msg = error_message(
        run_group,
        group_model([np.ones((8, 4), np.float32), np.ones((9, 4), np.float32)], np.ones((2, 8), np.float32),
                    np.zeros(2, np.float32)),
        np.ones((1, 8), np.float32), provider,
    )
    assert "input 'B_1' (index 4)" in msg and "K = 8" in msg


@pytest.mark.parametrize("provider", providers())
def test_error_bias_shape(provider):
    w = np.ones((8, 4), np.float32)
    model = group_model([w, w], np.ones((2, 8), np.float32), np.zeros(2, np.float32),
                        biases=[np.ones(4, np.float32), np.ones(5, np.float32)])
    msg = error_message(run_group, model, np.ones((1, 8), np.float32), provider)
    assert "input 'bias_1' (index 6) must have shape [4]" in msg
