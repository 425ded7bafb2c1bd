"""One ONNX Runtime session of the op library run from 8 threads at once.

The op keeps per-thread work space (custom_ops/src/gate_token.cc) and reads its
attributes once per kernel; concurrent Run calls on one session must give exactly
(bit for bit) what the same calls give one after another. The model chains two gated
MatMuls of different K, so each thread's work space is resized between nodes, and the
session has 2 intra-op threads, so ParallelFor runs inside every call too. The same runs
on the CUDA provider (marked `gpu`, skipped with the reason where it cannot run): its calls
share the kernels' allocator and the session's compute stream.

WINA_ONNX_CONCURRENCY_ROUNDS raises the number of rounds (default 3).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from helpers.op_models import DTYPES, finish_model, onnx_type, run
from helpers.providers import provider_session, providers

from wina_onnx import reference, schema

ort = pytest.importorskip("onnxruntime")

THREADS = 8
CALLS_PER_THREAD = 12
ROUNDS = int(os.environ.get("WINA_ONNX_CONCURRENCY_ROUNDS", "3"))


def chained_model(dtype: np.dtype, rng: np.random.Generator) -> onnx.ModelProto:
    """X [M, 64] -> top-k gate (K 64, N 1500) -> threshold gate (K 1500, N 48) -> Y."""
    b1 = (rng.standard_normal((64, 1500)) / 8).astype(np.float32).astype(dtype)
    b2 = (rng.standard_normal((1500, 48)) / 40).astype(np.float32).astype(dtype)
    inits = [
        numpy_helper.from_array(b1, "B1"), numpy_helper.from_array(reference.weight_row_norms(b1), "s1"),
        numpy_helper.from_array(np.array([24], np.int64), "k1"),
        numpy_helper.from_array(b2, "B2"), numpy_helper.from_array(reference.weight_row_norms(b2), "s2"),
        numpy_helper.from_array(np.array([0.05], np.float32), "t2"),
    ]
    nodes = [
        helper.make_node(schema.OP_TYPE, ["X", "B1", "s1", "", "k1"], ["H"], name="g1", domain=schema.DOMAIN,
                         gating="topk"),
        helper.make_node(schema.OP_TYPE, ["H", "B2", "s2", "t2"], ["Y"], name="g2", domain=schema.DOMAIN,
                         gating="threshold"),
    ]
    t = onnx_type(dtype)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", t, ["M", 64])],
                              [helper.make_tensor_value_info("Y", t, ["M", 48])], inits)
    return finish_model(graph)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("provider", providers())
def test_eight_threads_on_one_session_match_serial_runs(provider: str, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(2024)
    sess = provider_session(chained_model(dtype, rng), provider, threads=2)
    # Every thread gets its own inputs, of different token counts (0 included).
    inputs = [
        [rng.standard_normal((int(rng.integers(0, 10)), 64)).astype(np.float32).astype(dtype)
         for _ in range(CALLS_PER_THREAD)]
        for _ in range(THREADS)
    ]
    serial = [[run(sess, x) for x in xs] for xs in inputs]
    for _ in range(ROUNDS):
        results: list[list[np.ndarray | None]] = [[None] * CALLS_PER_THREAD for _ in range(THREADS)]
        errors: list[BaseException] = []
        start = threading.Barrier(THREADS)

        def work(t: int) -> None:
            try:
                start.wait()
                for c, x in enumerate(inputs[t]):
                    results[t][c] = run(sess, x)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for t in range(THREADS):
            for c in range(CALLS_PER_THREAD):
                got, want = results[t][c], serial[t][c]
                assert got is not None and got.shape == want.shape
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=f"thread {t} call {c}")
