"""The architectures people run, exported as they export them (tests/helpers/architectures.py).

For each tiny random model and each exporter (Optimum; GenAI's model builder where it
takes the architecture):
  * every projection is found with its role, layer and weight shape, and every other
    product with a constant weight is refused for the reason the README table gives;
  * at sparsity 0 the gated model gives the dense model's logits;
  * `wina-onnx optimize` with its defaults (calibrated here, greedy allocation, refined
    thresholds) writes a model whose measured sparsity on held-out text is the target;
  * that model generates in wina-onnx as it would without the KV cache, and `wina-onnx
    generate` prints those tokens; a builder model also generates the same tokens in
    onnxruntime_genai.
Exports are cached under the test cache folder, keyed by what makes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.architectures import (BY_KEY, LAYERS, VOCAB, Architecture, cases, export_optimum, made_from, make_checkpoint,
                           readme_section, readme_table)
from conftest import REPO_ROOT, _build_atomically, _key
from helpers.pipeline_helpers import logits

from wina_onnx import cli
from wina_onnx.data import default_text
from wina_onnx.runtime.generate import generate
from wina_onnx.passes.candidates import find_candidates, node_display_name
from wina_onnx.runtime.session import CausalLM, load_tokenizer
from wina_onnx.evaluation.sparsity_probe import measure_sparsity

PROMPT = "def main(argv):\n    "
MAX_NEW = 8
TARGET = 0.5
CASES = cases()
IDS = [f"{key}-{exporter}" for key, exporter in CASES]
BUILDER_CASES = [key for key, exporter in CASES if exporter == "builder"]


def _runnable_cases() -> list:
    """CASES, each a pytest.param; those wina-onnx's runtime cannot run are strict xfails (with the reason)."""
    params = []
    for key, exporter in CASES:
        limit = BY_KEY[key].builder_limit if exporter == "builder" else ""
        marks = [pytest.mark.xfail(strict=True, reason=limit)] if limit else []
        params.append(pytest.param(key, exporter, id=f"{key}-{exporter}", marks=marks))
    return params


RUNNABLE = _runnable_cases()


def _digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:12]


class Matrix:
    """The exports of the matrix, made on first use and cached on disk; optimized copies per session."""

    def __init__(self, work_dir: Path, scratch: Path) -> None:
        from importlib.metadata import version

        here = Path(__file__).resolve().parent
        made_by = {**made_from(), "transformers": version("transformers"), "optimum": version("optimum-onnx")}
        self.root = work_dir / f"architectures-{_key(made_by)}"
        scripts = REPO_ROOT / "scripts"
        self.builder_key = _digest(here / "helpers" / "genai_builder_run.py", scripts / "genai_builder_env.sh",
                                   scripts / "genai_builder_requirements.txt")
        self.scratch = scratch
        self._optimized: dict[tuple[str, str], Path] = {}
        self._ids: np.ndarray | None = None
        self._no_builder: str | None = None  # why there are no builder exports, once known

    def hf(self, key: str) -> Path:
        return _build_atomically(self.root / key / "hf", lambda tmp: make_checkpoint(BY_KEY[key], tmp))

    def dense(self, key: str, exporter: str) -> Path:
        """model.onnx of `key` as `exporter` writes it."""
        if exporter == "optimum":
            hf = self.hf(key)
            return _build_atomically(self.root / key / "optimum", lambda tmp: export_optimum(hf, tmp)) / "model.onnx"
        folder = self.root / key / f"builder-{self.builder_key}"
        if not folder.is_dir():
            self._build_with_builder()
        return folder / "model.onnx"

    def _build_with_builder(self) -> None:
        """Every missing builder export in one run of the builder (its imports take most of the time)."""
        if self._no_builder is not None:  # tried once this session: skipped or failed
            (pytest.fail if self._no_builder.startswith("the model builder failed") else pytest.skip)(self._no_builder)
        try:
            python = _builder_python()
        except pytest.skip.Exception as exc:
            self._no_builder = str(exc)
            raise
        todo = [(key, self.root / key / f"builder-{self.builder_key}") for key, exporter in CASES
                if exporter == "builder"]
        todo = [(key, target) for key, target in todo if not target.is_dir()]
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".builder-", dir=self.root))
        try:
            pairs = []
            for key, _ in todo:
                pairs += [str(self.hf(key)), str(tmp / key)]
            run = subprocess.run([str(python), str(Path(__file__).parent / "helpers" / "genai_builder_run.py"), "fp32", "cpu",
                                  str(tmp / "cache"), *pairs], capture_output=True, text=True)
            if run.returncode != 0:
                self._no_builder = f"the model builder failed: {run.stderr.strip()[-3000:]}"
                pytest.fail(self._no_builder)
            for key, target in todo:
                os.replace(tmp / key, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def optimized(self, key: str, exporter: str) -> Path:
        """`wina-onnx optimize DENSE -o OUT/model.onnx` with the defaults (once per session)."""
        if (key, exporter) not in self._optimized:
            out = self.scratch / f"{key}-{exporter}" / "model.onnx"
            assert cli.main(["optimize", str(self.dense(key, exporter)), "-o", str(out), "-q"]) == 0
            self._optimized[key, exporter] = out
        return self._optimized[key, exporter]

    def ids(self) -> np.ndarray:
        """The default text (pydoc topics) in byte tokens; every model shares the tokenizer."""
        if self._ids is None:
            tokenizer = load_tokenizer(self.dense("llama", "optimum").parent)
            self._ids = np.asarray(tokenizer.encode(default_text(), add_special_tokens=False).ids, dtype=np.int64)
        return self._ids


def _builder_python() -> Path:
    """The python of the model builder's environment (made if missing); skip without one, fail in CI."""
    env = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "genai_builder_env.sh")], capture_output=True,
                         text=True)
    if env.returncode != 0:
        message = f"cannot create the model builder's environment: {env.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REPO_ROOT / env.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def matrix(work_dir: Path, tmp_path_factory) -> Matrix:
    return Matrix(work_dir, tmp_path_factory.mktemp("architectures"))


