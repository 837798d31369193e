"""Reference mode IS the published MagicFace: whole official runs replayed step by step.

Every run listed in the vectors' manifest is replayed through the pack's nodes and ComfyUI's
sampling code (see official_e2e.py), free-running and teacher-forced (each step from the
official latent before it), and compared with the official latent after every step, x0_last
and the segmentation. $MAGICFACE_E2E_VECTORS points at another set of the same layout.
"""
import os

import pytest
import torch

from . import official_e2e as e2e

if not (e2e.E2E_DIR / "manifest.json").is_file():
    pytest.skip(f"official end-to-end vectors not found at {e2e.E2E_DIR} (expected ../shared/testdata/"
                "official_e2e beside the repo, or set MAGICFACE_E2E_VECTORS)", allow_module_level=True)

FREE_RUNNING_TOLERANCE = 1e-4   # relative L2, every step's latent and x0_last
ONE_STEP_TOLERANCE = 1e-5       # relative L2 of each teacher-forced step
RUNS = e2e.manifest()["runs"]
REPLAYED = set()
AGREEMENT = {}  # (run, mode) -> per-step relative L2, written to $MAGICFACE_ARTIFACTS


@pytest.fixture(scope="module")
def unet(comfy_host):
    return e2e.recorded_unet()


@pytest.fixture(scope="module", autouse=True)
def replay_count(request):
    yield
    line = f"e2e: replayed {len(REPLAYED)} of {len(RUNS)} runs"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)
    _write_agreement()


def _write_agreement():
    folder = os.environ.get("MAGICFACE_ARTIFACTS")
    if not folder or not AGREEMENT:
        return
    lines = ["run\tmode\tstep\trelative_l2"]
    for (run, mode), errors in sorted(AGREEMENT.items()):
        lines += [f"{run}\t{mode}\t{step}\t{error:.3e}" for step, error in enumerate(errors)]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "official_e2e_agreement.tsv"), "w") as out:
        out.write("\n".join(lines) + "\n")


def _setup(run, unet, settings=None):
    """(model, positive, negative, patch) of a run; patch None for a plain run."""
    if run.is_magicface:
        return e2e.patched_model(run, unet, settings or e2e.Settings.of(run))
    assert run.meta["kind"] == "plain", f"{run.name}: unknown run kind {run.meta['kind']!r}"
    hidden = run.tensors["encoder_hidden_states"]
    return unet, [[hidden[1][None].clone(), {}]], [[hidden[0][None].clone(), {}]], None


def _assert_segmentation(run, replay):
    if not run.is_magicface:
        return
    for step, labels in enumerate(replay.labels):
        differing = int((labels.cpu() != e2e.official_labels(run, step)).sum())
        assert differing <= e2e.near_tie_pixels(run, step), \
            f"{run.name} step {step}: {differing} pixels of the segmentation differ"


def test_recorded_unet_forward_is_the_official_one(unet):
    """The loading is right before any MagicFace: one recorded UNet call, through ComfyUI's UNet."""
    from safetensors.torch import load_file
    forward = load_file(str(e2e.E2E_DIR / "unet_forward.safetensors"))
    with torch.no_grad():
        eps = unet.model.diffusion_model(forward["x"], timesteps=forward["t"].float(), context=forward["context"])
    assert e2e.relative_l2(eps, forward["eps"]) < ONE_STEP_TOLERANCE


@pytest.mark.parametrize("name", RUNS)
def test_free_running_replay(unet, name):
    run = e2e.load_run(name)
    replay = e2e.free_running(run, *_setup(run, unet), unet)
    errors = [e2e.relative_l2(replay.latents[i], run.tensors["latents"][i]) for i in range(len(replay.latents))]
    AGREEMENT[(name, "free-running")] = errors
    assert len(errors) == int(run.meta["steps"])
    worst = max(range(len(errors)), key=errors.__getitem__)
    assert errors[worst] < FREE_RUNNING_TOLERANCE, f"{name}: step {worst} off by {errors[worst]:.2e}"
    assert e2e.relative_l2(replay.x0_last, run.tensors["x0_last"]) < FREE_RUNNING_TOLERANCE
    _assert_segmentation(run, replay)
    REPLAYED.add(name)


@pytest.mark.parametrize("name", [n for n in RUNS if e2e.load_run(n).is_magicface])
def test_teacher_forced_replay(unet, name):
    run = e2e.load_run(name)
    replay = e2e.teacher_forced(run, *_setup(run, unet), unet)
    errors = [e2e.relative_l2(replay.latents[i], run.tensors["latents"][i]) for i in range(len(replay.latents))]
    AGREEMENT[(name, "teacher-forced")] = errors
    worst = max(range(len(errors)), key=errors.__getitem__)
    assert errors[worst] < ONE_STEP_TOLERANCE, f"{name}: step {worst} off by {errors[worst]:.2e}"
    _assert_segmentation(run, replay)


def test_every_listed_run_was_replayed():
    assert REPLAYED == set(RUNS), f"listed but not replayed: {sorted(set(RUNS) - REPLAYED)}"


# --- the comparison can fail: one setting moved breaks it --------------------------------------
FIRST_MAGICFACE_RUN = next(n for n in RUNS if e2e.load_run(n).is_magicface)


def _worst_one_step_error(unet, settings, steps):
    run = e2e.load_run(FIRST_MAGICFACE_RUN)
    replay = e2e.teacher_forced(run, *_setup(run, unet, settings), unet, steps=steps)
    return max(e2e.relative_l2(replay.latents[i], run.tensors["latents"][i]) for i in range(steps))


@pytest.mark.parametrize("move", ["weight", "layer"])
def test_moving_one_setting_breaks_the_replay(unet, move):
    """Two teacher-forced steps of the first MagicFace run, with its weight lowered by a fifth or
    its first injection layer left out, no longer agree with the official steps."""
    settings = e2e.Settings.of(e2e.load_run(FIRST_MAGICFACE_RUN))
    if move == "weight":
        settings.weights[0] *= 0.8
    else:
        settings.layer_idx = settings.layer_idx[1:]
    assert _worst_one_step_error(unet, settings, steps=2) > ONE_STEP_TOLERANCE
