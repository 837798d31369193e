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


def _set(node, **inputs):
    """An edit that sets inputs of one node of the graph."""
    def edit(graph, input_dir):
        graph[node]["inputs"].update(inputs)
        return graph
    return edit


def _image(node, filename, make_pixels):
    """An edit that points a LoadImage / LoadImageMask node at a new file of the given pixels."""
    def edit(graph, input_dir):
        graph[node]["inputs"]["image"] = _write(input_dir, filename, make_pixels())
        return graph
    return edit


def _random_pixels(seed, shape):
    return lambda: np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _batched_reference(graph, input_dir):
    graph["40"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
    graph["5"]["inputs"]["image"] = ["40", 0]
    return graph


def _more_concepts_than_words(graph, input_dir):
    graph["9"]["inputs"]["prompt"] = "a man"
    return _second_concept(graph, "hat")


# name -> (edit of the one-concept graph, expected error text or None for a correct run)
BAD_INPUTS = {
    "word not in prompt": (_set("5", words="woman"),
                           "[MagicFace Apply] input 'prompt': concept word 'woman' is not in the prompt"),
    "word claimed twice": (lambda graph, _: _second_concept(graph, "man"), "claimed by concepts 1 and 2"),
    "more concepts than words": (_more_concepts_than_words, "concept word 'hat' is not in the prompt"),
    "mask of another size": (_image("3", "mf_mask_small.png", lambda: np.full((40, 30), 255, np.uint8)), None),
    "empty mask": (_image("3", "mf_mask_empty.png", lambda: np.zeros((96, 80), np.uint8)), None),
    "RGBA reference": (_image("2", "mf_rgba.png", _random_pixels(1, (96, 80, 4))), None),
    "greyscale reference": (_image("2", "mf_grey.png", _random_pixels(2, (96, 80))), None),
    "batched reference": (_batched_reference, None),
    "negative weight": (_set("5", weight=-1.0), "weight"),
    "absurd weight": (_set("5", weight=500.0), "weight"),
    "layers the model lacks": (_set("8", layers="custom", custom_layers="output_99"), "no attention in output_99"),
    "latent not divisible by the strides": (_set("21", width=72, height=88), None),
    "empty effect window": (_set("8", start_at=0.5, switch_at=0.5, end_at=0.5),
                            "[MagicFace Stage Scheduler] input 'end_at'"),
    "switch outside the window": (_set("8", start_at=0.2, switch_at=0.8, end_at=0.6),
                                  "[MagicFace Stage Scheduler] input 'switch_at': 0.8 lies outside start_at..end_at"),
    "start after end": (_set("8", start_at=0.7, switch_at=0.5, end_at=0.3),
                        "[MagicFace Stage Scheduler] input 'end_at': start_at 0.7 >= end_at 0.3"),
}
CASES = list(BAD_INPUTS)


def _case(name, input_dir, ckpt):
    image, mask = write_synthetic_reference(input_dir, seed=11)
    graph = single_concept_graph(ckpt, image, mask, "man", PROMPT, size=64, steps=2)
    edit, expected = BAD_INPUTS[name]
    return edit(graph, input_dir), expected


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
