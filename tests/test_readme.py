"""The README's code runs as written, from any folder, and says what it does.

Every ```python and ```bash block of README.md carries a marker on the line before it, an
HTML comment (GitHub does not show it):

    <!-- snippet: run; needs: wina calib.txt; without: tritonserver; requires: matplotlib;
         same-output: wina-onnx generate wina/model.onnx --prompt "Hi" --max-new-tokens 8 -->
    <!-- snippet: skip: why it cannot run in CI -->

A block without a marker fails the test, so a new snippet cannot go untested by accident.
Blocks are found by their markers, never by line numbers, so sections can move.

`run` blocks run exactly as written in a fresh empty folder (never the repository), after
the files named by `needs` were made there from the tiny random Llama of the test fixtures:

    dense/       the dense model folder (model.onnx, tokenizer and config files)
    wina/        dense/ optimized by `wina-onnx optimize` (top-k at 50%: no calibration to wait for)
    wina-genai/  `wina-onnx package wina/model.onnx --genai wina-genai`
    int4/        dense/ with its projections as 4-bit MatMulNBits (ONNX Runtime's quantizer)
    calib.txt, test.txt, alloc.json   calibration text, evaluation text, an allocation file
    any other path: that file of the repository, at the same relative path

`without: WORD ...` leaves out the shell lines that call those programs (a server, a
download). `requires: MODULE ...` skips the block, saying why, when a module is missing
(an optional extra). `same-output: COMMAND` runs COMMAND there too and asserts the block
printed exactly what it printed (the same tokens as `wina-onnx generate`, say).
Python blocks run with this interpreter; shell blocks with `bash -e`, where `wina-onnx`
is this interpreter's wina_onnx.cli. The block marked `synopsis` (the command-line
summary) is checked against the parser: every option it shows exists, under its command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*snippet:\s*(.*?)\s*-->\s*$", re.S)
FENCE = re.compile(r"^```(\S*)\s*$")
RUNNABLE = {"python", "bash", "sh", "shell"}


@dataclass
class Block:
    """A fenced block of the README and its marker."""

    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None  # the text after "snippet:", None when there is none
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        first = next((line for line in self.code.splitlines() if line.strip() and not line.startswith("#")), "")
        return f"README line {self.line}: {first[:60]}"


def _parse_marker(text: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = text.partition(";")
    if kind.strip().startswith("skip"):
        return "skip", {"reason": kind.partition(":")[2].strip()}
    kind = (kind.split() or [""])[0]  # words after it are a note
    options = {}
    for part in re.split(r";\s*(?=[a-z-]+:)", rest):
        key, _, value = part.partition(":")
        if key.strip():
            options[key.strip()] = " ".join(value.split())
    return kind, options


def readme_blocks() -> list[Block]:
    """Every fenced block of the README, with the marker on the line before it (if any)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = None
        j = i - 1
        comment = []
        while j >= 0 and lines[j].strip() and not lines[j].startswith("```"):  # a marker may span lines
            comment.insert(0, lines[j])
            if lines[j].lstrip().startswith("<!--"):
                break
            j -= 1
        match = MARKER.match("\n".join(comment).strip()) if comment else None
        block = Block(line=i + 1, language=fence.group(1), code="\n".join(lines[i + 1:end]) + "\n",
                      marker=match.group(1) if match else None)
        if block.marker is not None:
            kind, block.options = _parse_marker(block.marker)
            block.options["kind"] = kind
        blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = readme_blocks()
RUN = [b for b in BLOCKS if b.options.get("kind") == "run"]


