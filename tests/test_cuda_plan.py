"""The CUDA kernels' plan selection (custom_ops/src/cuda/plan.cc), tested on the CPU.

The plan code is host-only C++, so CI checks it without a GPU: this test builds the C++
test program custom_ops/tests/cuda_plan_test.cc with CMake and runs it. It pins the plans
the kernels were tuned with and checks that every plan chosen is one the kernels accept.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "custom_ops" / "tests"


@pytest.fixture(scope="module")
def plan_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SOURCE / "CMakeLists.txt").is_file():
        pytest.skip(f"no C++ test sources at {SOURCE} (not a source checkout)")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed: cannot build the C++ plan test")
    build = tmp_path_factory.mktemp("cuda_plan_test")
    for command in ([cmake, "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                    [cmake, "--build", str(build)]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return build / "cuda_plan_test"


def test_cuda_plan_selection(plan_test: Path) -> None:
    done = subprocess.run([str(plan_test)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 failed" in done.stdout
