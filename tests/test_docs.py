"""The documentation stands alone: every relative link of the Markdown files (README.md,
docs/*.md, ...) points to a file of the repository, every ``#anchor`` to a heading of its
target, and no tracked file refers to the workspace outside the repository, which a clone
from a public host does not have.

The checkers are plain functions so that the tests below can also feed them broken input and
see them fail.
"""
import os
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# assembled, so that this file does not match its own search
FORBIDDEN = ("../" + "shared", "/work/" + "shared")

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"   # [text], one level of nested []
                          r"\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")  # (target "title")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def tracked_files(root: Path):
    """The files a clone of the repository has (``git ls-files``), or every file under
    ``root`` outside a few build/cache folders when it is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                             check=True).stdout
        files = [f for f in out.decode().split("\0") if f]
        if files:
            return sorted(files)
    except (OSError, subprocess.CalledProcessError):
        pass
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in filenames:
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, _INLINE_CODE.sub("``", line)


def links(text: str):
    """(line number, target) of every inline and reference-style link and image."""
    out = []
    for number, line in _prose_lines(text):
        out += [(number, m.group(1)) for m in _INLINE_LINK.finditer(line)]
        m = _REFERENCE_LINK.match(line)
        if m:
            out.append((number, m.group(1)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


def anchors(text: str):
    """Every anchor the headings of a Markdown text define (repeated headings get -1, -2...)."""
    seen = {}
    out = set()
    for _, line in _prose_lines(text):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(root: Path, files):
    """Problems with the relative links of the Markdown files among ``files`` (paths relative
    to ``root``): targets that are not among ``files`` and anchors with no such heading."""
    tracked = set(files)
    directories = {str(Path(f).parent.as_posix()) for f in files}
    for f in files:  # every ancestor folder of a tracked file is a valid target too
        parent = Path(f).parent
        while parent.as_posix() != ".":
            directories.add(parent.as_posix())
            parent = parent.parent
    problems = []
    for doc in (f for f in files if f.endswith(".md")):
        text = (root / doc).read_text(encoding="utf-8")
        for number, target in links(text):
            if not target or _EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            if path:
                resolved = os.path.normpath((Path(doc).parent / path).as_posix())
                resolved = Path(resolved).as_posix()
                if resolved.startswith(".."):
                    problems.append(f"{doc}:{number}: {target} leaves the repository")
                    continue
                if resolved not in tracked and resolved.rstrip("/") not in directories:
                    problems.append(f"{doc}:{number}: {target} is not a file of the repository")
                    continue
            else:
                resolved = doc
            if anchor:
                if not resolved.endswith(".md"):
                    problems.append(f"{doc}:{number}: {target} has an anchor into a non-"
                                    f"Markdown file")
                elif anchor not in anchors((root / resolved).read_text(encoding="utf-8")):
                    problems.append(f"{doc}:{number}: {target}: {resolved} has no heading "
                                    f"#{anchor}")
    return problems


def outside_references(root: Path, files):
    """Files among ``files`` that mention a path outside the repository."""
    needles = [s.encode() for s in FORBIDDEN]
    problems = []
    for f in files:
        path = root / f
        if not path.is_file():
            continue
        data = path.read_bytes()
        for needle in needles:
            if needle in data:
                line = data[:data.index(needle)].count(b"\n") + 1
                problems.append(f"{f}:{line}: mentions {needle.decode()}")
    return problems


# ---------------------------------------------------------------------------------------------
# the repository
# ---------------------------------------------------------------------------------------------
def test_docs_exist_and_are_linked_from_readme():
    files = tracked_files(ROOT)
    for doc in ("README.md", "docs/contract.md", "docs/architecture.md"):
        assert doc in files, f"{doc} is not tracked"
    readme_targets = {t.partition("#")[0] for _, t in links((ROOT / "README.md").read_text())}
    assert {"docs/contract.md", "docs/architecture.md"} <= readme_targets


def test_relative_links_resolve():
    problems = broken_links(ROOT, tracked_files(ROOT))
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_no_reference_outside_the_repository():
    problems = outside_references(ROOT, tracked_files(ROOT))
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# the checkers catch what they should
# ---------------------------------------------------------------------------------------------
def _write(root: Path, files: dict):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return sorted(files)


def test_slug_follows_github():
    assert slug("Defects of the authors' code that are not reproduced") == \
        "defects-of-the-authors-code-that-are-not-reproduced"
    assert slug("P-mode (propagation)") == "p-mode-propagation"
    assert slug("The package: `plstm_graph/`") == "the-package-plstm_graph"
    assert slug("See [the docs](docs/x.md) now") == "see-the-docs-now"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_checker_reports_broken_links(tmp_path):
    files = _write(tmp_path, {
        "README.md": ("[ok](docs/a.md) [ok anchor](docs/a.md#first-part) [self](#top)\n"
                      "[missing](docs/nope.md) [bad anchor](docs/a.md#nowhere)\n"
                      "![missing image](docs/fig.png) [outside](../elsewhere/x.md)\n"
                      "[web](https://example.org/x.md) `[code](not/a/link.md)`\n"
                      "```\n[fenced](not/a/link.md)\n```\n"
                      "[ref]: docs/also_missing.md\n"
                      "# Top\n"),
        "docs/a.md": "# First part\n[back](../README.md#top) [wrong](../README.md#bottom)\n",
    })
    problems = broken_links(tmp_path, files)
    text = "\n".join(problems)
    for bad in ("docs/nope.md", "docs/a.md#nowhere", "docs/fig.png", "../elsewhere/x.md",
                "docs/also_missing.md", "../README.md#bottom"):
        assert bad in text, f"{bad} not reported in:\n{text}"
    assert len(problems) == 6, text


def test_checker_reports_outside_references(tmp_path):
    files = _write(tmp_path, {
        "a.py": "# see " + FORBIDDEN[0] + "/spec/X.md\n",
        "b.md": "x\ny " + FORBIDDEN[1] + "/spec\n",
        "c.txt": "nothing here\n",
    })
    problems = outside_references(tmp_path, files)
    assert [p.split(":")[0] for p in problems] == ["a.py", "b.md"]
    assert problems[1].startswith("b.md:2:")


@pytest.mark.parametrize("link", ["docs/contract.md#no-such-heading", "docs/missing.md"])
def test_a_broken_link_in_the_real_readme_fails(tmp_path, link):
    """The real README with one bad link added does not pass."""
    files = tracked_files(ROOT)
    docs = [f for f in files if f.endswith(".md")]
    for f in docs:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text((ROOT / f).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text(encoding="utf-8") +
                                        f"\n[bad]({link})\n", encoding="utf-8")
    problems = broken_links(tmp_path, files)
    assert len(problems) == 1 and link in problems[0], problems
