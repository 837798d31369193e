"""Parity of magicface_attn with outputs of the official MagicFace code (stored vectors).

Every *.safetensors file under $MAGICFACE_VECTORS (default $MAGICFACE_SHARED/testdata/
official_vectors, $MAGICFACE_SHARED defaulting to <repo>/../shared) is one test, dispatched
on its kind in manifest.json. A file this module cannot interpret fails; only a missing
directory skips. The package is loaded from its file path so the repository root never lands
on sys.path (the pack's nodes/ would shadow ComfyUI's nodes.py).
"""
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import load_core

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAGICFACE_SHARED", REPO.parent / "shared"))
VECTORS = Path(os.environ.get("MAGICFACE_VECTORS", SHARED / "testdata" / "official_vectors"))
RELATIVE_TOLERANCE = 1e-5


mf = load_core()

if not VECTORS.is_dir():
    pytest.skip(f"official vectors directory {VECTORS} is absent (set MAGICFACE_VECTORS)", allow_module_level=True)

VECTOR_FILES = sorted(p.name for p in VECTORS.glob("*.safetensors"))
CHECKED = []


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    yield
    line = f"official parity: checked {len(CHECKED)} of {len(VECTOR_FILES)} vector files"
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():  # teardown output is otherwise captured
        reporter.ensure_newline()
        reporter.write_line(line)


def _manifest_entries():
    manifest = VECTORS / "manifest.json"
    assert manifest.is_file(), f"{manifest} missing: cannot interpret the vectors"
    return {entry["file"]: entry for entry in json.loads(manifest.read_text())["files"]}


def assert_close(actual, expected, what):
    """max |actual - expected| <= 1e-5 * max |expected| (float32 outputs)."""
    scale = expected.abs().max().item()
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= RELATIVE_TOLERANCE * max(scale, 1e-30), f"{what}: max abs diff {diff:.3e}, output scale {scale:.3e}"


