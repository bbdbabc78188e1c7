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
