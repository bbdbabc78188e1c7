"""The import layers of .importlinter hold (function-local imports included), and the check can fail."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "modules", "dataloaders", "tools", "preprocess")


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True,
                          env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"})


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_cycle_break_the_contracts(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    with open(tmp_path / "modules" / "clip" / "config.py", "a") as f:  # a backbone reaching up into the loop
        f.write("\n\ndef _late():\n    from engine.trainer import run  # noqa: F401\n")
    with open(tmp_path / "engine" / "distributed.py", "a") as f:  # the bottom of the engine importing its top
        f.write("\nimport engine.trainer  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "modules is not allowed to import engine" in result.stdout
    assert "engine.distributed is not allowed to import engine.trainer" in result.stdout
    assert "No cycles are allowed in engine" in result.stdout


def _function_local_project_imports(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    found = []
    for function in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom):
                project = node.level > 0 or (node.module or "").split(".")[0] in PACKAGES + ("main_task_retrieval",)
            elif isinstance(node, ast.Import):
                project = any(a.name.split(".")[0] in PACKAGES for a in node.names)
            else:
                continue
            said = " ".join(lines[max(0, node.lineno - 4):node.lineno])  # the line and the 3 above it
            if project and "start-up" not in said:
                found.append((node.lineno, lines[node.lineno - 1].strip()))
    return found


def test_function_local_imports_of_project_modules_say_why():
    """Imports at the top of a file show its dependencies; one inside a function is there only for
    start-up time, and says so ('start-up' on its line or just above)."""
    unexplained = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            unexplained += [f"{path.relative_to(ROOT)}:{line}: {text}"
                            for line, text in _function_local_project_imports(path)]
    for path in sorted(ROOT.glob("main_*.py")):
        unexplained += [f"{path.name}:{line}: {text}" for line, text in _function_local_project_imports(path)]
    assert not unexplained, "\n".join(unexplained)
