"""The project stands alone: sources and docs cite papers and upstream files, never notes that
are not in this repository (design notes outside it, research notes) nor internal work items."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What a reader of this repository cannot follow. ``owner/repo issue #N`` (an upstream issue)
#: is a fine citation, so an issue number only counts when no repository is named before it.
FORBIDDEN = [
    re.compile(r"research/[\w.]+\.md|\bresearch §"),
    re.compile(r"\bDESIGN §|DESIGN\.md"),
    re.compile(r"\.\./shared"),
    re.compile(r"\bseed (material|case study|open question)"),
]

_ISSUE = re.compile(r"(\S*)\s+[Ii]ssue #?\d+\b|^[Ii]ssue #?\d+\b")


def _offending(line: str) -> bool:
    if any(p.search(line) for p in FORBIDDEN):
        return True
    # an issue number is a work item unless an upstream repository (owner/name) names it
    return any("/" not in (m.group(1) or "") for m in _ISSUE.finditer(line))


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "Makefile"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:  # not a git checkout (an sdist): scan the tree instead
        return [p for p in ROOT.rglob("*") if p.suffix in {".py", ".md", ".toml"} and ".venv" not in p.parts]
    return [ROOT / name for name in out.stdout.split()]


def test_no_references_outside_the_repository():
    this = Path(__file__).resolve()
    hits = []
    for path in _tracked_files():
        if path.resolve() == this or not path.exists():
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _offending(line):
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:100]}")
    assert not hits, "references a reader cannot follow:\n" + "\n".join(hits)


def test_pattern_catches_what_it_should():
    bad = ["see research/latch.md §1.4", "(DESIGN §4.3)", "from issue 7", "the seed material claimed"]
    good = ["zichongli5/NorMuon issue #6", "docs/design.md §4.3", "arXiv 2603.04366"]
    assert all(_offending(s) for s in bad)
    assert not any(_offending(s) for s in good)
