"""The pack opens only files the graph names inside ComfyUI's input folder, never unpickles or evaluates."""
import re
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("nodes", "comfy_glue", "magicface_attn")
FORBIDDEN = re.compile(r"\b(torch\.load|pickle|eval|exec|compile|__import__|subprocess|os\.system)\s*\(|import pickle")


def test_no_unpickling_or_evaluation_in_product_code():
    offenders = []
    for folder in PRODUCT_DIRS:
        for path in (PACK_ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if FORBIDDEN.search(line):
                    offenders.append(f"{path.relative_to(PACK_ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize("folder,name", [("..", "man"), ("Paul", "../../secret"), ("/etc", "passwd"),
                                         ("Paul", "/etc/passwd")])
def test_folder_loader_refuses_paths_outside_input(comfy_host, folder, name):
    import nodes
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    verdict = loader.VALIDATE_INPUTS(folder=folder, name=name)
    assert verdict is not True and "outside ComfyUI's input directory" in verdict
    with pytest.raises(ValueError, match="MagicFace Concept From Folder"):
        loader().load(folder, name, "man", 3.0)


def test_folder_loader_reads_a_reference_code_folder(comfy_host, examples_dir):
    import shutil

    import nodes
    target = comfy_host.input_dir / "Monroe"
    if not target.exists():
        shutil.copytree(examples_dir / "Monroe", target)
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    assert "Monroe" in loader.INPUT_TYPES()["required"]["folder"][0]
    concepts, image, mask = loader().load("Monroe", "woman", "", 3.0)
    concept = concepts.concepts[0]
    assert concept.words == "woman" and concept.reference_prompt == "a woman"
    assert tuple(concept.mask.shape) == tuple(concept.image.shape[:2]) and 0 < float(concept.mask.mean()) < 1