def to_bnc(x, heads):
    """Official (rows*heads, N, d) -> (rows, N, heads*d) head-major."""
    rows_heads, tokens, dim = x.shape
    return x.view(rows_heads // heads, heads, tokens, dim).transpose(1, 2).reshape(-1, tokens, heads * dim)


def _attention_inputs(t, entry):
    heads, height, width, refs = entry["heads"], entry["H"], entry["W"], entry["R"]
    q, k, v = (to_bnc(t[name], heads) for name in ("q", "k", "v"))
    key_mask = mf.mask_to_layer(t["ref_masks"][:, 0], height, width, mode="nearest")
    assert len(entry["official_call"]["ReferenceAttention"]["mask_weights"]) == refs
    ref_kv = mf.make_reference_kv(k[refs + 2 :], v[refs + 2 :], key_mask, t["mask_weights"], heads)
    assert entry["official_call"]["args"]["scale"] == pytest.approx(ref_kv.head_dim ** -0.5)
    return q, k, v, ref_kv


def _check_attention(t, entry, modified_row):
    """Only the cond target (row B = R + 1) differs from plain self-attention."""
    heads, cond = entry["heads"], entry["R"] + 1
    q, k, v, _ = _attention_inputs(t, entry)
    expected = t["out"]
    assert torch.equal(expected[cond], t["out_cond_target"])
    others = [row for row in range(expected.shape[0]) if row != cond]
    assert_close(mf.plain_attention(q[others], k[others], v[others], heads), expected[others], "plain rows")
    for impl in ("fast", "plain"):
        assert_close(modified_row(impl)[0], expected[cond], f"cond target ({impl})")


def check_rsa(t, entry):
    heads, cond = entry["heads"], entry["R"] + 1
    q, k, v, ref_kv = _attention_inputs(t, entry)
    rows = slice(cond, cond + 1)
    _check_attention(t, entry, lambda impl: mf.rsa_attention(q[rows], k[rows], v[rows], ref_kv, heads, impl=impl))


def check_rba(t, entry):
    heads, cond = entry["heads"], entry["R"] + 1
    q, k, v, ref_kv = _attention_inputs(t, entry)
    token_maps = t["ca_mask"][0, t["ref_index"]] > 0
    regions = mf.mask_to_layer(token_maps, entry["H"], entry["W"], mode="nearest")[None]
    rows = slice(cond, cond + 1)
    _check_attention(
        t, entry, lambda impl: mf.rba_attention(q[rows], k[rows], v[rows], ref_kv, regions, heads, impl=impl)
    )


def _propagated_layers(t):
    """Rebuild every stored layer's self maps from their factors and propagate the cross maps."""
    layers = []
    for key in sorted({name.split("_")[0] for name in t if name.endswith("_cross")}, key=lambda k: int(k[1:])):
        ys, xs, cross = t[f"{key}_self_Y"], t[f"{key}_self_X"], t[f"{key}_cross"]
        side = ys.shape[-1]
        for layer in range(ys.shape[0]):
            y, x = ys[layer], xs[layer]
            self_maps = (y[:, :, None, :, None] * x[:, None, :, None, :]).reshape(2, side * side, side * side)
            layers.append((mf.propagate_with_probs(self_maps, cross[layer]), (side, side)))
    return layers


def check_seg(t, entry):
    layers = _propagated_layers(t)
    assert len(layers) == sum(entry["layers_per_key"].values())
    side = entry["latent"] // entry["official_call"]["args"]["r"]
    concepts = [[int(i)] for i in t["ref_index"]]
    for tag in ("ca09", "ca05"):
        seg = mf.segment(layers, (side, side), concepts, float(t[f"ca_scale_{tag}"]))
        assert_close(seg.token_scores, t[f"ca_scores_{tag}"][0], f"token scores {tag}")
        assert_close(seg.fore_scores, t[f"fore_scores_{tag}"][0], f"fore scores {tag}")
        assert torch.equal(seg.token_regions, t[f"ca_mask_{tag}"][0] > 0), f"token regions {tag}"
        assert torch.equal(seg.fore, t[f"fore_mask_{tag}"][0, 0] > 0), f"foreground {tag}"


def check_scfg(t, entry):
    uncond, text = t["noise_pred_uncond"], t["noise_pred_text"]
    cfg = float(t["guidance_scale"])
    for tag in ("ca09", "ca05"):
        regions, fore = t[f"ca_mask_{tag}"] > 0, t[f"fore_mask_{tag}"][:, 0] > 0
        official = t[f"rate_{tag}"]
        rate = mf.semantic_cfg_rate(uncond[:1], text[:1], regions, fore, cfg)
        assert_close(rate, official[:1], f"rate {tag}")
        assert torch.all(official[1:] == 1), "official reference rows must have rate 1"
        full_rate = torch.cat([rate, torch.ones_like(official[1:])])
        assert_close(mf.semantic_cfg(uncond, text, full_rate, cfg), t[f"noise_pred_{tag}"], f"guided eps {tag}")


CHECKERS = {"rsa": check_rsa, "rba": check_rba, "seg": check_seg, "scfg": check_scfg}


def test_vectors_present():
    assert VECTOR_FILES, f"no *.safetensors under {VECTORS}"
    missing = sorted(set(_manifest_entries()) - set(VECTOR_FILES))
    assert not missing, f"manifest lists files that are absent: {missing}"


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_official_vector(name):
    entries = _manifest_entries()
    assert name in entries, f"{name} is not described in manifest.json: cannot interpret it"
    entry = entries[name]
    assert entry.get("kind") in CHECKERS, f"{name}: unknown kind {entry.get('kind')!r}"
    path = VECTORS / name
    if "sha256" in entry:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{name}: checksum mismatch"
    tensors = load_file(str(path))
    declared = {tensor["name"] for tensor in entry["tensors"]}
    assert declared == set(tensors), f"{name}: tensors differ from the manifest"
    CHECKERS[entry["kind"]](tensors, entry)
    CHECKED.append(name)
