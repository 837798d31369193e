"""Helpers shared by the workflow and browser tests: example files, tiny-model twins, palette."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from harness import REPO_ROOT, load_workflow

WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
WEB_SCRIPT = REPO_ROOT / "web" / "magicface.js"
WORKFLOW_NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))
# The file names the example workflows' LoadImage nodes expect in ComfyUI's input directory.
EXAMPLE_FILES = {f"magicface_{demo.lower()}_{concept}{suffix}.jpg": (demo, folder, concept)
                 for demo, concepts in {"Paul": ("man", "hat", "sunglasses"), "Monroe": ("woman",)}.items()
                 for concept in concepts for folder, suffix in (("image", ""), ("mask", "_mask"))}
POSE_FILE = "magicface_pose.png"
TEST_SIDE = 128  # the short side of every latent in the tests: the tiny model on CPU
TEST_STEPS = 2   # one RSA step and one RBA step with the default switch


def pack_class(name: str):
    """A node class as the running ComfyUI host registered it (needs the comfy_host fixture)."""
    return sys.modules["nodes"].NODE_CLASS_MAPPINGS[name]


def pack_module(name: str):
    """The pack module defining a node class, as ComfyUI imported it."""
    return sys.modules[pack_class(name).__module__]


def stage_inputs(input_dir: Path, examples_dir: Path) -> None:
    """Copy the example references into ComfyUI's input dir and draw a stick-figure pose image."""
    from PIL import Image, ImageDraw
    input_dir.mkdir(parents=True, exist_ok=True)
    for name, (demo, folder, concept) in EXAMPLE_FILES.items():
        shutil.copyfile(examples_dir / demo / folder / f"{concept}.jpg", input_dir / name)
    pose = Image.new("RGB", (512, 512), "black")
    draw = ImageDraw.Draw(pose)
    joints = {"head": (256, 110), "neck": (256, 170), "hip": (256, 320), "l_hand": (170, 300),
              "r_hand": (342, 300), "l_foot": (200, 470), "r_foot": (312, 470)}
    for a, b, colour in (("head", "neck", "red"), ("neck", "hip", "orange"), ("neck", "l_hand", "green"),
                         ("neck", "r_hand", "cyan"), ("hip", "l_foot", "blue"), ("hip", "r_foot", "magenta")):
        draw.line([joints[a], joints[b]], fill=colour, width=8)
    pose.save(input_dir / POSE_FILE)


def tiny_names(models_dir: Path) -> dict:
    """Input name -> the file of the tiny model of that kind (whatever the generator version)."""
    pick = lambda kind: sorted(p.name for p in (models_dir / kind).glob("tiny_*.safetensors"))[0]  # noqa: E731
    return {"ckpt_name": pick("checkpoints"), "lora_name": pick("loras"), "control_net_name": pick("controlnet")}


def sized_for_tests(prompt: dict, names: dict) -> dict:
    """Shrink an example workflow to what the tiny model runs quickly on CPU: small latent, few steps."""
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        for key, value in names.items():
            if key in inputs:
                inputs[key] = value
        if kind == "EmptyLatentImage":
            scale = TEST_SIDE / min(inputs["width"], inputs["height"])
            inputs["width"], inputs["height"] = (max(64, round(inputs[k] * scale / 64) * 64) for k in ("width", "height"))
        elif kind == "KSampler":
            inputs["steps"] = TEST_STEPS
        elif kind == "MagicFaceApply":
            inputs["reference_size"] = TEST_SIDE
    return prompt


def api_workflow(name: str, names: dict) -> dict:
    return sized_for_tests(load_workflow(API_DIR / f"{name}.json", names["ckpt_name"]), names)


def ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def js_palette() -> tuple:
    """(PALETTE, BACKGROUND) as written in web/magicface.js."""
    text = WEB_SCRIPT.read_text()
    palette = re.search(r"const PALETTE = \[([^\]]*)\]", text).group(1)
    background = re.search(r"const BACKGROUND = \"(#[0-9a-fA-F]{6})\"", text).group(1)
    return tuple(re.findall(r"\"(#[0-9a-fA-F]{6})\"", palette)), background


def hex_rgb(colour: str) -> tuple:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def images_by_node(result) -> dict:
    """GraphResult.images split per output node id (they come in sorted node-id order)."""
    per_node, images = {}, iter(result.images)
    for node_id in sorted(result.outputs):
        per_node[node_id] = [next(images) for _ in result.outputs[node_id].get("images", [])]
    return per_node
