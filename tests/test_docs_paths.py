"""Every file that README.md, BENCHMARKS.md or a page in docs/ names exists in the repository.

A path is checked when it starts in one of the project's own folders (model/, configs/, docs/, tests/,
.ci/, or a data/*.py program) or is a bare source file name (something.py, .c, .h, .sh, .md), and
markdown links are checked relative to the page; paths of files that a command writes (out_dir/...,
data/NAME/meta.json) are outputs, not the project's files, and are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
OWN_FOLDERS = ("model/", "configs/", "docs/", "tests/", ".ci/")
SOURCE_SUFFIXES = (".py", ".c", ".h", ".sh", ".md")

PATH = re.compile(r"(?<![\w/.-])((?:\.{0,2}/?[\w.-]+/)*[\w-]+\.(?:py|c|h|sh|md|toml|json|png|gz))(?![\w/-])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def repository_files() -> set[str]:
    return {p.name for p in ROOT.rglob("*") if ".git" not in p.parts and p.is_file()}


def named_paths(page: Path) -> list[tuple[int, str, Path | None]]:
    """(line, text, where it must exist) for every project path the page names; None: any folder."""
    found: dict[tuple[int, str], Path | None] = {}
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for link in LINK.findall(line):
            if "://" not in link and not link.startswith("mailto:"):
                found[number, link] = (page.parent / link).resolve()
        for path in PATH.findall(line):
            if (number, path) in found:
                continue  # a link's target, already checked relative to the page
            if path.startswith(OWN_FOLDERS) or (path.startswith("data/") and path.count("/") == 1 and path.endswith(".py")):
                found[number, path] = ROOT / path
            elif "/" not in path and path.endswith(SOURCE_SUFFIXES):
                found[number, path] = None
    return [(number, text, where) for (number, text), where in found.items()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page: Path) -> None:
    names = repository_files()
    missing = [f"{page.name}:{line}: {text}" for line, text, where in named_paths(page)
               if not (where.exists() if where is not None else text in names)]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_the_checker_sees_a_missing_file(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("See `model/kernels/softmax.c`, [gone](gone.md) and rowdot.c; outputs like out/ckpt.pt don't count.\n")
    names = repository_files()
    missing = [text for _, text, where in named_paths(page)
               if not (where.exists() if where is not None else text in names)]
    assert missing == ["gone.md", "model/kernels/softmax.c", "rowdot.c"]
