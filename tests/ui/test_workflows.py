"""The example workflows: UI files well formed and equal to their API twins, every twin runs on
the tiny checkpoint, and the three-concept segmentation preview shows the run's own concepts."""
import json

import numpy as np
import pytest

from ui_support import (API_DIR, WORKFLOW_NAMES, api_workflow, hex_rgb, images_by_node, js_palette,
                        pack_module, stage_inputs, tiny_names, ui_workflow)

NODE_FIELDS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
               "widgets_values"}
FRONT_END_ONLY = {"Note", "Reroute", "PrimitiveNode"}
THREE_CONCEPTS = "MagicFace three concepts"
SEGMENTATION_NODES = ("MagicFaceSegmentationPreview", "MagicFaceSegmentationSteps")


def test_every_example_has_a_ui_file_and_an_api_twin():
    expected = {"MagicFace one face", THREE_CONCEPTS, "MagicFace two people", "MagicFace with a LoRA",
                "MagicFace with ControlNet pose", "MagicFace SDXL"}
    assert expected <= set(WORKFLOW_NAMES)
    for name in WORKFLOW_NAMES:
        assert (API_DIR.parent / f"{name}.json").is_file(), f"{name}: no UI-format file"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_file_has_the_front_end_schema(name):
    graph = ui_workflow(name)
    assert graph["version"] == 0.4 and {"groups", "config", "extra"} <= set(graph)
    nodes = {node["id"]: node for node in graph["nodes"]}
    links = {link[0]: link for link in graph["links"]}
    assert graph["last_node_id"] == max(nodes) and graph["last_link_id"] == max(links)
    for node in nodes.values():
        assert NODE_FIELDS <= set(node), f"{name} node {node['id']}: missing {NODE_FIELDS - set(node)}"
    for link_id, origin, origin_slot, target, target_slot, kind in links.values():
        assert link_id in (nodes[origin]["outputs"][origin_slot]["links"] or [])
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    assert sorted(node["order"] for node in nodes.values()) == list(range(len(nodes)))
    assert any(node["type"] == "Note" for node in nodes.values()), f"{name}: no Note telling what to change"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_nodes_do_not_overlap(name):
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui_workflow(name)["nodes"]]  # 30: the title bar above pos
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
            assert not overlap, f"{name}: nodes {a[0]} and {b[0]} overlap"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_twin_equals_ui_graph(name):
    graph, api = ui_workflow(name), json.loads((API_DIR / f"{name}.json").read_text())
    nodes = {str(node["id"]): node for node in graph["nodes"] if node["type"] not in FRONT_END_ONLY}
    assert set(api) == set(nodes)
    links = {link[0]: link for link in graph["links"]}
    for node_id, node in nodes.items():
        assert api[node_id]["class_type"] == node["type"]
        linked = {inp["name"]: [str(links[inp["link"]][1]), links[inp["link"]][2]]
                  for inp in node["inputs"] if inp["link"] is not None}
        inputs = api[node_id]["inputs"]
        assert {k: v for k, v in inputs.items() if isinstance(v, list)} == linked, f"{name} node {node_id}"
        literals = iter(node["widgets_values"])
        for key, value in inputs.items():
            if not isinstance(value, list):
                assert value in literals, f"{name} node {node_id}: {key}={value!r} not in widgets_values order"


def test_preview_palette_matches_web_extension(comfy_host):
    previews = pack_module("MagicFaceSegmentationPreview")
    assert js_palette() == (previews.PALETTE, previews.BACKGROUND)


@pytest.fixture(scope="module")
def names(comfy_host, tiny_models, examples_dir):
    stage_inputs(comfy_host.input_dir, examples_dir)
    return tiny_names(comfy_host.models_dir)


def exact_colours(prompt):
    """Segmentation previews at opacity 1: pure palette colours, so labels can be read back."""
    for node in prompt.values():
        if node["class_type"] in SEGMENTATION_NODES:
            node["inputs"]["opacity"] = 1.0
    return prompt


@pytest.fixture(scope="module")
def runs(run_graph, names):
    """Each example run once on the tiny checkpoint (name -> (prompt, GraphResult))."""
    cache = {}

    def run(name):
        if name not in cache:
            prompt = exact_colours(api_workflow(name, names))
            cache[name] = prompt, run_graph(prompt)
        return cache[name]
    return run


def node_ids(prompt, class_type):
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_twin_runs_on_the_tiny_checkpoint(runs, name):
    prompt, result = runs(name)
    result.raise_for_error()
    per_node = images_by_node(result)
    (saved,) = per_node[node_ids(prompt, "SaveImage")[0]]
    for preview_id in node_ids(prompt, "PreviewImage"):
        frames = per_node[preview_id]
        assert frames, f"{name}: preview node {preview_id} showed nothing"
        source = prompt[prompt[preview_id]["inputs"]["images"][0]]["class_type"]
        for frame in frames:
            if source == "MagicFaceMaskPreview":  # a mask over its square reference, then the legend strip
                assert frame.shape[0] > frame.shape[1]
            else:  # the label map at the image size, then the legend strip
                assert frame.shape[1] == saved.shape[1] and frame.shape[0] > saved.shape[0]
        if source == "MagicFaceMaskPreview":  # one per concept
            assert len(frames) == len(node_ids(prompt, "MagicFaceConceptLoader")), f"{name}: {len(frames)} masks"


def palette_labels(picture, palette, background):
    """Pixels of pure palette colours -> concept index (-1 background); fails on any other colour."""
    colours = np.array([hex_rgb(background)] + [hex_rgb(c) for c in palette])
    match = (picture[:, :, None, :] == colours[None, None]).all(-1)
    assert match.any(-1).all(), "the label map holds colours outside the palette"
    return match.argmax(-1) - 1


def three_concept_labels(prompt, result):
    result.raise_for_error()
    per_node = images_by_node(result)
    (saved,) = per_node[node_ids(prompt, "SaveImage")[0]]
    (preview_id,) = node_ids(prompt, "MagicFaceSegmentationPreview")
    shown = next(i for i in node_ids(prompt, "PreviewImage") if prompt[i]["inputs"]["images"][0] == preview_id)
    palette, background = js_palette()
    return palette_labels(per_node[shown][0][:saved.shape[0]], palette, background)


def test_three_concept_preview_shows_three_concepts_and_background(runs):
    labels = three_concept_labels(*runs(THREE_CONCEPTS))
    assert set(np.unique(labels).tolist()) == {-1, 0, 1, 2}


def test_three_concept_preview_follows_the_concept_words(runs, run_graph, names):
    """Other words -> other attention maps -> another label map: it is the run's own segmentation."""
    labels = three_concept_labels(*runs(THREE_CONCEPTS))
    prompt = exact_colours(api_workflow(THREE_CONCEPTS, names))
    loaders = [prompt[i] for i in node_ids(prompt, "MagicFaceConceptLoader")]
    for loader, words in zip(loaders, ("with", "wearing", "man")):
        loader["inputs"]["words"] = words
    changed = three_concept_labels(prompt, run_graph(prompt))
    assert changed.shape == labels.shape
    assert (changed != labels).mean() > 0.05
