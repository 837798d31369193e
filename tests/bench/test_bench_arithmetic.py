"""bench/bench_arithmetic.py on the full SD1.5 layout (meta device, seconds): its counts obey the
facts they must, whatever the host.

Runs the script as a subprocess: it bootstraps its own ComfyUI host.
"""
import re
import subprocess
import sys

import pytest
from harness import REPO_ROOT

# | R | refs TFLOP (pct %), how | seg TFLOP (pct %) | rsa (pct %) | rba (pct %) | ratio x | ratio x | ratio x |
ROW = re.compile(r"^\| (\d) \| [\d.]+ \(([\d.]+) %\), (coupled|own pass) \| [\d.]+ \(([\d.]+) %\) "
                 r"\| [\d.]+ \(([\d.]+) %\) \| [\d.]+ \(([\d.]+) %\) \| ([\d.]+)x \| ([\d.]+)x \| ([\d.]+)x \|$", re.MULTILINE)


def _rows(tmp_path, *extra, model="sd15", name="arithmetic.md"):
    out = tmp_path / name
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_arithmetic.py"), "--models", model,
               "--concepts", "1,2", "--reference-every", "2,4", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    rows = {int(match[0]): match[1:] for match in ROW.findall(table)}
    assert set(rows) == {1, 2}, table
    return {r: (float(refs), how, *map(float, rest)) for r, (refs, how, *rest) in rows.items()}, table


def test_counts_follow_rows_masks_and_schedule(tmp_path):
    rows, table = _rows(tmp_path)
    rsa_steps, rba_steps = map(int, re.search(r"(\d+) RSA and (\d+) RBA steps", table).groups())
    assert rsa_steps + rba_steps == 20 and 0 < rsa_steps < 20, table
    # Same-size references ride in the target's call: R rows cost R/2 of the 2-row plain step, exactly.
    assert rows[1][:2] == (50.0, "coupled") and rows[2][:2] == (100.0, "coupled"), table
    for concepts, (refs, _, segmentation, rsa, rba, every_step, every_2, every_4) in rows.items():
        assert segmentation > 0 and rsa > 0 and rba > 0, table
        # Reusing the features removes reference rows only: each ratio sits above its rows-only part.
        assert every_step > every_2 > every_4 > 1 + concepts / 8, table
        assert every_step == pytest.approx(1 + refs / 100 + segmentation / 100 + (rsa_steps * rsa + rba_steps * rba) / 2000,
                                           abs=0.011), table
    assert rows[2][3] > rows[1][3], table  # RSA attends to more reference keys with two concepts


def test_small_references_take_their_own_cut_pass(tmp_path):
    rows, table = _rows(tmp_path, "--reference-size", "256")
    for concepts, (refs, how, *_) in rows.items():
        # A quarter of the pixels; SD1.5's 'paper' layers reach its last block, so little is cut.
        assert how == "own pass" and 0.2 * 50 * concepts < refs <= 0.25 * 50 * concepts + 0.05, table


def test_lean_segmentation_counts_a_tenth_of_sdxls_segmentation(tmp_path):
    exact, _ = _rows(tmp_path, "--image-size", "512", model="sdxl", name="exact.md")
    lean, table = _rows(tmp_path, "--image-size", "512", "--lean-segmentation", model="sdxl", name="lean.md")
    assert "Segmentation reads 6 layers (one per block)" in table
    for concepts in (1, 2):
        (_, _, segmentation, *_, every_4), (_, _, lean_segmentation, *_, lean_every_4) = exact[concepts], lean[concepts]
        # 6 of the 60 quarter-resolution layers, all of one shape: a tenth of the work (percent cells rounded)
        assert lean_segmentation == pytest.approx(segmentation / 10, abs=0.06), table
        assert every_4 - lean_every_4 == pytest.approx((segmentation - lean_segmentation) / 100, abs=0.011), table
