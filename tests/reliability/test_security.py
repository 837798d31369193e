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


@pytest.mark.parametrize("folder", ["..", "/etc", "Paul/../..", ""])
def test_folder_loader_refuses_folders_it_does_not_list(comfy_host, folder):
    import nodes
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    verdict = loader.VALIDATE_INPUTS(folder=folder)
    assert verdict is not True and "input 'folder'" in verdict and "not a concept folder" in verdict
    with pytest.raises(ValueError, match="input 'folder'"):
        loader().load(folder, "man", "man", 3.0)


@pytest.mark.parametrize("name", ["../../secret", "/etc/passwd", "..", "a\\b"])
def test_folder_loader_blames_the_name_for_a_path_in_it(comfy_host, examples_dir, name):
    import nodes
    _monroe_folder(comfy_host, examples_dir)
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    assert loader.VALIDATE_INPUTS(folder="Monroe") is True
    with pytest.raises(ValueError, match="input 'name'.*not a plain file name"):
        loader().load("Monroe", name, "woman", 3.0)


def test_a_linked_folder_is_listed_and_opened_but_its_files_stay_inside(comfy_host, examples_dir, tmp_path):
    """A folder of input/ that is a link (a shared dataset) is listed and loads; a link inside its
    image/ folder that leads out of it is refused, naming 'name'."""
    import shutil

    import nodes
    dataset = tmp_path / "dataset"
    shutil.copytree(examples_dir / "Monroe", dataset)
    link = comfy_host.input_dir / "LinkedMonroe"
    if not link.exists():
        link.symlink_to(dataset, target_is_directory=True)
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    assert "LinkedMonroe" in loader.INPUT_TYPES()["required"]["folder"][0]
    assert loader.VALIDATE_INPUTS(folder="LinkedMonroe") is True
    assert loader().load("LinkedMonroe", "woman", "", 3.0)[0].concepts[0].words == "woman"
    outside = tmp_path / "elsewhere.jpg"
    shutil.copyfile(examples_dir / "Monroe" / "image" / "woman.jpg", outside)
    (dataset / "image" / "escape.jpg").symlink_to(outside)
    shutil.copyfile(examples_dir / "Monroe" / "mask" / "woman.jpg", dataset / "mask" / "escape.jpg")
    with pytest.raises(ValueError, match="input 'name'.*outside 'LinkedMonroe'"):
        loader().load("LinkedMonroe", "escape", "woman", 3.0)
    link.unlink()


def _monroe_folder(comfy_host, examples_dir):
    import shutil
    target = comfy_host.input_dir / "Monroe"
    if not target.exists():
        shutil.copytree(examples_dir / "Monroe", target)


def test_folder_loader_reads_a_reference_code_folder(comfy_host, examples_dir):
    import nodes
    _monroe_folder(comfy_host, examples_dir)
    loader = nodes.NODE_CLASS_MAPPINGS["MagicFaceConceptFromFolder"]
    assert "Monroe" in loader.INPUT_TYPES()["required"]["folder"][0]
    concepts, image, mask = loader().load("Monroe", "woman", "", 3.0)
    concept = concepts.concepts[0]
    assert concept.words == "woman" and concept.reference_prompt == "a woman"
    assert tuple(concept.mask.shape) == tuple(concept.image.shape[:2]) and 0 < float(concept.mask.mean()) < 1
