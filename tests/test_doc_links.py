"""Every relative link and every repository path written in backticks in README.md, DEVELOPERS.md and docs/*.md
points at something that exists, so a moved or deleted file cannot leave the docs pointing at nothing. Paths that
a run or a tool creates (not in a checkout) are listed in CREATED, each with what makes it."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "DEVELOPERS.md", *sorted((REPO / "docs").glob("*.md"))]
# The repository's top level: a backticked word starting with one of these (or naming one) is a repository path.
ROOTS = ("es_repro/", "tests/", "docs/", "conf/", "scripts/", "results/", "sweeps/", "notebooks/", "constraints/",
         ".ci/", "README.md", "DEVELOPERS.md", "pyproject.toml", "setup.py")
CREATED = {  # path -> what creates it
    "results/quickstart/": "README command 1 (experiment=quickstart)",
    "results/quickstart/default/": "README command 1 (experiment=quickstart)",
    ".gpu-wheels/": "scripts/gpu_wheels.sh",
}
LINK = re.compile(r"\]\(([^)\s]+)\)")
BACKTICKED = re.compile(r"`([^`\s]+)`")


def _is_placeholder(path: str) -> bool:
    return any(c in path for c in "<>*{}$|") or "..." in path


def referenced_paths(doc: Path) -> list[tuple[str, Path]]:
    """(as written, resolved target) of each relative link and each backticked repository path of ``doc``."""
    text = doc.read_text()
    out = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = target.split("#")[0]
        out.append((target, (doc.parent / path).resolve()))
    for word in BACKTICKED.findall(text):
        word = word.rstrip(".,;:").split(":")[0]  # es_repro/x.py:12 or module:function -> the file
        if not word.startswith(ROOTS) or _is_placeholder(word) or word in CREATED:
            continue
        out.append((word, (REPO / word).resolve()))
    return out


def missing_targets(docs: list[Path]) -> list[str]:
    return [f"{doc.relative_to(REPO)}: {written}" for doc in docs for written, target in referenced_paths(doc)
            if not target.exists()]


def test_every_link_and_path_in_the_docs_exists():
    assert sum(len(referenced_paths(d)) for d in DOCS) > 100  # the scan reads the docs' links and paths
    assert not missing_targets(DOCS), missing_targets(DOCS)


def test_the_walk_sees_a_broken_link_and_a_moved_path(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [the loop](../no/such.md), `es_repro/es/loop.py` (moved), `es_repro/train.py`, "
                    "`results/quickstart/default/` (a run makes it), `conf/<group>/x.yaml` and [a site](https://x.y).")
    broken = [written for written, target in referenced_paths(page) if not target.exists()]
    assert broken == ["../no/such.md", "es_repro/es/loop.py"]
