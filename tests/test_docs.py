"""The manual cannot go stale: its local links resolve, and docs/layout.md matches tskd/.

Links: every link or image in the prose of README.md, docs/*.md and benchmarks/README.md that
is not a web address must name an existing file, and a ``#anchor`` must be a heading of the
Markdown file it points into (GitHub's anchor rules).

Layout: the text block of docs/layout.md (its reading rules are written above it) must name
every module and sub-package under tskd/ (``__init__.py`` aside), and every path it names must
exist. It walks tskd/, so a module that is added, moved or removed fails here until the page
says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.markdown import anchors, blocks, links

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md",
         *sorted((REPO / "docs").glob("*.md"))]
LAYOUT = REPO / "docs" / "layout.md"


def _broken(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(REPO)})")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_local_links_resolve(page):
    assert page.is_file()
    assert not _broken(page), f"{page.relative_to(REPO)}: broken links {_broken(page)}"


def test_the_readme_links_every_page_of_the_manual():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def layout_paths(text: str) -> list[str]:
    """The paths the layout block names, read by the rules written on docs/layout.md."""
    (body,) = [lines for lang, lines in blocks(text) if lang == "text"]
    named, folder = [], ""
    for line in body:
        if not line.strip() or line.startswith(" " * 30):  # blank, or a description goes on
            continue
        names = re.split(r"\s{2,}", line.strip())[0]
        if line[0].isspace():
            assert folder, f"an indented line before any folder: {line!r}"
            named += [folder + n for n in names.split(", ")]
        else:
            heads = names.split(", ")
            named += heads
            folder = heads[-1] if heads[-1].endswith("/") else ""
    return named


def test_layout_reader_follows_its_rules():
    text = ("```text\nREADME.md, Makefile    files\npkg/    a folder\n  a.py, sub/  in it\n"
            + " " * 30 + "more.py is a description\ntop.py   a file resets\n```\n")
    assert layout_paths(text) == ["README.md", "Makefile", "pkg/", "pkg/a.py", "pkg/sub/",
                                  "top.py"]


def _modules() -> set[str]:
    """Every module and sub-package under tskd/, as repository paths (folders end in /)."""
    out = set()
    for path in (REPO / "tskd").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if path.name != "__init__.py":
            out.add(rel)
        elif path.parent != REPO / "tskd":
            out.add(path.parent.relative_to(REPO).as_posix() + "/")
    return out


def test_layout_names_every_module_and_only_real_paths():
    named = layout_paths(LAYOUT.read_text(encoding="utf-8"))
    missing = [p for p in named if not (REPO / p).exists()
               or p.endswith("/") != (REPO / p).is_dir()]
    assert not missing, f"docs/layout.md names paths that do not exist: {missing}"
    unnamed = sorted(_modules() - set(named))
    assert not unnamed, f"docs/layout.md does not name: {unnamed}"
