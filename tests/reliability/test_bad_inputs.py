"""Bad input through a real ComfyUI server: a clear error naming node, input and fix, or a correct run.

Never a traceback from inside sampling (an error whose node is the KSampler).
"""
import numpy as np
import pytest
from PIL import Image

from integration.graphs import single_concept_graph, write_synthetic_reference

pytestmark = pytest.mark.server
PROMPT = "a photo of a man"


def _write(input_dir, name, array):
    Image.fromarray(array).save(input_dir / name)
    return name


def _second_concept(graph, words):
    graph["6"] = {"class_type": "MagicFaceConceptLoader", "inputs": {
        "image": ["2", 0], "mask": ["4", 0], "words": words, "weight": 2.0, "reference_prompt": "",
        "previous": ["5", 0]}}
    graph["9"]["inputs"]["concepts"] = ["6", 0]
    return graph


def _case(name, input_dir, ckpt):
    image, mask = write_synthetic_reference(input_dir, seed=11)
    graph = single_concept_graph(ckpt, image, mask, "man", PROMPT, size=64, steps=2)
    if name == "word not in prompt":
        graph["5"]["inputs"]["words"] = "woman"
        return graph, "[MagicFace Apply] input 'prompt': concept word 'woman' is not in the prompt"
    if name == "word claimed twice":
        return _second_concept(graph, "man"), "claimed by concepts 1 and 2"
    if name == "more concepts than words":
        graph["9"]["inputs"]["prompt"] = "a man"
        return _second_concept(graph, "hat"), "concept word 'hat' is not in the prompt"
    if name == "mask of another size":
        graph["3"]["inputs"]["image"] = _write(input_dir, "mf_mask_small.png", np.full((40, 30), 255, np.uint8))
        return graph, None
    if name == "empty mask":
        graph["3"]["inputs"]["image"] = _write(input_dir, "mf_mask_empty.png", np.zeros((96, 80), np.uint8))
        return graph, None
    if name == "RGBA reference":
        rgba = np.random.default_rng(1).integers(0, 255, (96, 80, 4), dtype=np.uint8)
        graph["2"]["inputs"]["image"] = _write(input_dir, "mf_rgba.png", rgba)
        return graph, None
    if name == "greyscale reference":
        grey = np.random.default_rng(2).integers(0, 255, (96, 80), dtype=np.uint8)
        graph["2"]["inputs"]["image"] = _write(input_dir, "mf_grey.png", grey)
        return graph, None
    if name == "batched reference":
        graph["40"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
        graph["5"]["inputs"]["image"] = ["40", 0]
        return graph, None
    if name == "negative weight":
        graph["5"]["inputs"]["weight"] = -1.0
        return graph, "weight"
    if name == "absurd weight":
        graph["5"]["inputs"]["weight"] = 500.0
        return graph, "weight"
    if name == "layers the model lacks":
        graph["8"]["inputs"].update(layers="custom", custom_layers="output_99")
        return graph, "no attention in output_99"
    if name == "latent not divisible by the strides":
        graph["21"]["inputs"].update(width=72, height=88)
        return graph, None
    if name == "empty effect window":
        graph["8"]["inputs"].update(start_at=0.5, switch_at=0.5, end_at=0.5)
        return graph, "[MagicFace Stage Scheduler] input 'end_at'"
    if name == "switch outside the window":
        graph["8"]["inputs"].update(start_at=0.2, switch_at=0.8, end_at=0.6)
        return graph, "[MagicFace Stage Scheduler] input 'switch_at': 0.8 lies outside start_at..end_at"
    if name == "start after end":
        graph["8"]["inputs"].update(start_at=0.7, switch_at=0.5, end_at=0.3)
        return graph, "[MagicFace Stage Scheduler] input 'end_at': start_at 0.7 >= end_at 0.3"
    raise KeyError(name)


CASES = ["word not in prompt", "word claimed twice", "more concepts than words", "mask of another size",
         "empty mask", "RGBA reference", "greyscale reference", "batched reference", "negative weight",
         "absurd weight", "layers the model lacks", "latent not divisible by the strides", "empty effect window",
         "switch outside the window", "start after end"]


def _error_text(result):
    texts = [str(result.error)]
    for node in (result.node_errors or {}).values():
        texts += [str(e) for e in node.get("errors", [])]
    return " ".join(texts)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_matrix(case, comfy_server, tiny_sd15_ckpt):
    graph, expected = _case(case, comfy_server.work_dir / "input", tiny_sd15_ckpt.name)
    result = comfy_server.run(graph)
    if expected is None:
        result.raise_for_error()
        image = result.images[-1].astype(np.float32)
        assert np.isfinite(image).all() and image.std() > 0
        return
    assert not result.ok, f"{case}: expected an error"
    assert (result.error or {}).get("node_type") != "KSampler", f"{case}: error from inside sampling"
    text = _error_text(result)
    assert expected in text, text
    if "[MagicFace" in expected:
        assert "Fix:" in text
