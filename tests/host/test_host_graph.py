"""The in-process graph runner on the tiny checkpoint."""
import numpy as np

from harness import txt2img


def assert_valid_png_result(result, size=128):
    result.raise_for_error()
    assert len(result.images) == 1
    image = result.images[0]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert np.isfinite(image.astype(np.float32)).all()
    assert image.std() > 1.0 and len(np.unique(image)) > 16, "output image is (nearly) constant"
    return image


def test_txt2img_runs_in_process(run_graph, comfy_host, tiny_sd15_ckpt):
    result = run_graph(txt2img(tiny_sd15_ckpt.name, prefix="inproc"))
    assert_valid_png_result(result)
    saved = result.outputs["9"]["images"][0]
    assert (comfy_host.output_dir / saved["subfolder"] / saved["filename"]).is_file()
    assert saved["filename"].endswith(".png")


def test_same_ids_new_inputs_are_not_served_from_cache(run_graph, tiny_sd15_ckpt):
    a = assert_valid_png_result(run_graph(txt2img(tiny_sd15_ckpt.name, seed=1)))
    b = assert_valid_png_result(run_graph(txt2img(tiny_sd15_ckpt.name, seed=2)))
    again = assert_valid_png_result(run_graph(txt2img(tiny_sd15_ckpt.name, seed=1)))
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(int) - again.astype(int)).max() <= 1, "same seed, different image"


def test_invalid_input_reports_node_error(run_graph):
    result = run_graph(txt2img("no_such_model.safetensors"))
    assert not result.ok
    assert "4" in result.node_errors
    assert result.node_errors["4"]["class_type"] == "CheckpointLoaderSimple"
    assert "no_such_model" in str(result.node_errors["4"]["errors"])


def test_unknown_node_class_is_rejected(run_graph, tiny_sd15_ckpt):
    prompt = txt2img(tiny_sd15_ckpt.name)
    prompt["8"]["class_type"] = "NoSuchNodeClass"
    result = run_graph(prompt)
    assert not result.ok and result.error["type"] == "invalid_prompt"
    assert "NoSuchNodeClass" in result.error["message"] and "#8" in result.error["details"]


def test_execution_error_names_failing_node(run_graph, comfy_host):
    broken = comfy_host.models_dir / "checkpoints" / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    result = run_graph(txt2img(broken.name))
    assert not result.ok
    assert result.error["type"] == "execution_error"
    assert result.error["node_id"] == "4"
    assert result.error["node_type"] == "CheckpointLoaderSimple"
