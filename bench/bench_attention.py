"""Benchmark materialised (reference-style) vs fast RSA/RBA attention: time and peak memory.

    python bench/bench_attention.py [--device cpu|cuda] [--tokens 4096] [--refs 1 2 3 4]
                                    [--shapes 5x64 8x40] [--out table.md]

One target row, N query tokens, R references of N keys each with about half of every
reference mask kept; in RBA the R concepts together own a third of the pixels. RBA is timed
three ways: materialised, fast over all pixels, and fast with pixel groups ("gathered", the
form the pack runs; the groups are made outside the timing, once per call in the pack). Peak memory is
the rise over the starting point: torch.cuda.max_memory_allocated on CUDA, the process's peak
resident set (/proc VmHWM, reset through /proc/self/clear_refs) on Linux CPUs.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness loads the core by path
from harness import load_core  # noqa: E402


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, device: torch.device, repeats: int):
    """(median seconds, peak MiB above the starting point) of fn()."""
    fn()  # warm-up: kernel selection, lazy init
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _proc_status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident set size to the current one
        fn()
        peak = _proc_status_mib("VmHWM") - base
    return statistics.median(times), peak


def make_case(mf, tokens: int, refs: int, heads: int, dim: int, device, dtype, generator):
    channels = heads * dim
    q, k, v = (torch.randn(1, tokens, channels, generator=generator).to(device, dtype) for _ in range(3))
    ref_k, ref_v = (torch.randn(refs, tokens, channels, generator=generator).to(device, dtype) for _ in range(2))
    masks = (torch.rand(refs, tokens, generator=generator) < 0.5).to(device)
    weights = [1.2 + 0.5 * i for i in range(refs)]
    owner = torch.randint(0, 3 * refs, (tokens,), generator=generator)
    regions = (owner[None, None] == torch.arange(refs)[None, :, None]).to(device)
    return q, k, v, mf.make_reference_kv(ref_k, ref_v, masks, weights, heads), regions


def run(args) -> str:
    mf = load_core()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    generator = torch.Generator().manual_seed(0)
    header = (
        "| heads x d | R | op | kept ref keys | materialised ms | fast ms | speed-up | gathered ms "
        "| materialised peak MiB | fast peak MiB |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    with torch.inference_mode():
        for shape in args.shapes:
            heads, dim = (int(part) for part in shape.split("x"))
            for refs in args.refs:
                q, k, v, ref_kv, regions = make_case(mf, args.tokens, refs, heads, dim, device, dtype, generator)
                groups = mf.concept_pixel_groups(regions)
                ops = {
                    "RSA": lambda impl: mf.rsa_attention(q, k, v, ref_kv, heads, impl=impl),
                    "RBA": lambda impl: mf.rba_attention(q, k, v, ref_kv, regions, heads, impl=impl),
                }
                for name, op in ops.items():
                    slow_t, slow_m = measure(lambda: op("plain"), device, args.repeats)
                    fast_t, fast_m = measure(lambda: op("fast"), device, args.repeats)
                    gathered = "-"
                    if name == "RBA":
                        gathered_t, _ = measure(lambda: mf.rba_attention(q, k, v, ref_kv, regions, heads,
                                                                         groups=groups), device, args.repeats)
                        gathered = f"{gathered_t * 1e3:.2f}"
                    lines.append(
                        f"| {heads}x{dim} | {refs} | {name} | {ref_kv.total_kept} | {slow_t * 1e3:.2f} "
                        f"| {fast_t * 1e3:.2f} | {slow_t / fast_t:.1f}x | {gathered} | {slow_m:.0f} | {fast_m:.0f} |"
                    )
                    print(lines[-1], flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return (f"N = {args.tokens} tokens, one target row, {str(dtype).replace('torch.', '')}, "
            f"torch {torch.__version__}, {device_name}\n\n") + "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--refs", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--shapes", nargs="+", default=["5x64", "8x40"], help="heads x head dim")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="default float16 on CUDA, float32 on CPU")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    if args.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A fixed mmap threshold makes glibc return freed big buffers to the OS at once, so
        # one run's leftovers cannot hide the next run's peak resident memory.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    table = run(args)
    print()
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
