"""The repository passes its linter (ruff, configured in pyproject.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it comes with requirements-test.txt (scripts/setup_host.sh)")
    done = subprocess.run([ruff, "check", "--no-cache", str(REPO_ROOT)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
