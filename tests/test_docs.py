"""The repository stands alone: its docs, scripts, configs and the prose of its code (comments and
strings) cite the authors' repositories and papers, never files that are not in the repository (a team's
notes under shared/, their sections, copies of the authors' READMEs)."""
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folders of the working tree that are not the project's own text.
SKIPPED = {".venv", ".git", "data", "outputs", "output", "ckpts", "build", "dist", "__pycache__", ".pytest_cache"}
OUTSIDE_CITATION = re.compile(r"shared/|seeds/|seed readme|§|\bspecs?\b|\bspec's|team spec", re.IGNORECASE)


def project_files():
    yield ROOT / "README.md"
    for pattern in ("*.md", "*.py", "*.sh", "*.yaml", "*.yml"):
        for path in ROOT.rglob(pattern):
            if not SKIPPED.intersection(path.relative_to(ROOT).parts[:-1]) and path.name != "README.md":
                yield path


def prose(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads: the whole file, or a Python file's comments and strings
    (so that a variable named ``spec`` is not a citation)."""
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    kinds = {tokenize.COMMENT, tokenize.STRING} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    return [(token.start[0] + offset, line)
            for token in tokenize.generate_tokens(io.StringIO(text).readline) if token.type in kinds
            for offset, line in enumerate(token.string.splitlines())]


def outside_citations(path: Path, text: str) -> list[str]:
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {part.strip()[:100]}"
            for line, part in prose(path, text) if OUTSIDE_CITATION.search(part)]


def test_the_checker_finds_citations_in_prose_only(tmp_path):
    code = ('import importlib.util\nspec = importlib.util.find_spec("clip")  # the loader of the module\n'
            'x = spec.loader  # see the spec §2.1\n"""A docstring.\n\nPer the team spec."""\n')
    found = outside_citations(tmp_path / "m.py", code)
    assert [line.split(":")[1] for line in found] == ["3", "6"]
    doc = "Spec: `../shared/specs/x.md`.\nThe seed README's commands.\nRead docs/video.md.\n"
    assert [line.split(":")[1] for line in outside_citations(tmp_path / "d.md", doc)] == ["1", "2"]


def test_no_citation_of_files_outside_the_repository():
    found = [hit for path in project_files() if path != Path(__file__).resolve()
             for hit in outside_citations(path, path.read_text(encoding="utf-8"))]
    assert not found, "cite the authors' repositories and papers instead:\n" + "\n".join(found)


def test_install_line_runs_apt_get_as_root_without_sudo_and_through_sudo_otherwise(tmp_path):
    import os
    import subprocess

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "sudo apt-get" not in readme  # root in a container often has no sudo
    (choose,) = [line.split("#")[0] for line in readme.splitlines() if line.startswith("SUDO=")]
    fake_id = tmp_path / "id"
    for uid, expected in (("0", ""), ("1000", "sudo")):
        fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
        fake_id.chmod(0o755)
        out = subprocess.run(["bash", "-c", f'{choose}; printf "[%s]" "$SUDO"'], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, check=True).stdout
        assert out == f"[{expected}]", uid


# -- links between the docs ------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
README_MAX_LINES = 250  # a newcomer's first page: the rest belongs in docs/


def markdown_lines(text: str) -> list[tuple[int, str]]:
    """(line, text) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def heading_slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets GitHub's '-1', '-2' ... suffixes."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in markdown_lines(text):
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            slug = heading_slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of a Markdown file that does not resolve."""
    broken = []
    for number, line in markdown_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and anchor not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{where} (no heading with that anchor)")
    return broken


def test_heading_slug_follows_githubs_rule():
    assert heading_slug("How this differs from the CLIP4Clip family (on purpose)") == \
        "how-this-differs-from-the-clip4clip-family-on-purpose"
    assert heading_slug("MSR-VTT (`--datatype msrvtt`)") == "msr-vtt---datatype-msrvtt"
    assert heading_slug("Where this differs from T2VLP's code, and why") == \
        "where-this-differs-from-t2vlps-code-and-why"
    assert heading_slug("bench_e2e.py: loader_only") == "bench_e2epy-loader_only"
    assert anchors("# A\n## Notes\n```\n# not a heading\n```\n## Notes\n") == {"a", "notes", "notes-1"}


def test_the_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Two words\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# Top\n"
        "[ok](docs/b.md) [ok](docs/b.md#two-words) [ok](#top) [web](https://example.com/x.md)\n"
        "[gone](docs/c.md) [bad anchor](docs/b.md#three-words)\n"
        "`[code](docs/none.md)`\n```\n[fenced](docs/none.md)\n```\n"
        "![picture](docs/missing.png) [own](#nowhere)\n", encoding="utf-8")
    assert broken_links(tmp_path / "README.md") == [
        "README.md:3: docs/c.md (no such file)",
        "README.md:3: docs/b.md#three-words (no heading with that anchor)",
        "README.md:8: docs/missing.png (no such file)",
        "README.md:8: #nowhere (no heading with that anchor)"]


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [link for page in pages for link in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
