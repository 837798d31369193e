"""The attention-map preview shows the run's own attention from a chosen point into each reference."""
import torch

from .mf import apply, concepts_from, node, pack_module, sample, synthetic_concept


def test_attention_map_from_the_runs_attention(tiny, negative):
    model, clip, vae = tiny
    specs = [(*synthetic_concept(8), "man", 3.0), (*synthetic_concept(9), "hat", 2.0)]
    patched, positive, patch = apply(model, clip, vae, concepts_from(specs), "a man with a hat")
    latent = sample(patched, positive, negative, torch.zeros(1, 4, 16, 16), steps=3)
    images = vae.decode(latent)
    record = patch.report()["attention"]
    assert record is not None and record.layer == patch.plan.injection_layers[-1]

    attention_map = node("MagicFaceAttentionMap")
    maps, point = attention_map.attention_map(patch, images, 0.5, 0.5, 0.6)
    assert maps.shape[0] == 2 and point.shape[1:3] == images.shape[1:3]
    assert torch.isfinite(maps).all() and maps.std() > 0
    other, _ = attention_map.attention_map(patch, images, 0.1, 0.9, 0.6)
    assert not torch.equal(maps, other)  # another point looks elsewhere

    # the probabilities the preview draws are the ones the run used: a query's mass on the references is < 1
    height, width = record.hw
    probs = record_probabilities(record, (height // 2) * width + width // 2)
    assert 0 <= float(probs.sum()) <= 1.0 + 1e-5


def record_probabilities(record, index):
    core = pack_module("magicface_attn")
    only = None if record.owner is None else int(record.owner[index])
    if only == -1:
        return torch.zeros(1)
    return core.point_attention_to_references(record.query[index], record.own_keys, record.refs, record.heads,
                                              only_reference=only)
