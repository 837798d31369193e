"""Smoke test of bench/bench_pipeline.py: the --tiny run produces its table with finite ratios.

Runs the script as a subprocess: it bootstraps its own ComfyUI host, which must not share
module state with the host of the test session.
"""
import math
import re
import shutil
import subprocess
import sys

from harness import REPO_ROOT

RATIO_ROW = re.compile(r"^\| (R=\d+) \| [\d.]+ \| ([^ |]+)x \|", re.MULTILINE)


def test_tiny_pipeline_bench_writes_finite_table(tmp_path):
    out = tmp_path / "perf.md"
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_pipeline.py"), "--tiny", "--models", "sd15",
               "--concepts", "1,2", "--no-coupling", "--separate", "--reference-every", "2", "--presets", "--ops-by-function",
               "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "SD1.5-tiny" in table and "torch " in table and "device: CPU" in table
    ratios = dict(RATIO_ROW.findall(table))
    assert set(ratios) == {"R=1", "R=2"}, table
    assert all(math.isfinite(float(r)) and float(r) > 0 for r in ratios.values()), ratios
    assert "joined attention (RSA/RBA)" in table  # the per-part breakdown ran
    separate = re.search(r"^\| R=2, separate pass \| [\d.]+ \| [\d.]+x \| [-\d]+ \| ([\d.e+-]+) \(rel", table, re.MULTILINE)
    assert separate and float(separate.group(1)) < 0.05, table  # both ways to run the references agree
    every = re.search(r"^\| R=2, references every 2 steps \| [\d.]+ \| ([\d.]+)x \| [-\d]+ \| [\d.e+-]+ \(rel\. L2 "
                      r"([\d.e+-]+)[,)]", table, re.MULTILINE)
    assert every and math.isfinite(float(every.group(1))) and 0 < float(every.group(2)) < 1, table
    assert "R=2, references every 2 steps: reference features made at 2 steps, reused at 2." in table
    for speed in ("balanced", "fast"):  # each preset's time and its deviation from exact, labels included
        row = re.search(rf"^\| R=2, speed {speed} \| [\d.]+ \| ([\d.]+)x \| [-\d]+ \| [\d.e+-]+ \(rel\. L2 "
                        r"([\d.e+-]+), labels ([\d.]+) %\)", table, re.MULTILINE)
        assert row and float(row.group(1)) > 0 and 0 <= float(row.group(3)) <= 100, table
    # Kernel ops per step: the host cost where launches bound the run; MagicFace adds to plain's.
    ops = dict(re.findall(r"^\| (plain|R=\d+) \|(?: [^|]*\|){5} (\d+) \|", table, re.MULTILINE))
    assert set(ops) == {"plain", "R=1", "R=2"}, table
    assert int(ops["plain"]) > 0 and int(ops["R=1"]) > int(ops["plain"]), ops
    # ... and, split by the pack function issuing them, the joined attention is among them.
    by_function = dict(re.findall(r"^\| ([\w/.<>]+:[\w<>]+) \| (-?[\d.]+) \|$", table, re.MULTILINE))
    assert float(by_function.get("magicface_attn/attention.py:_joint_attention", 0)) > 0, table
    # The wrappers that only call the host (the run's and each model call's) own no op: the
    # sampler's and the UNet's ops under them are the host's.
    assert not [name for name in by_function if name.startswith(("comfy_glue/patch.py", "comfy_glue/model_call.py"))], table


def test_tiny_sdxl_bench_times_the_lean_segmentation(tmp_path):
    out = tmp_path / "perf.md"
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_pipeline.py"), "--tiny", "--models", "sdxl",
               "--concepts", "2", "--no-coupling", "--no-breakdown", "--lean-segmentation", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    lean = re.search(r"^\| R=2, segmentation one per block \| [\d.]+ \| ([\d.]+)x \| [-\d]+ \| [\d.e+-]+ \(rel\. L2 "
                     r"([\d.e+-]+)[,)]", table, re.MULTILINE)
    assert lean and math.isfinite(float(lean.group(1))) and 0 < float(lean.group(2)) < 1, table
    # the tiny SDXL's quarter-resolution blocks are 1 and 2 transformers deep: 4 of its 7 layers
    assert "R=2, segmentation one per block: segmentation read 4 layers (exact: 7)." in table


def test_tiny_bench_times_the_compiled_experiments_or_says_why_not(tmp_path):
    """--compile-maths and --compile-attention: with a C++ compiler (torch.compile's CPU backend
    needs one) each compiled run is timed, agrees with exact mode to float rounding and shows
    its compiled functions called; without one the table says why not."""
    out = tmp_path / "perf.md"
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_pipeline.py"), "--tiny", "--models", "sd15",
               "--concepts", "1", "--steps", "2", "--no-coupling", "--no-breakdown", "--compile-maths",
               "--compile-attention", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    labels = ("R=1, compiled maths", "R=1, compiled maths and joined attention")
    if not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")):
        for label in labels:
            assert f"{label}: not timed, torch.compile failed here" in table, table
        return
    for label in labels:
        row = re.search(rf"^\| {label} \| [\d.]+ \| ([\d.]+)x \| [-\d]+ \| [\d.e+-]+ \(rel\. L2 ([\d.e+-]+), "
                        r"labels ([\d.]+) %\)", table, re.MULTILINE)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) < 1e-4 and float(row.group(3)) <= 1, table
    calls = dict(re.findall(r"^(R=1, compiled [\w ]+): first run [\d.]+ s \(compiling\), later runs [\d.]+ s; "
                            r"calls in one run: (.+)\.$", table, re.MULTILINE))
    assert set(calls) == set(labels), table
    for label, expected in ((labels[0], ("propagate_cross_maps", "segment", "semantic_cfg_rate")),
                            (labels[1], ("propagate_cross_maps", "segment", "semantic_cfg_rate", "fold_block",
                                         "_fold_bias_attention"))):
        counts = dict(part.rsplit(" ", 1) for part in calls[label].split(", "))
        assert set(counts) == set(expected) and all(int(n) > 0 for n in counts.values()), calls[label]
