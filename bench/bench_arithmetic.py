"""Arithmetic of one MagicFace sampling step against plain sampling, counted on the real layouts.

    python bench/bench_arithmetic.py                                   # SD1.5 512x512, SDXL 1024x1024
    python bench/bench_arithmetic.py --models sdxl --concepts 2 --reference-every 2,4 --reference-size 512
    python bench/bench_arithmetic.py --models sdxl --lean-segmentation   # one transformer per block

Where the UNet is bound by arithmetic (SDXL at 1024x1024 on an H100, any model on a CPU), run time
follows floating-point operations. This counts them (torch.utils.flop_counter) for a plain step
and for each piece MagicFace adds to a step: the references' rows, the segmentation, the joined
attention (RSA or RBA beyond the plain attention it replaces). Everything runs on the meta
device through the pack's own functions and the host's UNet: no weights, no memory, seconds on
a CPU. The "arithmetic ratio" it derives is what MagicFace / plain tends to where time follows
arithmetic, not a measurement: kernel launches, memory traffic, the semantic guidance (a few
element-wise ops per step) and fused kernels that round head widths up come on top, while larger batches can run more
efficiently (docs/performance.md sets counts beside timings).
Concept masks and regions are those of bench_pipeline.py (rectangles covering 19-47 %).
"""
import argparse
import datetime
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the test harness bootstraps the ComfyUI host
sys.path.insert(0, str(BENCH_DIR))

from bench_pipeline import bootstrap_host, read_sizes_and_counts  # noqa: E402
from pipeline_models import (  # noqa: E402
    SCHEDULER, SPECS, attention_core, build_base_model, concept_masks, glue, lean_segmentation_set,
)

META = torch.device("meta")
SWITCH_AT = 0.42  # the Stage Scheduler's default: RSA until 42 % of the schedule, then RBA
TEXT_TOKENS = 77


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def empty(*shape):
    return torch.empty(*shape, device=META)


class Model:
    """A layout's UNet on the meta device, its attention layers and their shapes."""

    def __init__(self, spec, latent_hw, lean_segmentation=False):
        self.spec, self.latent_hw = spec, tuple(latent_hw)
        self.base = build_base_model(spec, META, torch.float32)
        self.unet = self.base.diffusion_model
        layers = glue("layers")
        self.layers = layers.list_attention_layers(self.unet)
        self.injection = layers.select_injection_layers(self.layers, "paper")
        self.segmentation = layers.select_segmentation_layers(self.layers, lean_segmentation_set(lean_segmentation))
        self.shapes = {}  # (attn1|attn2, layer key) -> (queries N, channels C, keys M, heads)
        self.plain_step = count_flops(self.unet_call(2, self.latent_hw, record=True))

    def unet_call(self, rows, latent_hw, patches=None, record=False):
        """A closure running the UNet on `rows` meta rows; attention through the pack's plain
        attention (the host's CPU attention reads device memory statistics the meta device lacks)."""
        core = attention_core()

        def attend(kind, key):
            def attention(q, k, v, extra):
                if record:
                    self.shapes[(kind, key)] = (q.shape[1], q.shape[2], k.shape[1], extra["n_heads"])
                return core.plain_attention(q, k, v, extra["n_heads"])
            return attention

        spec = self.spec
        x, t = empty(rows, 4, *latent_hw), empty(rows)
        context = empty(rows, TEXT_TOKENS, spec.unet["context_dim"])
        extra = {"y": empty(rows, spec.unet["adm_in_channels"])} if spec.pooled_dim else {}

        def call():
            options = {"patches_replace": {kind: {layer.key: attend(kind, layer.key) for layer in self.layers}
                                           for kind in ("attn1", "attn2")},
                       "patches": patches or {}}
            self.unet(x, t, context=context, transformer_options=options, **extra)
        return call

    def grid(self, layer, latent_hw=None):
        return glue("layers").layer_hw(latent_hw or self.latent_hw, layer.factor)


def reference_rows_flops(model, concepts: int, ref_hw) -> tuple:
    """(FLOPs of the references' rows in one step, how they run): coupled into the target's call
    at its frame size when the product would do so, else their own pass cut after the last
    injection layer (reference_pass.py)."""
    passes = glue("reference_pass")
    if passes.letterbox(ref_hw, model.latent_hw) is not None:
        return count_flops(model.unet_call(concepts, model.latent_hw)), "coupled"
    last = passes.last_needed_output_block(SimpleNamespace(injection_layers=model.injection))
    patches = {"output_block_patch": [passes.OutputBlockCut(last)]}
    return count_flops(model.unet_call(concepts, ref_hw, patches)), "own pass"


def segmentation_flops(model, concepts: int) -> int:
    """The per-step segmentation of one image (uncond and cond rows): cross-attention maps and
    their propagation on every segmentation layer, then the segmentation itself."""
    core, queue = attention_core(), glue("propagation_queue").PropagationQueue()
    tokens = [(2 + 3 * index,) for index in range(concepts)]

    def run():
        for layer in model.segmentation:
            tokens_n, channels, _, heads = model.shapes[("attn1", layer.key)]
            _, _, text, _ = model.shapes[("attn2", layer.key)]
            q_self, k_self, q_cross = (empty(2, tokens_n, channels) for _ in range(3))
            queue.add(q_self, k_self, q_cross, empty(2, text, channels), heads, model.grid(layer))
        out_hw = glue("layers").layer_hw(model.latent_hw, 2)
        core.segment(queue.maps(), out_hw, tokens, 0.9 if concepts == 1 else 0.6)
    return count_flops(run)


