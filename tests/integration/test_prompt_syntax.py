"""Prompts as ComfyUI users write them: weights in brackets and textual-inversion embeddings,
in the prompt and as a concept's word."""
import logging
from pathlib import Path

import pytest
import safetensors.torch
import torch

from .mf import apply, concepts_from, encode, injected_calls, sample, synthetic_concept

LATENT = (1, 4, 16, 16)


@pytest.fixture
def embeddings():
    """Writes random textual-inversion embeddings (CLIP-L width) where the loader looks for them."""
    import folder_paths
    folder = Path(folder_paths.get_folder_paths("embeddings")[0])
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, vectors: int, seed: int):
        path = folder / f"{name}.safetensors"
        generator = torch.Generator().manual_seed(seed)
        safetensors.torch.save_file({"emb_params": torch.randn(vectors, 768, generator=generator) * 0.02}, str(path))
        written.append(path)
        return f"embedding:{name}"

    yield write
    for path in written:
        path.unlink()


def _concept(words):
    image, mask = synthetic_concept(0)
    return concepts_from([(image, mask, words, 3.0)])


def _run(tiny, negative, words, prompt):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _concept(words), prompt)
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert torch.isfinite(out).all()
    assert set(injected_calls(patch.report(), "rsa")) == {layer.name for layer in patch.plan.injection_layers}
    return patch.plan.concept_tokens, positive


def test_weighted_words_keep_their_positions(tiny, negative):
    plain, _ = _run(tiny, negative, "man", "a photo of a man")
    weighted, positive = _run(tiny, negative, "man", "a photo of a (man:1.3)")
    assert weighted == plain == ((5,),)  # start token, a, photo, of, a, man
    # The positive conditioning is the host's own encoding of the prompt, weights applied.
    assert torch.equal(positive[0][0], encode(tiny[1], "a photo of a (man:1.3)")[0][0])


def test_embedding_in_the_prompt_shifts_the_concept(tiny, negative, embeddings):
    style = embeddings("mf_style", vectors=3, seed=1)
    tokens, _ = _run(tiny, negative, "man", f"{style} a photo of a man")
    assert tokens == ((8,),)  # start, 3 embedding vectors, a, photo, of, a, man


def test_an_embedding_can_be_the_concept_word(tiny, negative, embeddings):
    face = embeddings("mf_face", vectors=2, seed=2)
    other = embeddings("mf_other", vectors=2, seed=3)
    tokens, _ = _run(tiny, negative, face, f"a photo of {face} with {other}")
    assert tokens == ((4, 5),)  # both vectors of the concept's embedding, not the other one's


@pytest.mark.parametrize("sampler_prompt, warned", [
    ("a photo of a man", False),             # the same text encoded by another CLIP Text Encode
    ("a photo of a man, sharp focus", False),  # text after the concept word leaves its token as it is
    ("masterpiece, a photo of a man", True),   # the word moved: MagicFace would read other tokens
])
def test_a_sampler_prompt_other_than_applys_is_reported(tiny, negative, caplog, sampler_prompt, warned):
    model, clip, vae = tiny
    patched, _, patch = apply(model, clip, vae, _concept("man"), "a photo of a man")
    with caplog.at_level(logging.WARNING, logger="MagicFace"):
        sample(patched, encode(clip, sampler_prompt), negative, torch.zeros(LATENT), steps=2)
    calls = patch.report()["calls"]
    assert calls.get(("prompt", "not MagicFace Apply's"), 0) == int(warned)
    assert ("differs from MagicFace Apply's prompt at the concept words (man)" in caplog.text) == warned
