"""The tree answers "where does X go": every module is documented, the package's top level stays small, the tests
mirror the package, and README stays a front page (the rest is in docs/)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "es_repro"
TOP_LEVEL_MAX = 18  # __init__, __main__, cli, plan, train, util and the feature packages
README_MAX_LINES = 250


def documentation(root: Path = REPO) -> str:
    return "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])


def python_modules(root: Path = REPO) -> list[str]:
    """Every module as a path (es_repro/engines/hf/backend.py) and every package as a folder (es_repro/engines/hf/)."""
    out = []
    for path in sorted((root / PACKAGE.name).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        out.append(rel[: -len("__init__.py")] if path.name == "__init__.py" else rel)
    return out


def undocumented(root: Path = REPO) -> list[str]:
    """The modules and packages of ``root``'s es_repro/ that README.md and docs/*.md never name."""
    docs = documentation(root)
    return [name for name in python_modules(root) if name not in docs]


def test_every_package_and_module_is_named_in_the_readme_or_a_doc():
    missing = undocumented()
    assert not missing, f"not named in README.md or docs/*.md: {missing}"


def test_the_check_sees_a_module_nobody_documented(tmp_path):
    """The check itself, on a throwaway tree: a module and a package that no doc names are reported (a name in a
    file that is not README.md or docs/*.md does not count); once documented they are not."""
    for rel in ("es_repro/__init__.py", "es_repro/cli.py", "es_repro/hidden.py", "es_repro/sub/__init__.py",
                "es_repro/lone/__init__.py", "es_repro/sub/deep.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("`es_repro/` is the package; `es_repro/cli.py` the entry point.\n")
    (tmp_path / "docs" / "layout.md").write_text("| `es_repro/sub/deep.py` | deep |\n")
    (tmp_path / "NOTES.txt").write_text("es_repro/hidden.py es_repro/lone/\n")  # not documentation
    assert undocumented(tmp_path) == ["es_repro/hidden.py", "es_repro/lone/"]
    (tmp_path / "docs" / "more.md").write_text("`es_repro/hidden.py` and `es_repro/lone/`\n")
    assert undocumented(tmp_path) == []


def test_the_package_top_level_stays_small():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= TOP_LEVEL_MAX, entries


def test_tests_mirror_the_package():
    test_dirs = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name not in ("__pycache__", "fakes")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert test_dirs <= packages, f"test folders without a package of that name: {sorted(test_dirs - packages)}"


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    first_block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert first_block[1].endswith(".venv/bin/python -m es_repro experiment=quickstart")
    assert first_block[3].endswith(".venv/bin/python -m pytest -q")
    assert first_block[3] in (REPO / ".ci" / "run").read_text()  # CI runs README's test command verbatim