def _roles(arch: Architecture, exporter: str) -> tuple[str, ...]:
    return arch.optimum_roles if exporter == "optimum" else arch.builder_roles


def _skips(arch: Architecture, exporter: str) -> dict[str, str]:
    return arch.optimum_skipped if exporter == "optimum" else arch.builder_skipped


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("key", "exporter"), CASES, ids=IDS)
def test_projections_have_their_roles(matrix: Matrix, key: str, exporter: str) -> None:
    arch = BY_KEY[key]
    model = onnx.load(matrix.dense(key, exporter), load_external_data=False)
    found, skipped = find_candidates(model.graph)
    want = sorted((layer, role) for layer in range(LAYERS) for role in _roles(arch, exporter))
    assert sorted((c.role.layer, c.role.kind) for c in found) == want
    op = arch.optimum_op if exporter == "optimum" else "MatMul"
    ops = {node_display_name(n): n.op_type for n in model.graph.node}
    for c in found:
        assert (c.k, c.n) == arch.shape(c.role.kind), c.node_name
        assert ops[c.node_name] == op, c.node_name

    # What the table says is refused is refused for that reason, and nothing else with a
    # constant weight is (the others are products of two activations: attention, rotary).
    reasons = {s.node_name: s.reason for s in skipped}
    for fragment, reason in _skips(arch, exporter).items():
        hits = [name for name in reasons if fragment in name]
        assert hits and all(reasons[name] == reason for name in hits), (fragment, reasons)
    weights = {init.name for init in model.graph.initializer}
    nodes = {node_display_name(n): n for n in model.graph.node}
    unlisted = [name for name in reasons if nodes[name].input[1] in weights
                and not any(fragment in name for fragment in _skips(arch, exporter))]
    assert not unlisted, {name: reasons[name] for name in unlisted}


