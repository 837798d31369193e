"""Run an API-format workflow on the tiny random checkpoint, in-process.

Used by scripts/demo.sh.  With no --workflow it runs the three-concept example
(workflows/api/MagicFace three concepts.json: man + hat + sunglasses) on the
published example references (--examples: a folder of the published repository's
example concepts, laid out as docs/development.md says), shrunk to what a CPU runs in
seconds; --txt2img runs the plain built-in graph instead.
A workflow file may name its checkpoint "$CHECKPOINT" (or any ckpt_name) and
will get the tiny one.  The pack is loaded by ComfyUI from a custom_nodes
symlink, exactly as for users.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the harness package, not the pack root


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, help="API-format workflow JSON (default: the three-concept demo)")
    parser.add_argument("--out", type=Path, default=REPO / "demo_output", help="work/output directory")
    parser.add_argument("--input-dir", type=Path, help="ComfyUI input directory (images for LoadImage)")
    parser.add_argument("--txt2img", action="store_true", help="run the plain built-in txt2img graph")
    parser.add_argument("--examples", type=Path, default=REPO.parent / "shared" / "data" / "magicface_examples",
                        help="the MagicFace example data (staged into the input dir for the default demo)")
    parser.add_argument("--size", type=int, default=256, help="image size of the built-in graph")
    parser.add_argument("--steps", type=int, default=4)
    return parser.parse_args()


def demo_prompt(args, host, ckpt):
    """The API prompt to run: the given workflow, else the three-concept demo, else txt2img."""
    from harness import load_workflow, txt2img
    if args.workflow:
        return load_workflow(args.workflow, ckpt.name)
    if not args.txt2img and args.examples.is_dir():
        from ui.ui_support import api_workflow, stage_inputs, tiny_names
        stage_inputs(host.input_dir, args.examples)
        print("demo: three concepts (man, hat, sunglasses) from", args.examples)
        return api_workflow("MagicFace three concepts", tiny_names(host.models_dir))
    if not args.txt2img:
        print(f"demo: {args.examples} not found, running the plain txt2img graph", file=sys.stderr)
    return txt2img(ckpt.name, width=args.size, height=args.size, steps=args.steps, prefix="magicface_demo")


def main() -> int:
    args = parse_args()
    from harness import InProcessRunner, bootstrap_in_process
    from harness.host import describe_host
    from harness.tiny_models import write_all

    out = args.out.resolve()
    host = bootstrap_in_process(out / "run", out / "models", args.input_dir)
    if not host.pack_loaded:
        print("warning: ComfyUI could not import the pack (see log above)", file=sys.stderr)
    print(f"host: {describe_host(host.root)}")
    ckpt = write_all(host.models_dir)["checkpoint"]  # reused on later runs
    result = InProcessRunner(host).run(demo_prompt(args, host, ckpt))
    if not result.ok:
        print(f"workflow failed: {result.error}\nnode errors: {result.node_errors}", file=sys.stderr)
        return 1
    for node_id, ui in sorted(result.outputs.items()):
        for item in ui.get("images", []):
            print(f"node {node_id}: wrote {host.output_dir / item.get('subfolder', '') / item['filename']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
