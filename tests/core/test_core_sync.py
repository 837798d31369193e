"""The per-step paths never synchronise with the device.

A host sync (.item(), bool(tensor), .tolist(), nonzero, boolean-mask indexing, a blocking copy
between devices) stalls the CPU that queues the GPU's work. No GPU is needed to see one: a
dispatch mode fails on the aten ops behind them, and the same calls also run on the "meta"
device, where any copy from a host tensor shows up as a cross-device copy.
"""
import contextlib
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import magicface_attn as mf

aten = torch.ops.aten

# Ops that read tensor data on the host or need it to size their output.
SYNC_OPS = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select}
# Tensors built from Python data (torch.tensor(list), also `x[i] = 1.0`): a blocking
# host-to-device copy when the target is a device (refused conservatively for setitem).
HOST_DATA_OPS = {aten.lift_fresh, aten.lift_fresh_copy}
INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
COPY_OPS = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize}


class HostSyncError(AssertionError):
    pass


def _tensors(values):
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def _devices(values):
    return {tensor.device for tensor in _tensors(values)}


class FailOnHostSync(TorchDispatchMode):
    """Raises HostSyncError on the first op that would synchronise with a device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SYNC_OPS or packet in HOST_DATA_OPS:
            raise HostSyncError(f"host sync: {func}")
        if packet in INDEX_OPS and any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:2])):
            raise HostSyncError(f"boolean-mask indexing (nonzero inside): {func}")
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            raise HostSyncError("repeat_interleave without output_size")
        out = func(*args, **kwargs)
        if packet in COPY_OPS and len(_devices([*args, *kwargs.values(), out])) > 1:
            raise HostSyncError(f"copy between devices: {func}")
        return out


def _refuse(name):
    def refuse(*args, **kwargs):
        raise HostSyncError(f"host read: Tensor.{name}")
    return refuse


@contextlib.contextmanager
def _cuda_sync_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def no_host_sync(device="cpu"):
    """Fail on any host sync inside. tolist()/numpy() read CPU tensors without an aten op, so
    they are patched; on CUDA the driver-level check runs too (any synchronising call raises)."""
    with contextlib.ExitStack() as stack:
        for name in ("tolist", "numpy"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, _refuse(name)))
        stack.enter_context(FailOnHostSync())
        if device == "cuda":
            stack.enter_context(_cuda_sync_errors())
        yield


def _inputs(device):
    """RBA/RSA inputs where reference 1 has no kept key and regions overlap, plus its layout."""
    gen = torch.Generator().manual_seed(3)
    heads, dim, h, w, refs, batch = 2, 8, 4, 6, 3, 2
    tokens, channels = h * w, heads * dim
    q, k, v = (torch.randn(batch, tokens, channels, generator=gen) for _ in range(3))
    ref_k, ref_v = (torch.randn(refs, tokens, channels, generator=gen) for _ in range(2))
    masks = torch.rand(refs, tokens, generator=gen) < 0.5
    masks[1] = False
    weights = torch.tensor([2.0, 1.5, 3.0])
    regions = torch.rand(batch, refs, tokens, generator=gen) < 0.4
    layout = mf.pack_layout(masks, weights, device)
    moved = [t.to(device) for t in (q, k, v, ref_k, ref_v, masks, weights, regions)]
    return (*moved, layout, heads)


def _layer_maps(device):
    gen = torch.Generator().manual_seed(4)
    grids = [(4, 6), (2, 3), (4, 6), (8, 12)]
    return [(torch.rand(2, h * w, 7, generator=gen).softmax(-1).to(device), (h, w)) for h, w in grids]


# The CUDA case (sync debug mode "error" as well) exists only where a GPU is: CI has none,
# and the device check of the lent GPU runs it with `-k cuda`.
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_per_step_paths_do_not_synchronise(device):
    q, k, v, ref_k, ref_v, masks, weights, regions, layout, heads = _inputs(device)
    layers = _layer_maps(device)
    text = torch.randn(2, 7, q.shape[-1]).to(device)
    eps = torch.randn(2, 4, 8, 12).to(device)
    # Made once per call and grid, with its one sync; meta tensors have no values to group.
    groups = None if device == "meta" else mf.concept_pixel_groups(regions)
    with no_host_sync(device):
        refs = mf.make_reference_kv(ref_k, ref_v, masks, weights, heads, layout=layout)
        mf.rsa_attention(q, k, v, refs, heads, impl="fast")
        mf.rba_attention(q, k, v, refs, regions, heads, impl="fast")
        mf.rba_attention(q, k, v, refs, torch.zeros_like(regions), heads)
        if groups is not None:
            mf.rba_attention(q, k, v, refs, regions, heads, groups=groups)
        mf.concept_owner(regions)
        mf.propagate_cross_maps(q, k, q, text, heads, impl="fast")
        seg = mf.segment(layers, (8, 12), [[2], [3, 5]], ca_scale=0.5, num_tokens_used=6)
        rate = mf.semantic_cfg_rate(eps[:1], eps[1:], seg.token_regions[None], seg.fore[None], 7.5)
        mf.semantic_cfg(eps[:1], eps[1:], rate, 7.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x.sum().item(),
        lambda x: bool(x.any()),
        lambda x: x.tolist(),
        lambda x: torch.nonzero(x),
        lambda x: x[x > 0],
        lambda x: x.__setitem__(x < 0, 0.0),
        lambda x: torch.tensor([1.0, 2.0], device=x.device),
    ],
)
def test_the_check_catches_host_syncs(call):
    x = torch.randn(6)
    with pytest.raises(HostSyncError), no_host_sync():
        call(x)


def test_the_check_catches_the_materialised_rba_oracle():
    q, k, v, ref_k, ref_v, masks, weights, regions, layout, heads = _inputs("cpu")
    refs = mf.make_reference_kv(ref_k, ref_v, masks, weights, heads, layout=layout)
    with pytest.raises(HostSyncError), no_host_sync():
        mf.rba_attention(q, k, v, refs, regions, heads, impl="plain")


def test_cross_device_copies_are_caught_on_meta():
    grid = torch.rand(1, 1, 4, 4, device="meta")
    with pytest.raises(HostSyncError), no_host_sync():
        grid + torch.ones(1, 1, 4, 4).to("meta")