@pytest.mark.parametrize(("key", "exporter"), RUNNABLE)
def test_sparsity_zero_gives_the_dense_logits(matrix: Matrix, tmp_path: Path, key: str, exporter: str) -> None:
    dense = matrix.dense(key, exporter)
    out = tmp_path / "model.onnx"
    assert cli.main(["optimize", str(dense), "-o", str(out), "-q", "--gating", "topk", "--allocate", "uniform",
                     "--sparsity", "0"]) == 0
    gated = [n for n in onnx.load(out, load_external_data=False).graph.node if n.domain == "ai.wina"]
    assert len(gated) == LAYERS * len(_roles(BY_KEY[key], exporter))
    ids = matrix.ids()[1000:1048]
    np.testing.assert_allclose(logits(out, ids), logits(dense, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("key", "exporter"), RUNNABLE)
def test_optimize_defaults_reach_the_target(matrix: Matrix, key: str, exporter: str) -> None:
    out = matrix.optimized(key, exporter)
    meta = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
    config = json.loads(meta["wina_onnx.config"])
    assert config["gating"] == "threshold" and config["sparsity"].startswith(f"greedy {TARGET:g}")
    assert config["thresholds_refined"]["rounds"] == 1
    assert len(json.loads(meta["wina_onnx.gated"])) == LAYERS * len(_roles(BY_KEY[key], exporter))
    held_out = matrix.ids()[-2 * 256:]  # calibration and refinement read the first 16 x 256 tokens
    probe = measure_sparsity(out, held_out, windows=2, window=256)
    assert abs(probe["weighted"] - TARGET) < 0.02, probe["weighted"]
    ids = held_out[:32]
    assert np.abs(logits(out, ids) - logits(matrix.dense(key, exporter), ids)).max() > 1e-2  # the gates act


@pytest.mark.parametrize(("key", "exporter"), RUNNABLE)
def test_optimized_model_generates(matrix: Matrix, capsys, key: str, exporter: str) -> None:
    out = matrix.optimized(key, exporter)
    lm = CausalLM.from_path(out)
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    tokens = generate(lm, prompt, MAX_NEW)
    assert len(tokens) == MAX_NEW
    # With the KV cache as without it: each token is the argmax over the whole sequence so far.
    sequence = list(prompt)
    for token in tokens:
        step, _ = lm.forward(np.array([sequence], dtype=np.int64))
        assert int(np.argmax(step[0, -1])) == token
        sequence.append(token)

    stopped = generate(lm, prompt, MAX_NEW, eos_token_id=lm.eos_token_ids)
    capsys.readouterr()
    assert cli.main(["generate", str(out), "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW)]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text == lm.tokenizer.decode(_without_eos(stopped, lm), skip_special_tokens=True)
    if exporter == "builder":
        # GenAI leaves the EOS out of the sequence (it is the builder's pad id too); wina-onnx returns it.
        assert _og_tokens(out.parent, prompt) == _without_eos(stopped, lm)
        dense = CausalLM.from_path(matrix.dense(key, exporter))
        assert _og_tokens(matrix.dense(key, exporter).parent, prompt) == _without_eos(
            generate(dense, prompt, MAX_NEW, eos_token_id=dense.eos_token_ids), dense)


@pytest.mark.parametrize("key", BUILDER_CASES)
def test_gated_builder_model_runs_in_genai(matrix: Matrix, tmp_path: Path, key: str) -> None:
    """Gated without calibration (top-k, uniform), the builder's folder still loads in og.Model:
    at sparsity 0 it decodes as the dense one, at 0.5 it runs too."""
    dense = matrix.dense(key, "builder")
    prompt = load_tokenizer(dense.parent).encode(PROMPT, add_special_tokens=False).ids
    want = _og_tokens(dense.parent, prompt)
    assert want
    for sparsity in ("0", "0.5"):
        out = tmp_path / sparsity / "model.onnx"
        assert cli.main(["optimize", str(dense), "-o", str(out), "-q", "--gating", "topk", "--allocate", "uniform",
                         "--sparsity", sparsity]) == 0
        got = _og_tokens(out.parent, prompt)
        if sparsity == "0":
            assert got == want
        assert all(0 <= t < VOCAB for t in got)


def _without_eos(tokens: list[int], lm: CausalLM) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens


def _og_tokens(folder: Path, prompt: list[int]) -> list[int]:
    """Greedy decoding by onnxruntime_genai after `prompt`: up to MAX_NEW new ids.

    The folder's max_length stays as the builder set it: a sliding-window cache needs
    the KV buffer at least as long as the window."""
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    for _ in range(MAX_NEW):
        if generator.is_done():
            break
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt):]


def test_readme_table_is_generated_from_the_matrix() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_section(text) == readme_table(), "run: python tests/helpers/architectures.py"
