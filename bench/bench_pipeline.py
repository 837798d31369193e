"""Benchmark whole-pipeline MagicFace sampling against plain sampling, inside a real ComfyUI host.

    python bench/bench_pipeline.py --tiny                                   # CPU smoke, < 60 s
    python bench/bench_pipeline.py --device cuda --models sd15,sdxl --out perf.md

Builds random-weight UNets with the real SD1.5 / SDXL layouts (or small ones with --tiny),
then, in one process and from the same noise, samples with nodes.common_ksampler (euler, cfg 7):
plain, and MagicFace with R = 1..4 concepts (a MagicFacePlan built directly, no CLIP/VAE).
Reports the median time ratio MagicFace / plain, the extra peak memory, and a per-part
breakdown taken in a separate, synchronised run. --separate adds the largest R with the
references in a separate UNet pass instead of coupled into the target's batch (a bench-side
override of the product's choice); --reference-every K adds the largest R in the approximate
mode that makes reference features at one step in K; --lean-segmentation adds the largest R (and
each K) with the segmentation read from one transformer per block. All of them report their
difference from the exact, coupled result of the same seed.
"""
import argparse
import contextlib
import dataclasses
import math
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test harness bootstraps the ComfyUI host
sys.path.insert(0, str(BENCH_DIR))  # its sibling modules, also under python -P

from pipeline_models import (  # noqa: E402
    SAMPLER, SCHEDULER, SPECS, build_model_patcher, conditioning, glue, make_plan, patched_model,
)
from pipeline_overrides import JOINED_ATTENTION, PER_STEP_MATHS, Compiled, SeparatePassOnly  # noqa: E402
from pipeline_probe import (  # noqa: E402
    PartTimer, count_kernel_ops, device_busy_seconds, instrumented, kernel_ops_by_function, peak_memory_mib, timed,
)
from pipeline_report import median_ratio, render  # noqa: E402

SEED = 7


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(parser)
    _add_mode_options(parser)
    _add_measure_options(parser)
    args = parser.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 20)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    concepts = args.concepts or ("1,3" if args.tiny else "1,2,3,4")
    args.model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    read_sizes_and_counts(parser, args, concepts)
    return args


