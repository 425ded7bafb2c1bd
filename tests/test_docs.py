"""The docs stay short where they should be and point only at raw results that exist.

* README.md is under 300 lines (a five-minute read; the rest is in docs/).
* Every benchmarks/results file that README.md or docs/*.md names exists: full paths
  (`benchmarks/results/x.txt`, also as `../benchmarks/results/x.txt`) and the bare names the
  notes use (`kernel_cuda_h200.txt`, `archive/kernel_cuda_v8.txt`, relative to
  benchmarks/results/). A bare name of a file that moved to archive/ must say so.
* Every table of figures in the README, and every paragraph with a speed-up or a time per
  token, sits in a section that links to its raw file in benchmarks/results/.
* benchmarks/results/INDEX.md has a row for every file there, and names no file that is not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
RESULTS = REPO_ROOT / "benchmarks" / "results"
INDEX = RESULTS / "INDEX.md"
DOCS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

FULL_PATH = re.compile(r"benchmarks/results/([\w./-]*[\w])")
BARE_NAME = re.compile(r"(?<![\w./-])((?:archive/)?[a-z0-9_]+\.(?:txt|json))\b")
FIGURE = re.compile(r"\d+\.\d+x\b|ms/token|µs")
RAW_LINK = re.compile(r"\]\((?:\.\./)?benchmarks/results/[^)]+\)")


def _result_files() -> list[str]:
    return sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_file() and p != INDEX)


def _families() -> set[str]:
    """Name prefixes of the result files (kernel_cuda, e2e_cuda, quality, ...): a bare name
    that starts with one of them is a reference to a result."""
    return {"_".join(Path(f).stem.split("_")[:2]) for f in _result_files()}


def _outside_code(text: str) -> str:
    """The text with fenced code blocks blanked out (their lines kept, so sections keep their shape)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            out.append("")
            continue
        out.append("" if fence else line)
    return "\n".join(out)


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < MAX_README_LINES, (f"README.md has {lines} lines; keep it under {MAX_README_LINES} "
                                      "and move the detail to docs/ (results.md, usage.md)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO_ROOT)) for d in DOCS])
def test_cited_results_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    families = _families()
    missing = []
    for match in FULL_PATH.finditer(text):
        path = match.group(1)
        if "*" not in path and not (RESULTS / path).exists():
            missing.append(f"benchmarks/results/{path}")
    for match in BARE_NAME.finditer(text):
        name = match.group(1)
        stem = Path(name).stem
        if not any(stem.startswith(f) for f in families):
            continue  # not a result's name (tokenizer.json, genai_config.json, ...)
        if not (RESULTS / name).exists():
            moved = (RESULTS / "archive" / name).exists()
            missing.append(f"{name} (now archive/{name})" if moved else name)
    assert not missing, f"{doc.name} cites results that are not in benchmarks/results/: {sorted(set(missing))}"


def test_readme_figures_link_their_raw_file() -> None:
    text = _outside_code(README.read_text(encoding="utf-8"))
    text = re.sub(r"<!-- architectures:start.*?<!-- architectures:end -->", "", text, flags=re.S)
    sections = re.split(r"\n(?=#{2,4} )", text)
    unlinked = []
    for section in sections:
        heading = section.splitlines()[0] if section else ""
        table_rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
        has_table_figures = any(re.search(r"\d\.\d", row) for row in table_rows[1:])
        has_prose_figures = any(FIGURE.search(p) for p in section.split("\n\n") if not p.startswith("|"))
        if (has_table_figures or has_prose_figures) and not RAW_LINK.search(section):
            unlinked.append(heading)
    assert not unlinked, f"README sections with figures but no link to their raw file in benchmarks/results/: {unlinked}"


def test_index_lists_every_result_file() -> None:
    index = INDEX.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| \[([^\]]+)\]\(", index, re.M))
    files = set(_result_files())
    assert not files - listed, f"benchmarks/results/INDEX.md has no row for: {sorted(files - listed)}"
    assert not listed - files, f"benchmarks/results/INDEX.md lists files that do not exist: {sorted(listed - files)}"
