"""The markdown report of bench_pipeline.py: the timing table per model and the tables and lines
under it (slope in R, per-part breakdown, kernel ops by function, batch coupling, stages)."""
import datetime
import platform
import statistics
from collections import Counter

import torch

from pipeline_models import SAMPLER, SCHEDULER
from pipeline_probe import PARTS


def run_ratios(variant, plain):
    """Each timed run over the plain run interleaved with it."""
    return [t / p for t, p in zip(variant.times, plain.times)]


def median_ratio(variant, plain):
    return statistics.median(run_ratios(variant, plain))


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _label_change(variant, exact) -> str:
    """', labels x %': the share of the last segmentation's pixels labelled otherwise than in exact."""
    ours, theirs = ((v.report or {}).get("label_history") for v in (variant, exact))
    if not ours or not theirs or ours[-1][1].shape != theirs[-1][1].shape:
        return ""
    return f", labels {100 * (ours[-1][1] != theirs[-1][1]).float().mean().item():.1f} %"


def render(results, args, device, dtype):
    lines = _header_lines(args, device, dtype)
    for spec, variants, coupling, notes in results:
        plain = variants[0]
        plain_s = statistics.median(plain.times)
        lines += [f"### {spec.name}, {spec.image_size} image (latent {spec.latent_hw[0]}x{spec.latent_hw[1]})", "",
                  "| variant | median s | ratio vs plain | extra peak MiB | max abs diff vs exact | host syncs "
                  "| kernel ops per step | per-run ratios |" + (" GPU busy |" if args.gpu_busy else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if args.gpu_busy else "")]
        coupled = {v.concepts: v for v in variants[1:] if v.exact}
        lines += [_variant_row(variant, plain, coupled, args.gpu_busy) for variant in variants]
        lines += _slope_lines(list(coupled.values()), plain, plain_s) + _kernel_time_lines(variants)
        lines += _breakdown_lines(variants, plain_s) + _ops_lines(variants, args.steps) + _coupling_lines(coupling)
        lines += _stage_lines(variants) + _compile_lines(variants, notes) + [""]
    return "\n".join(lines)


def _header_lines(args, device, dtype):
    references = f"{args.reference_size}x{args.reference_size}" if args.reference_size else "the image size"
    return [
        f"## MagicFace pipeline benchmark ({'tiny' if args.tiny else 'full-size'} UNets)",
        "",
        f"- device: {_device_name(device)}; dtype: {str(dtype).replace('torch.', '')}; torch {torch.__version__}; "
        f"{args.host}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- {args.steps} steps {SAMPLER}/{SCHEDULER}, cfg {args.cfg}, RSA until 42 % of the schedule then RBA, "
        f"semantic CFG on, 'paper' layers; {args.repeats} interleaved timed runs per variant, medians",
        f"- references: {references}",
        "",
    ]


def _difference_from_exact(variant, exact) -> str:
    """Max abs and relative L2 difference of the final latent from the exact run of the same R."""
    delta = variant.result - exact.result
    return (f"{delta.abs().max().item():.3g} (rel. L2 {(delta.norm() / exact.result.norm()).item():.2g}"
            f"{_label_change(variant, exact)})")


def _variant_row(variant, plain, coupled, gpu_busy: bool) -> str:
    ratios = run_ratios(variant, plain)
    extra = variant.peak_mib - plain.peak_mib if variant is not plain else 0.0
    diff = "" if variant is plain or variant.exact else _difference_from_exact(variant, coupled[variant.concepts])
    syncs = "" if variant.syncs is None else str(variant.syncs)
    spread = "" if variant is plain else f"{min(ratios):.2f}-{max(ratios):.2f}"
    median_s = statistics.median(variant.times)
    ops = "" if variant.kernel_ops is None else f"{variant.kernel_ops:.0f}"
    busy = ""
    if gpu_busy:
        busy = " |" if variant.busy_s is None else f" {100 * variant.busy_s / median_s:.0f} % |"
    return (f"| {variant.label} | {median_s:.3f} | {statistics.median(ratios):.3f}x "
            f"| {extra:.0f} | {diff} | {syncs} | {ops} | {spread} |{busy}")


def _compile_lines(variants, notes):
    """The compiled experiments' first run (which compiles) against their later ones, how often
    that run called each compiled function, and any variant the machine could not run."""
    lines = []
    for variant in (v for v in variants if v.compiled is not None):
        calls = ", ".join(f"{name} {count}" for name, count in (variant.compiled.first_run_calls or {}).items())
        lines.append(f"{variant.label}: first run {variant.first_run_s:.1f} s (compiling), later runs "
                     f"{statistics.median(variant.times):.3f} s; calls in one run: {calls or 'none'}.")
    return ["", *lines, *notes] if lines or notes else []


