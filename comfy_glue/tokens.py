"""Find each concept's words among the prompt's CLIP tokens, with the model's own tokenizer.

Token index convention: the cross-attention context that ComfyUI builds concatenates
77-token chunks, so a token at position p of chunk c has context index c * 77 + p.
Multi-token words and phrases own every token they cover.
"""
import difflib
import re

import torch

from .errors import MagicFaceInputError

NODE = "MagicFace Apply"


def _token_key(token):
    """A comparable key of one token: its id, or for a textual-inversion embedding's vector (a
    tensor in the host's token lists) its values, so an embedding matches itself and nothing else."""
    if torch.is_tensor(token):
        if token.numel() == 1:
            return int(token)
        return ("embedding", token.detach().to("cpu", torch.float32).numpy().tobytes())
    if isinstance(token, int):
        return token
    return ("other", repr(token))


def _token_rows(tokenized):
    """First encoder's chunks as lists of token keys (SDXL's 'g' and 'l' share positions)."""
    if isinstance(tokenized, dict):
        tokenized = tokenized["l"] if "l" in tokenized else next(iter(tokenized.values()))
    return [[_token_key(t[0]) for t in chunk] for chunk in tokenized]


def _start_and_end(tokenizer_fn):
    """The start and end token keys, read off the tokenization of an empty text (start, end,
    padding...): the padding differs, SD1 and SDXL's CLIP-L pad with the end token, SD2 and
    SDXL's CLIP-G with id 0."""
    return tuple(_token_rows(tokenizer_fn(""))[0][:2])


def _word_ids(tokenizer_fn, words: str, start, end):
    """Token keys of the words alone: those strictly between the start token and the first end
    token of their own tokenization."""
    ids = _token_rows(tokenizer_fn(words))[0]
    body = ids[1:] if ids[0] == start else ids
    return body[:body.index(end)] if end in body else body


def _find(sequence, pattern):
    hits = []
    for i in range(len(sequence) - len(pattern) + 1):
        if sequence[i:i + len(pattern)] == pattern:
            hits.append(i)
    return hits


def locate_concept_tokens(tokenizer_fn, prompt: str, concept_words):
    """Context token indices of every concept, in concept order.

    tokenizer_fn: text -> ComfyUI token structure (clip.tokenize). Raises a clear error for
    a word the prompt lacks (naming the closest prompt word) or a word claimed twice.
    """
    rows = _token_rows(tokenizer_fn(prompt))
    chunk_len = len(rows[0])
    flat = [(c * chunk_len + p, t) for c, row in enumerate(rows) for p, t in enumerate(row)]
    ids = [t for _, t in flat]
    owners = {}
    located = []
    start, end = _start_and_end(tokenizer_fn)
    for index, words in enumerate(concept_words):
        pattern = _word_ids(tokenizer_fn, words, start, end)
        if not words.strip() or not pattern:
            raise MagicFaceInputError(NODE, "concepts", f"concept {index + 1} has no words.",
                                      "type the word of the prompt that names this concept in its Concept Loader.")
        hits = _find(ids, pattern)
        if not hits:
            raise MagicFaceInputError(
                NODE, "prompt", f"concept word '{words}' is not in the prompt.",
                _suggestion(prompt, words))
        positions = [flat[hit + j][0] for hit in hits for j in range(len(pattern))]
        for position in positions:
            if position in owners and owners[position] != index:
                raise MagicFaceInputError(
                    NODE, "concepts", f"the word '{words}' is claimed by concepts {owners[position] + 1} and {index + 1}.",
                    "give each concept its own word in the prompt (e.g. 'a man with a hat').")
            owners[position] = index
        located.append(sorted(set(positions)))
    return located


def _suggestion(prompt, words):
    prompt_words = re.findall(r"[\w'-]+", prompt.lower())
    close = difflib.get_close_matches(words.lower(), prompt_words, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'? Use a word that appears in the prompt, or add '{words}' to it."
    return f"add '{words}' to the prompt, or set the Concept Loader's words to a word of the prompt."