def joined_attention_flops(model, concepts: int, ref_hw) -> dict:
    """{'rsa': FLOPs, 'rba': FLOPs} that RSA / RBA add to one image's cond row in one step, over
    the plain attention they replace, summed over the injection layers. RBA regions: each
    concept where its reference mask lies."""
    core = attention_core()
    masks, weights = concept_masks(concepts), [2.5] + [2.0] * (concepts - 1)
    extra = {"rsa": 0, "rba": 0}
    for layer in model.injection:
        tokens_n, channels, _, heads = model.shapes[("attn1", layer.key)]
        ref_h, ref_w = model.grid(layer, ref_hw)
        layout = core.pack_layout(core.mask_to_layer(masks, ref_h, ref_w, mode="area"), weights, META)
        refs = core.make_reference_kv(empty(concepts, ref_h * ref_w, channels), empty(concepts, ref_h * ref_w, channels),
                                      layout.key_mask, weights, heads, layout=layout)
        regions = core.mask_to_layer(masks, *model.grid(layer), mode="area")[None]
        groups = tuple(tuple(pixels.to(META) for pixels in row) for row in core.concept_pixel_groups(regions))
        q, k, v = (empty(1, tokens_n, channels) for _ in range(3))
        plain = count_flops(lambda: core.plain_attention(q, k, v, heads))
        extra["rsa"] += count_flops(lambda: core.rsa_attention(q, k, v, refs, heads)) - plain
        extra["rba"] += count_flops(lambda: core.rba_attention(q, k, v, refs, regions.to(META), heads,
                                                               groups=groups)) - plain
    return extra


def rsa_step_count(model, steps: int) -> int:
    """Steps whose noise level is above the RSA/RBA switch, as MagicFacePlan.stage_at decides."""
    import comfy.samplers
    sampling = model.base.model_sampling
    if hasattr(comfy.samplers, "calculate_sigmas"):
        sigmas = comfy.samplers.calculate_sigmas(sampling, SCHEDULER, steps)
    else:  # the 2024 host
        sigmas = comfy.samplers.calculate_sigmas_scheduler(model.base, SCHEDULER, steps)
    switch = float(sampling.percent_to_sigma(SWITCH_AT))
    return sum(float(sigma) > switch for sigma in sigmas[:steps])


def budget(name, args):
    spec = SPECS[(name, False)]
    image = args.image_size or spec.latent_hw[0] * 8
    model = Model(spec, (image // 8,) * 2, args.lean_segmentation)
    ref_hw = (args.reference_size // 8,) * 2 if args.reference_size else model.latent_hw
    rsa_steps = rsa_step_count(model, args.steps)
    rows = []
    for concepts in args.concept_counts:
        references, how = reference_rows_flops(model, concepts, ref_hw)
        segmentation = segmentation_flops(model, concepts)
        joined = joined_attention_flops(model, concepts, ref_hw)
        every_step = segmentation * args.steps + joined["rsa"] * rsa_steps + joined["rba"] * (args.steps - rsa_steps)
        ratios = [1 + (every_step + references * math.ceil(args.steps / k)) / (model.plain_step * args.steps)
                  for k in [1] + args.reference_every]
        rows.append((concepts, references, how, segmentation, joined, ratios))
    return model, image, ref_hw, rsa_steps, rows


def render(results, args) -> str:
    percent = lambda flops, plain: f"{flops / 1e12:.3f} ({100 * flops / plain:.1f} %)"  # noqa: E731
    lines = ["## MagicFace arithmetic per step (counted, not timed)", "",
             f"- torch {torch.__version__}, torch.utils.flop_counter on the meta device; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
             f"- {args.steps} steps {SCHEDULER}, RSA until {int(SWITCH_AT * 100)} % of the schedule then RBA, "
             "'paper' layers, one image (uncond and cond rows)", ""]
    lean = " (one per block)" if args.lean_segmentation else ""
    for model, image, ref_hw, rsa_steps, rows in results:
        plain = model.plain_step
        every = "".join(f" every {k} |" for k in args.reference_every)
        lines += [f"### {model.spec.name}, {image}x{image} image, references {ref_hw[0] * 8}x{ref_hw[1] * 8}", "",
                  f"Plain step (UNet on 2 rows): {plain / 1e12:.3f} TFLOP. Segmentation reads "
                  f"{len(model.segmentation)} layers{lean}, RSA/RBA run in {len(model.injection)}. "
                  f"{rsa_steps} RSA and {args.steps - rsa_steps} RBA steps. TFLOP per step (% of a plain step):", "",
                  "| R | references' rows | segmentation | RSA beyond plain | RBA beyond plain "
                  "| arithmetic ratio, references every step |" + every,
                  "|---|---|---|---|---|---|" + "---|" * len(args.reference_every)]
        for concepts, references, how, segmentation, joined, ratios in rows:
            cells = [f"{percent(references, plain)}, {how}", percent(segmentation, plain),
                     percent(joined["rsa"], plain), percent(joined["rba"], plain)] + [f"{r:.2f}x" for r in ratios]
            lines.append(f"| {concepts} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sdxl (full-size layouts)")
    parser.add_argument("--concepts", default="1,2,3,4", help="comma list of concept counts R")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reference-every", default="2,4", help="comma list of K >= 2 for the approximate mode")
    parser.add_argument("--image-size", type=int, default=0, help="square image size (default: SD1.5 512, SDXL 1024)")
    parser.add_argument("--reference-size", type=int, default=0, help="square reference size (default: the image's)")
    parser.add_argument("--lean-segmentation", action="store_true",
                        help="segmentation from the first transformer of each block (segmentation_layers 'one per block')")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    read_sizes_and_counts(parser, args, args.concepts)
    return args


def main(argv=None):
    args = parse_args(argv)
    bootstrap_host("cpu")
    results = [budget(name.strip(), args) for name in args.models.split(",") if name.strip()]
    report = render(results, args)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
