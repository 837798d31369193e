"""Unusual inputs through a real ComfyUI server: references of extreme shapes, a tiny reference,
linked and escaping concept folders, every Stage Scheduler range error, and weight 0."""

import numpy as np
import pytest
from PIL import Image

from integration.graphs import folder_concepts_graph, plain_graph, single_concept_graph

pytestmark = pytest.mark.server
PROMPT = "a photo of a man"
REFERENCE_SIZE = 512  # the frame the long references are fitted into without any resampling


def _save(input_dir, name, array) -> str:
    Image.fromarray(array).save(input_dir / name)
    return name


def _run_images(server, graph):
    return server.run(graph).raise_for_error().images[-1]


def _concept_graph(ckpt, image, mask, **apply_inputs):
    graph = single_concept_graph(ckpt, image, mask, "man", PROMPT, size=64, steps=2)
    graph["9"]["inputs"].update(apply_inputs)
    return graph


def _long_reference(shape, seed=5):
    """A random picture of `shape` (H, W) and a mask on its middle third."""
    image = (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 3: 2 * shape[0] // 3 + 1, shape[1] // 3: 2 * shape[1] // 3 + 1] = 255
    return image, mask


def _padded_by_hand(image, mask):
    """The long reference centred in a square of its longer side: edges repeated, the mask's padding 0."""
    height, width = mask.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pads = ((top, side - height - top), (left, side - width - left))
    return np.pad(image, (*pads, (0, 0)), mode="edge"), np.pad(mask, pads)


@pytest.mark.parametrize("shape", [(32, 512), (512, 32)], ids=["512x32", "32x512"])
def test_a_long_reference_is_fitted_not_squashed(comfy_server, tiny_sd15_ckpt, shape):
    """The pack's fit of a 512x32 (32x512) reference gives exactly the run of the same picture padded
    to a square by hand, so its rows carry no distortion; squashing it to the square changes the run."""
    input_dir, ckpt = comfy_server.work_dir / "input", tiny_sd15_ckpt.name
    image, mask = _long_reference(shape)
    padded_image, padded_mask = _padded_by_hand(image, mask)
    squashed = np.asarray(Image.fromarray(image).resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.BICUBIC))
    squashed_mask = np.asarray(Image.fromarray(mask).resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.NEAREST))
    tag = f"{shape[0]}x{shape[1]}"
    runs = {}
    for name, (picture, picture_mask) in {"long": (image, mask), "padded": (padded_image, padded_mask),
                                         "squashed": (squashed, squashed_mask)}.items():
        files = (_save(input_dir, f"mf_{tag}_{name}.png", picture), _save(input_dir, f"mf_{tag}_{name}_mask.png", picture_mask))
        runs[name] = _run_images(comfy_server, _concept_graph(ckpt, *files, reference_size=REFERENCE_SIZE))
    assert np.array_equal(runs["long"], runs["padded"])
    assert not np.array_equal(runs["long"], runs["squashed"])


def test_a_tiny_reference_runs_and_is_warned_about_in_the_log(comfy_server, tiny_sd15_ckpt):
    input_dir = comfy_server.work_dir / "input"
    image = _save(input_dir, "mf_8x8.png", (np.random.default_rng(8).random((8, 8, 3)) * 255).astype(np.uint8))
    # RGB: ComfyUI 0.33's LoadImage (PyAV) cannot read an 8x8 greyscale PNG
    mask = _save(input_dir, "mf_8x8_mask.png", np.full((8, 8, 3), 255, np.uint8))
    _run_images(comfy_server, _concept_graph(tiny_sd15_ckpt.name, image, mask))
    assert "[MagicFace Concept Loader] the reference image is 8x8 px" in comfy_server.log_text()


