"""README's layout table is checked against the tree: every harness module is in it, and everything it names exists."""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent


def _layout_rows() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout — the data flows one way", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| stage")]


def _named(rows: list[str]) -> set[str]:
    """Module paths the table names: `harness/x.py` directly, or `harness/pkg/` followed by `module` names."""
    out = set()
    for row in rows:
        names = re.findall(r"`([^`]+)`", row)
        package = None
        for n in names:
            if n.startswith("harness/") and n.endswith("/"):
                package = n
            elif n.startswith("harness/"):
                out.add(n)
            elif package and re.fullmatch(r"[a-z_]+", n):
                out.add(f"{package}{n}.py")
    return out


def test_every_harness_module_is_in_the_readme_layout_table():
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "harness").rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(modules - _named(_layout_rows()))
    assert not missing, f"README's layout table does not name {missing}"


def test_everything_the_layout_table_names_exists():
    absent = sorted(n for n in _named(_layout_rows()) if not (REPO / n).exists())
    assert not absent, f"README's layout table names {absent}, which are not in the tree"
