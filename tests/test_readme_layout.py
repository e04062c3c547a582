"""README's layout table is checked against the tree: every harness module is in it, and everything it names exists."""

from __future__ import annotations

import ast
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
            elif package and re.fullmatch(r"[a-z_][a-z0-9_]*", n):
                out.add(f"{package}{n}.py")
    return out


def test_every_harness_module_is_in_the_readme_layout_table():
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "harness").rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(modules - _named(_layout_rows()))
    assert not missing, f"README's layout table does not name {missing}"


def test_everything_the_layout_table_names_exists():
    absent = sorted(n for n in _named(_layout_rows()) if not (REPO / n).exists())
    assert not absent, f"README's layout table names {absent}, which are not in the tree"


# Each stage may import only stages before it in this order (DESIGN: lower rooms never import higher ones).
# prompts sits above model because it renders prompts with the model's tokenizer and chat template.
RANK = ("errors", "validation", "data", "model", "prompts", "runs", "scoring", "sae", "studies", "reporting", "claims",
        "cli")


def _stage(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO / "harness").parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _harness_imports(path: pathlib.Path) -> set[str]:
    """The harness stages `path` imports (module level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "harness":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("harness.")}
    return out


def test_every_harness_module_belongs_to_a_ranked_stage():
    stages = {_stage(p) for p in (REPO / "harness").rglob("*.py") if p.name != "__init__.py" or p.parent != REPO / "harness"}
    assert stages <= set(RANK), f"stages missing from RANK: {sorted(stages - set(RANK))}"


def test_imports_flow_one_way():
    upward = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        if path.parent == REPO / "harness" and path.name == "__init__.py":
            continue
        own = RANK.index(_stage(path))
        upward += [f"{path.relative_to(REPO)} imports harness.{s}" for s in _harness_imports(path)
                   if s in RANK and RANK.index(s) > own]
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_every_package_says_what_it_holds_and_what_it_may_import():
    vague = []
    for init in sorted((REPO / "harness").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        if len([line for line in doc.splitlines() if line.strip()]) < 2 or "import" not in doc:
            vague.append(init.relative_to(REPO).as_posix())
    assert not vague, f"package docstrings without what they hold and may import: {vague}"
    rows = " ".join(_layout_rows())
    missing = [p.parent.name for p in (REPO / "harness").glob("*/__init__.py") if f"`harness/{p.parent.name}/`" not in rows]
    assert not missing, f"packages without a row in README's layout table: {missing}"
