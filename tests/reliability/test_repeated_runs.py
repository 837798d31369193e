"""Twenty consecutive runs of the three-concept workflow do not grow the process's memory."""
import gc

import psutil
import torch

from integration.mf import (PAUL_PROMPT, apply, concepts_from, holds_references, patch_of, paul_concepts, sample,
                            synthetic_concept)

RUNS, WARMUP = 20, 4
# Allocator noise of a CPU torch process over 16 runs; a leaked reference set is far larger
# (one run's reference latents, masks and context are > 2 MB, its per-layer features more).
ALLOWED_GROWTH_MB = 24


def _rss_mb():
    gc.collect()
    return psutil.Process().memory_info().rss / 2 ** 20


def test_twenty_runs_no_memory_growth(tiny, negative, request):
    model, clip, vae = tiny
    try:
        concepts = paul_concepts(request.getfixturevalue("examples_dir"))
    except Exception:  # noqa: BLE001 - no shared data: the same three-concept graph on synthetic references
        concepts = concepts_from([(*synthetic_concept(i), w, 2.0) for i, w in enumerate(("man", "hat", "sunglasses"))])
    # Apply runs once, as ComfyUI's cache does when a workflow is re-queued with a new seed.
    patched, positive, patch = apply(model, clip, vae, concepts, PAUL_PROMPT, reference_size=64)
    rss, outputs = [], []
    for _ in range(RUNS):
        outputs.append(sample(patched, positive, negative, torch.zeros(1, 4, 8, 8), steps=2))
        rss.append(_rss_mb())
        assert not holds_references(patch_of(patched))
    assert all(torch.equal(o, outputs[0]) for o in outputs)
    growth = max(rss[WARMUP:]) - rss[WARMUP - 1]
    print(f"RSS after each run (MB): {[round(r) for r in rss]}")
    assert growth < ALLOWED_GROWTH_MB, f"memory grew {growth:.1f} MB over {RUNS - WARMUP} runs: {rss}"
