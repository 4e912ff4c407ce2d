"""Every relative link in every tracked Markdown file points to a file or folder that exists.

Links to a heading of another Markdown file (`design.md#data`) must name a heading that file has, with
GitHub's anchor rule; links to a web address are not followed (no network in tests).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
# [text](target) and [text](target "title"), not images of web addresses; <url> autolinks are absolute anyway
LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.md", "**/*.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): every Markdown file
        return sorted(p for p in ROOT.rglob("*.md") if ".venv" not in p.parts and "outputs" not in p.parts)
    return sorted({ROOT / p for p in out})


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each Markdown link outside fenced code blocks and inline code."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            found.append((number, match.group(1)))
    return found


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|__?", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(github_anchor(line.lstrip("#")))
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: ({target})"
        if not dest.exists():
            problems.append(f"{where} -> {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where} -> no heading '#{anchor}' in {dest.relative_to(root)}")
    return problems


def test_link_finder_and_anchor_rule(tmp_path):
    text = "see [a](docs/a.md) and [b](https://x.org)\n```\n[c](missing.md)\n```\n`[d](no.md)` [e](b.md#Some-heading)"
    assert links(text) == [(1, "docs/a.md"), (1, "https://x.org"), (5, "b.md#Some-heading")]
    assert github_anchor("Training, sweeps, evaluation: how they run") == "training-sweeps-evaluation-how-they-run"
    assert github_anchor("Variants (the paper's ablations), all by config") == "variants-the-papers-ablations-all-by-config"
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](nothing.md) [bad anchor](#nowhere)\n")
    assert [p.split(" -> ")[1] for p in broken_links(page, tmp_path)] == [
        f"{tmp_path / 'nothing.md'} does not exist", "no heading '#nowhere' in page.md"]


def test_there_are_markdown_files_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/design.md", "docs/results.md", "cluster/README.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []
