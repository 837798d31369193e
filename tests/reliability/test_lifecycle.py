"""Interrupts, failures, offloading, two patched models and ComfyUI's cache."""
import pytest
import torch

from integration.mf import apply, concepts_from, holds_references, patch_of, sample, schedule, synthetic_concept

LATENT = (1, 4, 16, 16)


def _patched(tiny, seed=0, words="man", prompt="a photo of a man", reference_every=1):
    model, clip, vae = tiny
    image, mask = synthetic_concept(seed)
    return apply(model, clip, vae, concepts_from([(image, mask, words, 3.0)]), prompt,
                 sched=schedule(reference_every=reference_every))


@pytest.mark.parametrize("reference_every", [1, 3])
def test_interrupt_leaves_no_reference_state_and_next_run_is_clean(tiny, negative, reference_every):
    import comfy.model_management as mm
    import comfy.utils
    patched, positive, patch = _patched(tiny, reference_every=reference_every)
    clean = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)

    def interrupt_at_step_two(value, total, *_, **__):  # newer hosts also pass node_id=
        if value == 2:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(interrupt_at_step_two)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    if reference_every == 1:  # newer hosts end the run; the 2024 host keeps only small maps
        assert not holds_references(patch_of(patched))
    # Reused features (the 2024 host keeps them until the next run starts) never reach that run.
    assert torch.equal(sample(patched, positive, negative, torch.zeros(LATENT), steps=4), clean)


class FailingAttention:
    def __init__(self, fail_after):
        self.calls, self.fail_after = 0, fail_after

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra):
        import comfy.ldm.modules.attention as attention
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("simulated failure inside sampling")
        return attention.optimized_attention(q, k, v, extra["n_heads"])


def test_exception_inside_sampling_releases_the_run(tiny, negative):
    model, clip, vae = tiny
    probe = _patched(tiny)[2]
    key = probe.plan.segmentation_layers[0].key
    failing = FailingAttention(fail_after=2)
    other = model.clone()
    other.set_model_attn2_replace(failing, key[0], key[1], key[2])
    image, mask = synthetic_concept(5)
    patched, positive, patch = apply(other, clip, vae, concepts_from([(image, mask, "man", 3.0)]), "a photo of a man")
    with pytest.raises(RuntimeError, match="simulated failure"):
        sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    assert patch_of(patched).active_run() is None
    assert patch.report() is not None and patch.report()["rsa_sigmas"]  # the failed run's statistics survive


def test_offload_and_reload_between_runs(tiny, negative):
    import comfy.model_management as mm
    patched, positive, _ = _patched(tiny)
    first = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    mm.unload_all_models()
    mm.soft_empty_cache()
    assert torch.equal(sample(patched, positive, negative, torch.zeros(LATENT), steps=3), first)


def test_two_patched_models_do_not_share_concepts(tiny, negative):
    man, positive_man, patch_man = _patched(tiny, seed=6)
    hat, positive_hat, patch_hat = _patched(tiny, seed=7, words="hat", prompt="a man with a hat")
    alone = sample(man, positive_man, negative, torch.zeros(LATENT), steps=3)
    sample(hat, positive_hat, negative, torch.zeros(LATENT), steps=3)
    assert torch.equal(sample(man, positive_man, negative, torch.zeros(LATENT), steps=3), alone)
    assert patch_man.report()["concept_names"] == ("man",) and patch_hat.report()["concept_names"] == ("hat",)
    assert patch_man.plan.reference_latents is not patch_hat.plan.reference_latents


def test_comfy_cache_reuses_apply_until_a_concept_changes(graph_runner, comfy_host, tiny_sd15_ckpt):
    from harness.graph import namespace_prompt, validate
    from integration.graphs import single_concept_graph, write_synthetic_reference
    image, mask = write_synthetic_reference(comfy_host.input_dir, seed=21)
    graph = namespace_prompt(single_concept_graph(tiny_sd15_ckpt.name, image, mask, "man", "a photo of a man",
                                                  size=64, steps=2), "cachetest_")

    def executed_nodes(prompt, prompt_id):
        ok, _, outputs, _ = validate(prompt)
        assert ok
        graph_runner.executor.execute(prompt, prompt_id, {}, outputs)
        assert graph_runner.executor.success
        cached = [m[1]["nodes"] for m in graph_runner.executor.status_messages if m[0] == "execution_cached"]
        return set(prompt) - set(cached[0] if cached else [])

    assert "cachetest_9" in executed_nodes(graph, "cache-1")
    assert "cachetest_9" not in executed_nodes(graph, "cache-2")  # unchanged: ComfyUI's cache serves Apply
    _, new_mask = write_synthetic_reference(comfy_host.input_dir, seed=22)
    graph["cachetest_3"]["inputs"]["image"] = new_mask
    assert "cachetest_9" in executed_nodes(graph, "cache-3")  # a changed mask re-runs Apply
