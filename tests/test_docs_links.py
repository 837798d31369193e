"""Every relative link in README.md and docs/*.md points at a file of the repository."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md"] + sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path):
    for target in LINK.findall(page.read_text()):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    broken = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert broken == [], f"{page.name}: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t).resolve() for t in relative_links(REPO / "README.md")}
    assert [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked] == []
