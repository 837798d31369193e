"""What the per-step paths build once and reuse: folded reference blocks, their bias columns
across steps, and the shape-only device constants of the segmentation and the guidance. Reused
values must give the results of freshly built ones."""
import torch

import magicface_attn as mf


def _references(seed: int, layout=None):
    gen = torch.Generator().manual_seed(seed)
    keys, values = (torch.randn(2, 12, 8, generator=gen) for _ in range(2))
    mask = torch.rand(2, 12, generator=gen) < 0.6
    mask[:, 0] = True
    return mf.make_reference_kv(keys, values, mask, [2.5, 1.2], 2, layout=layout), mask


def test_folded_block_is_made_once_per_references_and_bias_columns_once_per_layout():
    first, mask = _references(0)
    layout = mf.pack_layout(mask, [2.5, 1.2])
    step_one, _ = _references(0, layout)
    q = torch.randn(1, 12, 8)
    out = mf.rsa_attention(q, q, q, step_one, 2)
    block = step_one.folded(q)
    assert step_one.folded(q) is block  # the RSA call made it
    torch.testing.assert_close(mf.rsa_attention(q, q, q, step_one, 2), out, rtol=0, atol=0)
    # The next step's references share the layout: new keys, the same bias columns object.
    step_two, _ = _references(1, layout)
    constants = dict(layout.fold_cache)
    assert constants  # step one's fold made them
    mf.rsa_attention(q, q, q, step_two, 2)
    assert step_two.layout is step_one.layout
    assert all(layout.fold_cache[key] is value for key, value in constants.items())
    # A fresh ReferenceKV without a layout gives the same result as the reused pieces.
    fresh = mf.make_reference_kv(step_two.keys, step_two.values, mask, [2.5, 1.2], 2)
    torch.testing.assert_close(mf.rsa_attention(q, q, q, fresh, 2), mf.rsa_attention(q, q, q, step_two, 2),
                               rtol=0, atol=0)
    regions = torch.zeros(1, 2, 12, dtype=torch.bool)
    regions[0, 1, 3:9] = True
    torch.testing.assert_close(mf.rba_attention(q, q, q, fresh, regions, 2),
                               mf.rba_attention(q, q, q, step_two, regions, 2), rtol=0, atol=0)


def test_pixel_groups_of_several_grids_equal_one_grid_at_a_time():
    gen = torch.Generator().manual_seed(3)
    grids = [torch.rand(2, 3, n, generator=gen) < 0.4 for n in (16, 64, 9)]
    together = mf.pixel_groups_of_grids(grids)
    for regions, groups in zip(grids, together):
        alone = mf.concept_pixel_groups(regions)
        assert len(groups) == len(alone) == 2
        for row_together, row_alone in zip(groups, alone):
            assert [g.tolist() for g in row_together] == [g.tolist() for g in row_alone]


def test_device_constants_are_built_once_and_change_no_result():
    gen = torch.Generator().manual_seed(5)
    maps = [(torch.rand(2, 16, 6, generator=gen), (4, 4)), (torch.rand(2, 64, 6, generator=gen), (8, 8))]
    constants = {}
    first = mf.segment(maps, (8, 8), [(2,), (4,)], 0.6, constants=constants)
    kernel = [value for key, value in constants.items() if key[0] == "gaussian kernel"]
    assert len(kernel) == 1
    second = mf.segment(maps, (8, 8), [(2,), (4,)], 0.6, constants=constants)
    assert [value for key, value in constants.items() if key[0] == "gaussian kernel"][0] is kernel[0]
    uncached = mf.segment(maps, (8, 8), [(2,), (4,)], 0.6)
    for result in (first, second):
        assert torch.equal(result.labels, uncached.labels)
        torch.testing.assert_close(result.token_scores, uncached.token_scores, rtol=0, atol=0)
    uncond, cond = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 4, 16, 16, generator=gen)
    rate = mf.semantic_cfg_rate(uncond, cond, first.token_regions[None], first.fore[None], 7.5, constants)
    assert any(key[0] == "nearest" for key in constants)
    torch.testing.assert_close(rate, mf.semantic_cfg_rate(uncond, cond, first.token_regions[None], first.fore[None], 7.5),
                               rtol=0, atol=0)
