"""The repository passes its linter (ruff, configured in pyproject.toml)."""
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO_ROOT, source_files


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it comes with requirements-test.txt (scripts/setup_host.sh)")
    done = subprocess.run([ruff, "check", "--no-cache", str(REPO_ROOT)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# Functions are short enough to read at once, files short enough to hold one idea. INPUT_TYPES
# is a node's widget declaration (one dict literal), not logic, so it may run longer.
MAX_FUNCTION_LINES = 40
MAX_FILE_LINES = 400
LENGTH_CHECKED = ("comfy_glue", "magicface_attn", "nodes", "bench", "scripts", "tests", "web")


def _long_functions(folder: Path):
    for path in source_files(folder, (".py",)):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "INPUT_TYPES":
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    yield f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)"


@pytest.mark.parametrize("folder", LENGTH_CHECKED)
def test_no_function_is_longer_than_a_screen(folder):
    assert list(_long_functions(REPO_ROOT / folder)) == []


@pytest.mark.parametrize("folder", LENGTH_CHECKED)
def test_no_file_is_longer_than_one_idea(folder):
    sources = source_files(REPO_ROOT / folder)
    long_files = [f"{path.relative_to(REPO_ROOT)} ({lines} lines)" for path in sources
                  if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert sources and long_files == []


# The run only stores: its own methods and parts change it, no other glue module assigns to it.
RUN_ASSIGNMENT = re.compile(r"\brun\.[a-z_]+ *=(?!=)")


def test_only_the_run_assigns_its_attributes():
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sorted((REPO_ROOT / "comfy_glue").glob("*.py")) if path.name != "run_state.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if RUN_ASSIGNMENT.search(line)]
    assert found == []
