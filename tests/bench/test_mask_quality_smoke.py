"""Smoke test of bench/mask_quality.py on the tiny random model: it runs on the published
example references and writes its IoU table (the figures mean nothing on random weights)."""
import re
import subprocess
import sys

from harness import REPO_ROOT

ROW = re.compile(r"^\| (\w[\w-]*) \| (\w+) \| ([\d.]+) \| ([\d.]+) \| (\d+)% \|$", re.MULTILINE)


def test_mask_quality_bench_writes_its_table(tmp_path, examples_dir):
    out = tmp_path / "masks.md"
    command = [sys.executable, "-P", str(REPO_ROOT / "bench" / "mask_quality.py"), "--examples", str(examples_dir),
               "--size", "128", "--limit", "3", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ROW.findall(out.read_text())
    assert len(rows) == 3, out.read_text()
    for _, word, estimated, whole, covers in rows:
        assert 0.0 <= float(estimated) <= 1.0 and 0.0 <= float(whole) <= 1.0
        assert abs(float(whole) - int(covers) / 100) < 0.01, word  # IoU of "whole image" = the drawn share
    assert "**mean** | 3 references" in out.read_text()