def test_every_code_block_is_marked() -> None:
    unmarked = [b.name for b in BLOCKS if b.language in RUNNABLE and b.marker is None]
    assert not unmarked, f"README code blocks without a snippet marker: {unmarked}"
    kinds = {b.options.get("kind") for b in BLOCKS if b.marker is not None}
    assert kinds <= {"run", "skip", "synopsis"}, kinds
    assert all(b.options.get("reason") for b in BLOCKS if b.options.get("kind") == "skip")
    assert len(RUN) >= 7  # most of them run


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def made(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `needs` files, made once: each block's folder gets copies."""
    root = tmp_path_factory.mktemp("readme-fixtures")
    shutil.copytree(tiny_llama_dir, root / "dense")
    from wina_onnx.data import default_text

    text = default_text()
    (root / "calib.txt").write_text(text[:40000], encoding="utf-8")
    (root / "test.txt").write_text(text[40000:44000], encoding="utf-8")
    (root / "alloc.json").write_text(json.dumps({"format": "wina-onnx-allocation", "version": 1, "default": 0.5,
                                                 "sparsity": {"*down_proj*": 0.3, "*q_proj*": 0.6}}))
    return root


def _make(made: Path, name: str, env: dict[str, str]) -> Path:
    """The fixture `name` under `made`, made on first use."""
    target = made / name
    if target.exists():
        return target
    if name == "wina":
        _cli(["optimize", "dense/model.onnx", "-o", "wina/model.onnx", "--gating", "topk", "--allocate", "uniform",
              "-q"], made, env)
    elif name == "wina-genai":
        _make(made, "wina", env)
        _cli(["package", "wina/model.onnx", "--genai", "wina-genai"], made, env)
    elif name == "int4":
        import onnx

        from wina_onnx.export.quantize import QuantizeConfig, quantize_projections

        model = onnx.load(made / "dense" / "model.onnx")
        quantize_projections(model, QuantizeConfig())
        shutil.copytree(made / "dense", target, ignore=shutil.ignore_patterns("*.onnx", "*.data"))
        onnx.save(model, target / "model.onnx")
    else:
        source = REPO_ROOT / name
        assert source.is_file(), f"needs: {name} is neither a fixture nor a file of the repository"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return target


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "wina_onnx.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"wina-onnx {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the blocks: `wina-onnx` on PATH is this interpreter's CLI; no hub."""
    bin_dir = tmp_path_factory.mktemp("readme-bin")
    shim = bin_dir / "wina-onnx"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m wina_onnx.cli "$@"\n')
    shim.chmod(0o755)
    datasets = tmp_path_factory.mktemp("readme-datasets")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(datasets)}


def _shell_lines(code: str, without: list[str]) -> str:
    """The block's commands, continuation lines joined, less those that call a `without` program."""
    commands, current = [], ""
    for line in code.splitlines():
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    kept = [c for c in commands if not any(re.search(rf"(^|\s){re.escape(w)}(\s|,|$)", c) for w in without)]
    return "\n".join(kept) + "\n"


# ----------------------------------------------------------------------------- the blocks
@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_readme_block_runs(block: Block, made: Path, env: dict[str, str], tmp_path: Path) -> None:
    for module in block.options.get("requires", "").split():
        pytest.importorskip(module, reason=f"{block.name} needs {module} (an optional extra)")
    work = tmp_path / "work"  # a folder of its own: the blocks must not depend on the repository root
    work.mkdir()
    for name in block.options.get("needs", "").split():
        source = _make(made, name.rstrip("/"), env)
        destination = work / name.rstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, destination)
    if block.language == "python":
        script = tmp_path / "snippet.py"
        script.write_text(block.code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        script = tmp_path / "snippet.sh"
        script.write_text(_shell_lines(block.code, block.options.get("without", "").split()), encoding="utf-8")
        command = ["bash", "-e", str(script)]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{block.name}\n{result.stdout}\n{result.stderr}"
    same = block.options.get("same-output")
    if same:
        words = shlex.split(same)
        assert words[0] == "wina-onnx", same
        expected = _cli(words[1:], work, env)
        assert result.stdout.strip() and result.stdout == expected, (result.stdout, expected)


def test_synopsis_matches_the_parser() -> None:
    """Every option the command-line summary shows exists, under its command."""
    import argparse

    from wina_onnx import cli

    (block,) = [b for b in BLOCKS if b.options.get("kind") == "synopsis"]
    subs = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    command, seen = None, set()
    for line in block.code.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["wina-onnx"]:
            command = words[1]
            assert command in subs, line
            seen.add(command)
        known = {s for a in subs[command]._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        for option in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*|-[a-z])\b", line.split("#")[0]):
            if command == "lm-eval":
                continue  # lm-eval's own options
            assert option in known, f"`{option}` is not an option of `wina-onnx {command}`: {line.strip()}"
    assert seen == set(subs), f"commands missing from the summary: {set(subs) - seen}"
