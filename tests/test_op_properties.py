"""Property tests of `WinaSparseMatMul` against the NumPy oracle (hypothesis).

Both implementations are attacked with random shapes (K or N of 1, empty batches),
dtypes, sparsities, thresholds and hostile X (NaN, +-inf, subnormals, +-0, exact ties
at the k-th score and at the threshold), see tests/helpers/op_cases.py:

* the op library's kernels: the CPU's on every instruction-set path, and CUDA's (marked
  `gpu`, skipped with the reason where ONNX Runtime has no CUDA provider or no GPU; see
  tests/helpers/providers.py);
* the standard-ops lowering of `--backend onnx` (no library, CPU).

The rules under test (docs/op-schema.md): score = |x| * score_scale in float32, a NaN
score counts as +inf; threshold keeps score > threshold (strict, so a NaN threshold
keeps nothing); top-k keeps the k largest scores, ties to the lower index, k clipped
to [0, K].

WINA_ONNX_HYPOTHESIS_EXAMPLES sets the number of examples per test (default 40, to
keep the suite quick on two cores; the README's table was made with more).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper, numpy_helper
from helpers.op_cases import NUMPY_DTYPES, OpCase, assert_matches, op_cases
from helpers.op_models import finish_model, onnx_type, run, wina_model
from helpers.providers import CPU, CUDA, ISAS, provider_cases, provider_session, providers

from wina_onnx import reference
from wina_onnx.passes.lower_standard_ops import StandardOpsLowering

ort = pytest.importorskip("onnxruntime")

EXAMPLES = int(os.environ.get("WINA_ONNX_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # session creation time varies with the machine's load
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("WINA_ONNX_HYPOTHESIS_RANDOM") != "1",  # reproducible in CI
)
# The CPU kernel on each instruction-set path; the CUDA kernels (no cap).
KERNELS = provider_cases({CPU: ISAS, CUDA: [None]}, name=lambda isa: isa or "default")


def _op_run(case: OpCase, provider: str = CPU, isa: str | None = None) -> np.ndarray:
    """Y of the op library's kernel on `provider` (`isa` caps the CPU kernels)."""
    model = wina_model(case.b, case.score_scale, gating=case.gating, bias=case.bias, x_rank=None, **case.params())
    return run(provider_session(model, provider, isa=isa), case.x)


@pytest.mark.parametrize(("provider", "isa"), KERNELS)
@PROPERTY
@given(case=op_cases())
def test_kernel_matches_oracle(provider: str, isa: str | None, case: OpCase) -> None:
    """Any shape, dtype, gating and X: Y equals the oracle (NaN and inf where it has them)."""
    assert_matches(_op_run(case, provider, isa), case, f"{provider} {isa} {case.gating} k={case.k} t={case.threshold}")


@pytest.mark.parametrize(("provider", "isa"), KERNELS)
@PROPERTY
@given(case=op_cases(finite=True, identity_b=True))
def test_kernel_keeps_exactly_the_oracle_set(provider: str, isa: str | None, case: OpCase) -> None:
    """B = I makes Y the masked X: every keep decision (ties, -0, subnormals) must be exact."""
    y = _op_run(case, provider, isa)
    np.testing.assert_array_equal(y.astype(np.float32), case.expected().astype(np.float32))
    kept = reference.keep_mask(case.x, case.score_scale, **case.params())
    if case.gating == "topk":  # exactly min(max(k, 0), K) features per token
        assert (kept.sum(axis=-1) == min(max(case.k, 0), case.x.shape[-1])).all()


# --- the standard-ops lowering (--backend onnx) --------------------------------------


def lowered_model(case: OpCase) -> onnx.ModelProto:
    """The `--backend onnx` lowering of one gated MatMul, as the pass emits it."""
    dtype = onnx_type(case.x.dtype)
    graph = helper.make_graph(
        [], "lowered",
        [helper.make_tensor_value_info("X", dtype, None)],
        [helper.make_tensor_value_info("Y", dtype, None)],
        [numpy_helper.from_array(case.b, "B"), numpy_helper.from_array(case.score_scale, "scale")],
    )
    if case.gating == "topk":
        graph.initializer.append(numpy_helper.from_array(np.array([case.k], np.int64), "k"))
    else:
        graph.initializer.append(numpy_helper.from_array(np.array([case.threshold], np.float32), "threshold"))
    product = "Y" if case.bias is None else "XB"
    nodes = StandardOpsLowering(graph).emit(
        prefix="gate", x="X", weight="B", score_scale="scale", output=product, dtype=dtype,
        threshold="threshold" if case.gating == "threshold" else None,
        k="k" if case.gating == "topk" else None,
    )
    if case.bias is not None:
        graph.initializer.append(numpy_helper.from_array(case.bias, "bias"))
        nodes.append(helper.make_node("Add", ["XB", "bias"], ["Y"]))
    graph.node.extend(nodes)
    return finish_model(graph)


def _lowered_run(case: OpCase) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(lowered_model(case).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": case.x})[0].astype(case.x.dtype)


# ONNX Runtime's CPU provider has no bfloat16 MatMul, so the lowering is tried in fp32/fp16;
# its TopK takes k only in [0, K], which is what the pass writes.
@PROPERTY
@given(case=op_cases(dtypes=("float32", "float16"), clip_k=True))
def test_standard_ops_lowering_matches_oracle(case: OpCase) -> None:
    assert_matches(_lowered_run(case), case, f"lowering {case.gating} k={case.k} t={case.threshold}")


@PROPERTY
@given(case=op_cases(dtypes=("float32", "float16"), finite=True, identity_b=True, clip_k=True))
def test_standard_ops_lowering_keeps_exactly_the_oracle_set(case: OpCase) -> None:
    np.testing.assert_array_equal(_lowered_run(case).astype(np.float32), case.expected().astype(np.float32))


# --- edge shapes, stated once each -----------------------------------------------------


@pytest.mark.parametrize("dtype_name", list(NUMPY_DTYPES))
@pytest.mark.parametrize("k_features, n", [(1, 1), (1, 9), (9, 1)])
@pytest.mark.parametrize("m", [0, 1, 5])
@pytest.mark.parametrize("provider", providers())
def test_k_or_n_of_one_and_empty_batch(provider: str, k_features: int, n: int, m: int, dtype_name: str) -> None:
    """The op on each provider; the lowering (standard ops) once, with the CPU cases."""
    dtype = NUMPY_DTYPES[dtype_name]
    rng = np.random.default_rng(k_features * 100 + n * 10 + m)
    b = rng.standard_normal((k_features, n)).astype(np.float32).astype(dtype)
    scale = reference.weight_row_norms(b)
    x = rng.standard_normal((m, k_features)).astype(np.float32).astype(dtype)
    for params in ({"k": 0}, {"k": 1}, {"k": k_features}, {"threshold": 0.0}, {"threshold": -1.0}):
        gating = "topk" if "k" in params else "threshold"
        case = OpCase(x=x, b=b, score_scale=scale, gating=gating, k=params.get("k"),
                      threshold=params.get("threshold"), bias=None, dtype_name=dtype_name)
        y = _op_run(case, provider)
        assert y.shape == (m, n)
        assert_matches(y, case, str(params))
        if provider == CPU and dtype_name != "bfloat16":
            assert_matches(_lowered_run(case), case, f"lowering {params}")
