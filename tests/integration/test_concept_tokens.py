"""Concept words located with each model family's real ComfyUI tokenizer.

The tokenizers pad differently: SD1 and SDXL's CLIP-L pad a chunk with the end token, SD2
and SDXL's CLIP-G with id 0. A concept's tokens must be the word's own, wherever it stands in
the prompt, with no end or padding token taken along.
"""
import importlib

import pytest

from .mf import pack_module

FAMILIES = ["sd1", "sd2", "sdxl-l", "sdxl-g"]


def _module(*names):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(names)


@pytest.fixture(scope="module")
def tokenizers(comfy_host):
    """family -> (text -> ComfyUI token structure), each family's tokenizer on its own."""
    sd1 = _module("comfy.sd1_clip").SD1Tokenizer()
    sd2 = _module("comfy.text_encoders.sd2_clip", "comfy.sd2_clip").SD2Tokenizer()
    sdxl = _module("comfy.sdxl_clip").SDXLTokenizer()
    return {
        "sd1": sd1.tokenize_with_weights,
        "sd2": sd2.tokenize_with_weights,
        "sdxl-l": lambda text: {"l": sdxl.tokenize_with_weights(text)["l"]},
        "sdxl-g": lambda text: {"g": sdxl.tokenize_with_weights(text)["g"]},
    }


def _ids(tokenize, text):
    return [int(t[0]) for t in next(iter(tokenize(text).values()))[0]]


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_differs_between_families(tokenizers, family):
    """The premise: SD2 and CLIP-G pad with 0, SD1 and CLIP-L with the end token."""
    ids = _ids(tokenizers[family], "woman")
    end = ids[2]
    assert ids[-1] == (end if family in ("sd1", "sdxl-l") else 0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt, words, expected", [
    ("a photo of a woman", ["woman"], [[5]]),
    ("a woman in a red dress", ["woman"], [[2]]),
    ("a man with a hat wearing a sunglasses", ["man", "hat", "sunglasses"], [[2], [5], [8]]),
    ("a man wearing sunglasses and a hat", ["sunglasses", "hat", "man"], [[4], [7], [2]]),
])
def test_concept_words_anywhere_in_the_prompt(tokenizers, family, prompt, words, expected):
    locate = pack_module("comfy_glue.tokens").locate_concept_tokens
    assert locate(tokenizers[family], prompt, words) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_a_multi_token_phrase_owns_every_token_and_nothing_after(tokenizers, family):
    tokenize = tokenizers[family]
    locate = pack_module("comfy_glue.tokens").locate_concept_tokens
    prompt = "a woman with sunglasses"
    (positions,) = locate(tokenize, prompt, ["woman with"])
    assert positions == [2, 3]
    assert _ids(tokenize, prompt)[positions[-1] + 1] == _ids(tokenize, "sunglasses")[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_word_is_refused_whatever_the_padding(tokenizers, family):
    errors = pack_module("comfy_glue.errors")
    with pytest.raises(errors.MagicFaceInputError, match="'woman' is not in the prompt"):
        pack_module("comfy_glue.tokens").locate_concept_tokens(tokenizers[family], "a photo of a man", ["woman"])
