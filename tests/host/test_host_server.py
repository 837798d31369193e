"""The same graphs through a real ComfyUI server (HTTP API)."""
import threading
import time

import numpy as np
import pytest

from harness import txt2img
from test_host_graph import assert_valid_png_result

pytestmark = pytest.mark.server


def test_server_imported_pack_without_errors(comfy_server):
    assert not comfy_server.pack_import_failed(), comfy_server.log_tail()
    names = sorted(n for n in comfy_server.object_info() if n.startswith("MagicFace"))
    print("MagicFace nodes on the server:", names)


def test_server_object_info_lists_tiny_models(comfy_server, tiny_sd15_ckpt, tiny_lora, tiny_controlnet):
    info = comfy_server.object_info()
    required = lambda node, name: info[node]["input"]["required"][name][0]  # noqa: E731
    assert tiny_sd15_ckpt.name in required("CheckpointLoaderSimple", "ckpt_name")
    assert tiny_lora.name in required("LoraLoader", "lora_name")
    assert tiny_controlnet.name in required("ControlNetLoader", "control_net_name")


def test_txt2img_runs_through_server(comfy_server, run_graph, tiny_sd15_ckpt):
    served = assert_valid_png_result(comfy_server.run(txt2img(tiny_sd15_ckpt.name, seed=5, prefix="srv")))
    local = assert_valid_png_result(run_graph(txt2img(tiny_sd15_ckpt.name, seed=5)))
    # same code, same weights, same seed: the server must agree with in-process
    assert np.abs(served.astype(int) - local.astype(int)).mean() < 2.0


def test_server_rejects_invalid_prompt_with_node_errors(comfy_server):
    result = comfy_server.run(txt2img("no_such_model.safetensors"))
    assert not result.ok
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.node_errors["4"]["class_type"] == "CheckpointLoaderSimple"


def test_server_reports_execution_error(comfy_server, comfy_host):
    broken = comfy_host.models_dir / "checkpoints" / "broken_for_server.safetensors"
    broken.write_bytes(b"garbage")
    result = comfy_server.run(txt2img(broken.name))
    assert not result.ok and result.error["type"] == "execution_error"
    assert result.error["node_id"] == "4"


def test_server_interrupt_stops_running_prompt(comfy_server, tiny_sd15_ckpt):
    status, body, _ = comfy_server.submit(txt2img(tiny_sd15_ckpt.name, steps=500))
    assert status == 200, body
    # interrupt once the prompt is executing (not while still queued)
    deadline = time.monotonic() + 120
    while not comfy_server.queue()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    stopper = threading.Timer(0, comfy_server.interrupt)
    stopper.start()
    entry = comfy_server.wait(body["prompt_id"], timeout=120)
    stopper.join()
    events = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events
    assert comfy_server.run(txt2img(tiny_sd15_ckpt.name, seed=6)).ok, "server unusable after interrupt"
