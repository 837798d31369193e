"""How well the estimated concept masks match drawn ones: IoU against the published example masks.

    python bench/mask_quality.py --examples <folder> --ckpt /path/to/v1-5-pruned-emaonly.safetensors
    python bench/mask_quality.py --examples <folder> --size 128 --limit 3   # the tiny random model (smoke)

--examples: a folder laid out as the published MagicFace examples (<set>/image/<word>.jpg and
<set>/mask/<word>.jpg). For every reference it runs MagicFace Apply on a Concept Loader without
a mask (reference prompt "a <word>", the loader's default) and compares the mask Apply put in
its plan with the drawn one (both binarised at 0.5, over the picture), beside the "whole image"
mask a concept without any mask used to get. Without --ckpt the model is the test suite's tiny
random checkpoint, whose masks mean nothing: that run only shows that the bench works.
"""
import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test harness bootstraps the ComfyUI host
sys.path.insert(0, str(REPO_ROOT / "bench"))

from pipeline_models import glue  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, required=True, help="folder of <set>/image and <set>/mask")
    parser.add_argument("--ckpt", type=Path, help="checkpoint file (default: the tiny random SD1.5 model)")
    parser.add_argument("--size", type=int, default=0, help="reference size (0: the model's native size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N references (0: all)")
    parser.add_argument("--out", type=Path, help="write the table here as well (markdown)")
    return parser.parse_args()


def load_picture(path: Path, mode: str) -> torch.Tensor:
    with Image.open(path) as picture:
        return torch.from_numpy(np.asarray(picture.convert(mode), dtype=np.float32) / 255.0)


def examples(folder: Path):
    """(set name, word, image (H, W, 3), drawn mask (H, W)) of every reference with a mask."""
    for image_path in sorted(folder.glob("*/image/*")):
        mask_path = next(iter(sorted(image_path.parents[1].glob(f"mask/{image_path.stem}.*"))), None)
        if mask_path is not None:
            yield image_path.parents[1].name, image_path.stem, load_picture(image_path, "RGB"), load_picture(mask_path, "L")


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def load_model(args, work: Path):
    from harness import bootstrap_in_process
    from harness.tiny_models import write_all
    host = bootstrap_in_process(work / "run", work / "models")
    import folder_paths  # ComfyUI's, importable once the host is up
    import nodes
    if args.ckpt is None:
        ckpt = write_all(host.models_dir)["checkpoint"]
    else:
        ckpt = args.ckpt.resolve()
        folder_paths.add_model_folder_path("checkpoints", str(ckpt.parent))
    return nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(ckpt.name)[:3], ckpt.name


def estimated_mask(model, clip, vae, image, word, args):
    """The mask MagicFace Apply uses for a concept given without one, over the picture."""
    import nodes
    loader, apply = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptLoader"](), nodes.NODE_CLASS_MAPPINGS["MagicFaceApply"]()
    concepts = loader.load(image[None], word, 3.0)[0]
    schedule = nodes.NODE_CLASS_MAPPINGS["MagicFaceStageScheduler"]().schedule(
        0.42, 0.0, 1.0, "paper", "", 0.0, True, "area")[0]
    patch = apply.apply(model, clip, vae, f"a photo of a {word}", concepts=concepts, schedule=schedule,
                        seed=args.seed, reference_size=args.size)[2]
    frame = patch.plan.reference_masks[0]
    return glue("reference_frame").unfitted(frame[..., None], image.shape[:2])[..., 0]


def render(rows, model_name, args) -> str:
    auto, whole = (float(np.mean([row[i] for row in rows])) for i in (2, 3))
    lines = [f"Estimated masks against the published ones ({model_name}, reference size {args.size or 'native'}, "
             f"seed {args.seed}, {datetime.date.today()}, torch {torch.__version__})", "",
             "| set | word | IoU estimated | IoU whole image | drawn mask covers |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {w} | {a:.3f} | {b:.3f} | {c:.0%} |" for s, w, a, b, c in rows]
    lines += [f"| **mean** | {len(rows)} references | **{auto:.3f}** | {whole:.3f} | |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as work, torch.inference_mode():
        (model, clip, vae), model_name = load_model(args, Path(work))
        rows = []
        for number, (set_name, word, image, drawn) in enumerate(examples(args.examples)):
            if args.limit and number == args.limit:
                break
            drawn_on = drawn > 0.5
            estimate = estimated_mask(model, clip, vae, image, word, args) > 0.5
            rows.append((set_name, word, iou(estimate, drawn_on), iou(torch.ones_like(drawn_on), drawn_on),
                         drawn_on.float().mean().item()))
    if not rows:
        print(f"no <set>/image and <set>/mask pairs under {args.examples}", file=sys.stderr)
        return 1
    table = render(rows, model_name, args)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