def _slope_lines(coupled, plain, plain_s):
    if len(coupled) < 2:
        return []
    slope = _slope([v.concepts for v in coupled], [median_ratio(v, plain) for v in coupled])
    return ["", f"Slope of time vs R: {slope:.3f}x plain per extra concept "
                f"({slope * plain_s:.3f} s per concept per image)."]


def _kernel_time_lines(variants):
    """Plain's and the largest R's summed kernel times (--gpu-busy): a slow or loaded host hides
    part of the GPU's work from the wall-time ratio, not from this one."""
    profiled = [v for v in variants if v.busy_s is not None]
    if len(profiled) < 2:
        return []
    plain, largest = profiled[0], profiled[-1]
    return ["", f"GPU kernel time per image (profiled runs): plain {plain.busy_s:.3f} s, {largest.label} "
                f"{largest.busy_s:.3f} s ({largest.busy_s / plain.busy_s:.2f}x)."]


def _slope(xs, ys):
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def _breakdown_lines(variants, plain_s):
    timed_variants = [v for v in variants[1:] if v.parts is not None]
    if not timed_variants:
        return []
    lines = ["", "Per-part time, separate synchronised run, seconds per image (% of plain sampling). "
                 "The rest is the UNet calls, reference rows included, and the sampler:", "",
             "| variant | " + " | ".join(PARTS) + " | rest | total |", "|---|" + "---|" * (len(PARTS) + 2)]
    for variant in timed_variants:
        parts = [variant.parts.seconds[p] for p in PARTS] + [variant.parts.total - sum(variant.parts.seconds.values()),
                                                              variant.parts.total]
        cells = [f"{seconds:.3f} ({100 * seconds / plain_s:.0f} %)" for seconds in parts]
        lines.append(f"| {variant.label} | " + " | ".join(cells) + " |")
    return lines


def _ops_lines(variants, steps: int, rows: int = 16):
    counted = [v for v in variants if v.ops_by_function is not None]
    if len(counted) < 2:
        return []
    plain, largest = counted[0], counted[-1]
    extra = Counter(largest.ops_by_function)
    extra.subtract(plain.ops_by_function)
    ranked = sorted(((name, count) for name, count in extra.items() if count), key=lambda item: -abs(item[1]))
    lines = ["", f"Extra kernel ops per step of {largest.label} by the pack function issuing them "
                 "('host': the UNet's own, fewer where MagicFace replaced its attention calls):", "",
             "| function | ops per step |", "|---|---|"]
    lines += [f"| {name} | {count / steps:.1f} |" for name, count in ranked[:rows]]
    if len(ranked) > rows:
        rest = sum(count for _, count in ranked[rows:])
        lines.append(f"| {len(ranked) - rows} more | {rest / steps:.1f} |")
    return lines


def _coupling_lines(coupling):
    if not coupling:
        return []
    lines = ["", "Batch coupling: one UNet call on 2+R rows vs a 2-row call plus an R-row call (median s):", "",
             "| R | 2+R rows | 2 rows + R rows | separate / coupled |", "|---|---|---|---|"]
    for count, joint, separate in coupling:
        lines.append(f"| {count} | {joint:.4f} | {separate:.4f} | {separate / joint:.3f} |")
    return lines


def _segmented_layers(report) -> int:
    return sum(1 for kind, name in report["calls"] if kind == "segmentation" and name not in ("step", "uncond half"))


def _stage_lines(variants):
    """Which steps computed what, from the patches' own reports (segmentation decision included)."""
    exact = [v for v in variants[1:] if v.exact]
    if not exact:
        return []
    report = exact[-1].report
    calls = report["calls"]
    lines = ["", f"Steps (R={exact[-1].concepts}): {len(report['rsa_sigmas'])} RSA, "
                 f"{len(report['rba_sigmas'])} RBA; segmentation computed at {calls.get(('segmentation', 'step'), 0)} "
                 f"steps, semantic CFG applied at {calls.get(('guidance', 'step'), 0)}."]
    exact_layers = _segmented_layers(report)
    for variant in variants[1:]:
        if variant.lean:
            lines.append(f"{variant.label}: segmentation read {_segmented_layers(variant.report)} layers "
                         f"(exact: {exact_layers}).")
        if variant.reference_every > 1:
            calls = variant.report["calls"]
            made = sum(n for (kind, how), n in calls.items() if kind == "references" and how != "reused")
            lines.append(f"{variant.label}: reference features made at {made} steps, reused at "
                         f"{calls.get(('references', 'reused'), 0)}.")
    return lines