def _concept_folder(root):
    """A concept folder as Concept From Folder expects: image/man.png and mask/man.png."""
    image, mask = _long_reference((96, 80), seed=9)
    for sub, picture in (("image", image), ("mask", mask)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(root / sub / "man.png")
    return root


def _errors(result) -> list:
    """Every error the server reported: (input it names, full text)."""
    found = []
    for node in (result.node_errors or {}).values():
        for error in node.get("errors", []):
            named = (error.get("extra_info") or {}).get("input_name")
            found.append((named, f"{error.get('message')} {error.get('details')}"))
    if result.error and result.error.get("type") == "execution_error":
        found.append((None, str(result.error.get("exception_message"))))
    return found


def _folder_graph(ckpt, folder, name="man"):
    return folder_concepts_graph(ckpt, folder, [name], ["man"], [3.0], PROMPT, size=64, steps=2)


def test_a_linked_concept_folder_is_offered_and_runs(comfy_server, tiny_sd15_ckpt, tmp_path):
    link = comfy_server.work_dir / "input" / "mf_linked_dataset"
    if not link.exists():
        link.symlink_to(_concept_folder(tmp_path / "dataset"), target_is_directory=True)
    offered = comfy_server.object_info()["MagicFaceConceptFromFolder"]["input"]["required"]["folder"][0]
    assert "mf_linked_dataset" in offered
    _run_images(comfy_server, _folder_graph(tiny_sd15_ckpt.name, "mf_linked_dataset"))


@pytest.mark.parametrize("folder, name, blamed", [
    ("../escape", "man", "folder"), ("/etc", "man", "folder"),
    ("mf_plain_folder", "../../secret", "name"), ("mf_plain_folder", "/etc/passwd", "name")])
def test_paths_out_of_the_input_folder_are_refused_naming_their_input_once(comfy_server, tiny_sd15_ckpt,
                                                                          folder, name, blamed):
    _concept_folder(comfy_server.work_dir / "input" / "mf_plain_folder")
    result = comfy_server.run(_folder_graph(tiny_sd15_ckpt.name, folder, name))
    assert not result.ok
    texts = " ".join(text for _, text in _errors(result))
    assert texts.count("input '") == 1 and f"input '{blamed}'" in texts, texts
    assert "Fix:" in texts


SCHEDULER, MASK = ("8", "MagicFace Stage Scheduler"), ("4", "MagicFace Concept Mask")
RANGES = [  # (graph node id, node title), input, bad value, its range
    (SCHEDULER, "switch_at", 1.5, (0.0, 1.0)), (SCHEDULER, "start_at", -0.1, (0.0, 1.0)),
    (SCHEDULER, "end_at", 2.0, (0.0, 1.0)), (SCHEDULER, "reference_every", -1, (0, 10)),
    (SCHEDULER, "ca_scale", 1.5, (0.0, 1.0)), (MASK, "grow", 500, (-128, 128)), (MASK, "feather", -1.0, (0.0, 64.0))]
SCHEDULER_ORDER = [  # the pack's own checks of the three fractions together
    ({"start_at": 0.7, "switch_at": 0.5, "end_at": 0.3}, "end_at", "start_at 0.7 >= end_at 0.3"),
    ({"start_at": 0.2, "switch_at": 0.8, "end_at": 0.6}, "switch_at", "0.8 lies outside start_at..end_at (0.2..0.6)")]


def _result_with(server, ckpt, node_id="8", **inputs):
    input_dir = server.work_dir / "input"
    image, mask = _long_reference((96, 80), seed=3)
    files = (_save(input_dir, "mf_sched.png", image), _save(input_dir, "mf_sched_mask.png", mask))
    graph = _concept_graph(ckpt, *files)
    graph[node_id]["inputs"].update(inputs)
    return server.run(graph)


@pytest.mark.parametrize("node, name, value, limits", RANGES, ids=[r[1] for r in RANGES])
def test_range_errors_name_the_input_its_range_and_the_value(comfy_server, tiny_sd15_ckpt, node, name, value, limits):
    """The host's validation reports it where it checks the node (newer hosts); the 2024 host
    validates only nodes reached through required inputs, and there the node's own check does."""
    errors = _errors(_result_with(comfy_server, tiny_sd15_ckpt.name, node[0], **{name: value}))
    assert len(errors) == 1, errors
    named, text = errors[0]
    low, high = limits
    by_host = named == name and (f"smaller than min of {low}" in text or f"bigger than max of {high}" in text)
    by_node = (f"[{node[1]}] input '{name}': {value} is outside its range {low}..{high}" in text
               and "Fix:" in text)
    assert (by_host or by_node) and str(value) in text, errors


@pytest.mark.parametrize("inputs, blamed, expected", SCHEDULER_ORDER, ids=["start after end", "switch outside"])
def test_scheduler_order_errors_blame_one_input(comfy_server, tiny_sd15_ckpt, inputs, blamed, expected):
    errors = _errors(_result_with(comfy_server, tiny_sd15_ckpt.name, **inputs))
    assert len(errors) == 1, errors
    text = errors[0][1]
    assert f"[MagicFace Stage Scheduler] input '{blamed}'" in text and expected in text and "Fix:" in text, text


def _weight_run(server, ckpt, weight, semantic_cfg, empty_mask=False):
    input_dir = server.work_dir / "input"
    image, mask = _long_reference((96, 80), seed=4)
    mask = np.zeros_like(mask) if empty_mask else mask
    tag = "empty" if empty_mask else "masked"
    files = (_save(input_dir, "mf_w.png", image), _save(input_dir, f"mf_w_{tag}.png", mask))
    graph = _concept_graph(ckpt, *files)
    graph["5"]["inputs"]["weight"] = weight
    graph["8"]["inputs"]["semantic_cfg"] = semantic_cfg
    return _run_images(server, graph)


def test_weight_zero_means_what_the_tooltip_says(comfy_server, tiny_sd15_ckpt):
    """Weight 0 takes the reference out of the attention, exactly as an empty mask does; the word
    still drives semantic CFG; with semantic CFG off the output is plain sampling's, bit for bit."""
    ckpt = tiny_sd15_ckpt.name
    plain = _run_images(comfy_server, plain_graph(ckpt, PROMPT, size=64, steps=2))
    assert np.array_equal(_weight_run(comfy_server, ckpt, 0.0, semantic_cfg=False), plain)
    guided = _weight_run(comfy_server, ckpt, 0.0, semantic_cfg=True)
    assert np.array_equal(guided, _weight_run(comfy_server, ckpt, 3.0, semantic_cfg=True, empty_mask=True))
    assert not np.array_equal(guided, plain)
    assert not np.array_equal(guided, _weight_run(comfy_server, ckpt, 3.0, semantic_cfg=True))
