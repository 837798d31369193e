"""MagicFace graphs as users run them: in-process executor and a real ComfyUI server."""
import numpy as np
import pytest

from .graphs import copy_example, folder_concepts_graph, plain_graph, single_concept_graph, write_synthetic_reference
from .mf import PAUL_PROMPT, PAUL_WEIGHTS, PAUL_WORDS


def _image(result):
    result.raise_for_error()
    image = result.images[-1].astype(np.float32)
    assert np.isfinite(image).all() and image.std() > 0
    return image


@pytest.fixture(params=["in-process", "server"])
def runner(request, comfy_host):
    if request.param == "server":
        server = request.getfixturevalue("comfy_server")
        return server.run, server.work_dir / "input"
    return request.getfixturevalue("run_graph"), comfy_host.input_dir


def test_single_concept_graph(runner, tiny_sd15_ckpt):
    run, input_dir = runner
    image, mask = write_synthetic_reference(input_dir)
    prompt = "a photo of a man"
    customised = _image(run(single_concept_graph(tiny_sd15_ckpt.name, image, mask, "man", prompt)))
    plain = _image(run(plain_graph(tiny_sd15_ckpt.name, prompt)))
    assert np.abs(customised - plain).mean() > 0.5


def test_three_concepts_from_folder_graph(runner, tiny_sd15_ckpt, examples_dir):
    run, input_dir = runner
    folder = copy_example(examples_dir, input_dir, "Paul")
    graph = folder_concepts_graph(tiny_sd15_ckpt.name, folder, PAUL_WORDS, PAUL_WORDS, PAUL_WEIGHTS, PAUL_PROMPT)
    customised = _image(run(graph))
    plain = _image(run(plain_graph(tiny_sd15_ckpt.name, PAUL_PROMPT)))
    assert np.abs(customised - plain).mean() > 0.5


def test_missing_concept_word_is_a_clear_error(runner, tiny_sd15_ckpt):
    run, input_dir = runner
    image, mask = write_synthetic_reference(input_dir)
    result = run(single_concept_graph(tiny_sd15_ckpt.name, image, mask, "woman", "a photo of a man"))
    assert not result.ok
    message = result.error.get("exception_message", "")
    assert "[MagicFace Apply] input 'prompt'" in message and "'woman'" in message and "Fix:" in message
    assert result.error.get("node_type") == "MagicFaceApply"