def _add_run_options(parser):
    """What is sampled: device, models, sizes, concepts, steps."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sdxl")
    parser.add_argument("--tiny", action="store_true", help="small UNets at a 128x128 image, for CPU smoke runs")
    parser.add_argument("--concepts", default=None, help="comma list of concept counts R (default 1,2,3,4; --tiny 1,3)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20, --tiny 4)")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3, --tiny 1)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="square image size in pixels (default: SD1.5 512, SDXL 1024, --tiny 128); e.g. "
                             "256 runs the full-size UNets on a CPU in minutes")
    parser.add_argument("--reference-size", type=int, default=0,
                        help="square size in pixels of the references (MagicFace Apply's reference_size; "
                             "default: the image size). Smaller ones are letterboxed into the target's call, "
                             "or with --separate take their own, cheaper pass")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (default 1: on a shared, loaded CPU more threads wait on "
                             "each other at every op and timings explode)")


def _add_mode_options(parser):
    """MagicFace variants timed beside exact mode, each with its difference from exact."""
    parser.add_argument("--separate", action="store_true",
                        help="also time the largest R with the separate reference pass instead of batch coupling")
    parser.add_argument("--reference-every", default="",
                        help="comma list of K >= 2: also time the largest R with reference features made at "
                             "one step in K (the Stage Scheduler's approximate reference_every mode)")
    parser.add_argument("--lean-segmentation", action="store_true",
                        help="also time the largest R, exact and with each --reference-every K, with the "
                             "segmentation read from the first transformer of each block (the Stage Scheduler's "
                             "segmentation_layers 'one per block'; differs from 'all layers' on SDXL only)")
    parser.add_argument("--compile-maths", action="store_true",
                        help="also time the largest R with the per-step maths (propagation, segmentation, semantic "
                             "CFG's rate) compiled by torch.compile: fusing them is one way to fewer launches per "
                             "step; its first run, which compiles, is reported apart")
    parser.add_argument("--compile-attention", action="store_true",
                        help="also time the largest R with the per-step maths and RSA's joined attention (the fold "
                             "of the references and the concatenations around its fused call) compiled")
    parser.add_argument("--presets", action="store_true",
                        help="also time the largest R with each Stage Scheduler speed preset (balanced, fast), "
                             "and report its deviation from exact")


def _add_measure_options(parser):
    """What is measured besides the timed runs, and where the report goes."""
    parser.add_argument("--no-breakdown", action="store_true", help="skip the synchronised per-part run")
    parser.add_argument("--no-coupling", action="store_true", help="skip the batch-coupling measurement")
    parser.add_argument("--ops-by-function", action="store_true",
                        help="also count the largest R's extra kernel ops per step by the pack function issuing them")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--gpu-busy", action="store_true",
                        help="CUDA: one more profiled run of plain and of the largest R for the GPU busy share (torch.profiler)")
    parser.add_argument("--profile-dir", type=Path,
                        help="with --gpu-busy: write the plain and largest-R operator tables into this folder")


def read_sizes_and_counts(parser, args, concepts: str):
    """Options both bench scripts share: R list, K list, image and reference sizes."""
    args.concept_counts = [int(r) for r in concepts.split(",") if r.strip()]
    args.reference_every = [int(k) for k in args.reference_every.split(",") if k.strip()]
    if args.reference_size % 64 or args.image_size % 64:
        parser.error("--image-size and --reference-size must be multiples of 64")
    if any(k < 2 for k in args.reference_every):
        parser.error("--reference-every takes step counts >= 2 (1 is the exact mode, always included)")


def bootstrap_host(device: str) -> str:
    """Import ComfyUI in-process with the pack loaded and return the host's name and version; on
    CUDA the host must not be forced to CPU.

    The harness forces args.cpu; ComfyUI reads it when comfy.model_management is first imported,
    so for CUDA that module is imported first with args.cpu left off.
    """
    from harness import bootstrap_in_process, find_comfyui_root, host_version
    root = str(find_comfyui_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    if device == "cuda":
        import comfy.options
        comfy.options.enable_args_parsing(False)
        import comfy.model_management  # noqa: F401  (decides the device now, before args.cpu is set)
    work = Path(tempfile.mkdtemp(prefix="mf_bench_"))
    host = bootstrap_in_process(work / "run", work / "models")
    if not host.pack_loaded:
        raise RuntimeError("ComfyUI did not load the MagicFace pack")
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False
    return host_version(host.root)


class Variant:
    """One sampling configuration: plain (plan None) or MagicFace with one plan."""

    def __init__(self, label, model, patch=None, concepts=0, separate=False, reference_every=1, lean=False,
                 compiled=None):
        self.label, self.model, self.patch, self.concepts = label, model, patch, concepts
        self.separate, self.reference_every, self.lean = separate, reference_every, lean
        self.compiled = compiled  # a pipeline_overrides.Compiled, or None
        self.first_run_s = None
        self.times, self.result, self.peak_mib, self.parts, self.report = [], None, float("nan"), None, None
        self.syncs = None
        self.kernel_ops = None
        self.busy_s = None
        self.ops_by_function = None

    @property
    def exact(self) -> bool:
        """MagicFace as the product runs it by default: coupled references made every step."""
        return not self.separate and self.reference_every == 1 and not self.lean and self.compiled is None


def sample(variant, positive, negative, latent, args):
    import nodes
    out = nodes.common_ksampler(variant.model, SEED, args.steps, args.cfg, SAMPLER, SCHEDULER,
                                positive, negative, {"samples": latent})
    return out[0]["samples"]


def _run_variant(variant, positive, negative, latent, args, device):
    override = SeparatePassOnly() if variant.separate else variant.compiled or contextlib.nullcontext()
    with override:
        return timed(lambda: sample(variant, positive, negative, latent, args), device)


def bench_model(name, args, device, dtype):
    spec = SPECS[(name, args.tiny)]
    if args.image_size:
        spec = dataclasses.replace(spec, latent_hw=(args.image_size // 8,) * 2)
    base = build_model_patcher(spec, device, dtype)
    positive, negative = conditioning(spec, SEED)
    latent = torch.zeros(1, 4, *spec.latent_hw)
    variants = build_variants(base, spec, args)

    def runner(variant):
        return lambda: _run_variant(variant, positive, negative, latent, args, device)

    notes = time_variants(variants, runner, args, device)
    if not args.no_breakdown:  # the compiled experiment's functions are not the instrumented ones
        for variant in [v for v in variants[1:] if v.compiled is None]:
            timer = PartTimer(device)
            with instrumented(timer):
                timer.total, _ = runner(variant)()
            variant.parts = timer
    count_launches(variants, runner, spec, args, device)
    coupling = None if args.no_coupling else measure_coupling(base, spec, args, device, positive)
    return spec, variants, coupling, notes


def build_variants(base, spec, args) -> list:
    """Plain, then MagicFace at each R, then the largest R in each mode the options ask for."""
    def patched(count, every=1, lean=False):
        return patched_model(base, make_plan(base, spec, count, seed=SEED, reference_every=every,
                                             reference_size=args.reference_size, lean_segmentation=lean))

    variants = [Variant("plain", base)]
    variants += [Variant(f"R={count}", *patched(count), count) for count in args.concept_counts]
    largest = args.concept_counts[-1]
    if args.separate:
        variants.append(Variant(f"R={largest}, separate pass", *patched(largest), largest, separate=True))
    for every in args.reference_every:
        variants.append(Variant(f"R={largest}, references every {every} steps", *patched(largest, every), largest,
                                reference_every=every))
    if args.lean_segmentation:
        for every in [1] + args.reference_every:
            references = f"references every {every} steps, " if every > 1 else ""
            variants.append(Variant(f"R={largest}, {references}segmentation one per block",
                                    *patched(largest, every, lean=True), largest, reference_every=every, lean=True))
    if args.compile_maths:
        variants.append(Variant(f"R={largest}, compiled maths", *patched(largest), largest,
                                compiled=Compiled(PER_STEP_MATHS)))
    if args.compile_attention:
        variants.append(Variant(f"R={largest}, compiled maths and joined attention", *patched(largest), largest,
                                compiled=Compiled(PER_STEP_MATHS + JOINED_ATTENTION)))
    if args.presets:
        keys = glue("keys")
        for speed in keys.SPEED_PRESETS[1:]:
            every, layer_set = keys.SPEED_LEVERS[speed]
            lean = layer_set == keys.SEGMENTATION_ONE_PER_BLOCK
            variants.append(Variant(f"R={largest}, speed {speed}", *patched(largest, every, lean=lean), largest,
                                    reference_every=every, lean=lean))
    return variants


def time_variants(variants, runner, args, device) -> list:
    """One warm-up run each (kernel choice, allocator; its result feeds the checks), then
    args.repeats timed runs interleaved across variants, so load changes hit every one alike.
    Returns notes for the report: a compiled experiment that could not run is dropped with one."""
    notes = []
    for variant in list(variants):
        try:
            variant.first_run_s, variant.result = runner(variant)()
        except Exception as error:  # only the compiled experiment may fail here
            if variant.compiled is None:
                raise
            first_line = (str(error).splitlines() or [""])[0][:200]
            notes.append(f"{variant.label}: not timed, torch.compile failed here ({type(error).__name__}: {first_line})")
            variants.remove(variant)
            continue
        variant.report = variant.patch.report() if variant.patch else None
    for repeat in range(args.repeats):
        for variant in variants:
            if repeat == args.repeats - 1:  # the peak read only adds syncs before and after the run
                variant.peak_mib, (seconds, _) = peak_memory_mib(runner(variant), device)
            else:
                seconds, _ = runner(variant)()
            variant.times.append(seconds)
    return notes


def count_launches(variants, runner, spec, args, device):
    """Kernel ops per step of every variant; for plain and the largest coupled R also the split
    by function, and on CUDA the host syncs and (profiled, several times a plain run) GPU busy time."""
    for index, variant in enumerate(variants):
        run = runner(variant)
        if variant.compiled is None:  # a dispatch mode would see the compiled kernels' inputs only
            variant.kernel_ops = count_kernel_ops(run) / args.steps
        counted = index in (0, len(args.concept_counts))
        if args.ops_by_function and counted:
            variant.ops_by_function = kernel_ops_by_function(run)
        if device.type != "cuda":
            continue
        variant.syncs = count_host_syncs(run)
        if args.gpu_busy and counted:
            table = None
            if args.profile_dir:
                args.profile_dir.mkdir(parents=True, exist_ok=True)
                table = args.profile_dir / f"profile_{spec.family}_{variant.label.replace('=', '')}.txt"
            variant.busy_s = device_busy_seconds(run, device, table)


def count_host_syncs(fn) -> int:
    """Synchronising CUDA calls during fn() (torch's sync debug mode warns once per sync)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure_coupling(base, spec, args, device, positive):
    """Median seconds of one UNet call on 2+R rows vs a 2-row call plus an R-row call, per R.

    This is the choice between coupling the references into the target's batch and the
    separate reference pass MagicFace uses (cond branch only, once per step).
    """
    model = base.model
    dtype = model.get_dtype()
    context_dim = spec.unet["context_dim"]
    generator = torch.Generator().manual_seed(SEED)

    def call(rows):
        x = torch.randn(rows, 4, *spec.latent_hw, generator=generator).to(device)
        context = torch.randn(rows, 77, context_dim, generator=generator).to(device, dtype)
        extra = {"y": torch.randn(rows, spec.unet["adm_in_channels"], generator=generator).to(device, dtype)} \
            if spec.pooled_dim else {}
        sigma = torch.full((rows,), 5.0, device=device)
        return lambda: model.apply_model(x, sigma, c_crossattn=context, **extra)

    results = []
    repeats = max(3, args.repeats)
    for count in args.concept_counts:
        joint, target, refs = call(2 + count), call(2), call(count)
        joint(), target(), refs()
        samples = [(timed(joint, device)[0], timed(target, device)[0] + timed(refs, device)[0])
                   for _ in range(repeats)]
        results.append((count, statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)))
    return results


def check_results(results):
    """Every ratio finite and every sample finite: the smoke test relies on this."""
    for spec, variants, _, _ in results:
        plain = variants[0]
        for variant in variants:
            if not torch.isfinite(variant.result).all():
                raise RuntimeError(f"{spec.name} {variant.label}: non-finite samples")
            if variant is not plain and not math.isfinite(median_ratio(variant, plain)):
                raise RuntimeError(f"{spec.name} {variant.label}: non-finite ratio")


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    args.host = bootstrap_host(args.device)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    results = []
    with torch.inference_mode():
        for name in args.model_names:
            results.append(bench_model(name, args, device, dtype))
            report = render(results, args, device, dtype)
            if args.out:  # after each model, so a run cut short still leaves its finished tables
                args.out.write_text(report + "\n")
            check_results(results)
    print(report)
    return report


if __name__ == "__main__":
    main()
