"""Measurement helpers of bench_pipeline.py: wall time, peak memory and a per-part breakdown.

The breakdown wraps the pack's functions from outside (the product code has no timing code):
each wrapper synchronises the device around its part, so it is only installed for a separate
breakdown run and never during the timed runs.
"""
import os
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline_models import glue


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(seconds, result) of fn(); one synchronisation before and after, none inside."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def peak_memory_mib(fn, device: torch.device):
    """(peak memory of fn() above the memory in use before it, MiB; result).

    CUDA: torch.cuda.max_memory_allocated. CPU (Linux): peak resident set (VmHWM), whose
    high-water mark is reset through /proc/self/clear_refs; includes allocator caching, so it is
    an upper bound, comparable between variants of one process.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, result
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        base = _proc_status_kib("VmRSS")
    except OSError:
        return float("nan"), fn()
    result = fn()
    return (_proc_status_kib("VmHWM") - base) / 1024, result


class PartTimer:
    """Accumulates the wall time of named parts; a part nested inside another is not counted twice."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._active = None
        self.total = 0.0

    def wrap(self, part: str, fn):
        def timed_fn(*args, **kwargs):
            if self._active is not None:
                return fn(*args, **kwargs)
            self._active = part
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1
                self._active = None
        return timed_fn


# Part name -> [(module name, attribute path)]: the functions each part's time is taken from.
# The hooks call these through their own module's globals, so that is where they are replaced.
PARTS = {
    "reference inputs / separate pass": [("model_call", "run_reference_pass"), ("model_call", "coupled_inputs")],
    "joined attention (RSA/RBA)": [("attention_hooks", "rsa_attention"), ("attention_hooks", "rba_attention")],
    "segmentation": [("propagation_queue", "propagate_cross_maps"),
                     ("run_state", "MagicFaceRun.finish_segmentation")],
    "semantic guidance": [("guidance_hook", "SemanticGuidanceHook.__call__")],
}


def _owner_and_name(module_name: str, path: str):
    owner = glue(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


@contextmanager
def instrumented(timer: PartTimer):
    """Replace every PARTS function by its timed wrapper for the duration of the block."""
    saved = []
    try:
        for part, targets in PARTS.items():
            for module_name, path in targets:
                owner, name = _owner_and_name(module_name, path)
                original = owner.__dict__[name]
                saved.append((owner, name, original))
                setattr(owner, name, timer.wrap(part, original))
        yield timer
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# Frames of these pack folders own an op, except the wrappers that only call the host: the
# per-call pipeline (model_call.py) and the run's wrapper around sampling (patch.py's __call__);
# the UNet's and the sampler's ops under them count as the host's.
_PACK_FOLDERS = tuple(f"{os.sep}{name}{os.sep}" for name in ("comfy_glue", "magicface_attn"))
_PIPELINE = f"{os.sep}comfy_glue{os.sep}model_call.py"
_RUN_WRAPPER = (f"{os.sep}comfy_glue{os.sep}patch.py", "__call__")


def _passes_through(path: str, name: str) -> bool:
    return path.endswith(_PIPELINE) or (path.endswith(_RUN_WRAPPER[0]) and name == _RUN_WRAPPER[1])


def _pack_caller() -> str:
    """'folder/file.py:function' of the innermost pack frame on the stack, else 'host'."""
    frame = sys._getframe(2)
    while frame is not None:
        path, name = frame.f_code.co_filename, frame.f_code.co_name
        folder = next((f for f in _PACK_FOLDERS if f in path), None)
        if folder is not None and not _passes_through(path, name):
            return f"{folder.strip(os.sep)}/{path.rsplit(os.sep, 1)[-1]}:{name}"
        frame = frame.f_back
    return "host"


class _KernelOpCounter(TorchDispatchMode):
    def __init__(self, by_function: bool):
        super().__init__()
        self.count = 0
        self.by_function = Counter() if by_function else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count += 1
            if self.by_function is not None:
                self.by_function[_pack_caller()] += 1
        return func(*args, **(kwargs or {}))


def count_kernel_ops(fn) -> int:
    """Tensor ops other than views during fn(): on a GPU about one kernel launch each, so where
    the host's Python and launches bound the run (SD1.5 on an H100) time follows this count.
    Counted in a separate run, on any device."""
    with _KernelOpCounter(by_function=False) as counter:
        fn()
    return counter.count


def kernel_ops_by_function(fn) -> Counter:
    """count_kernel_ops of fn() split by the pack function that issued each op ('host' for the
    UNet's and the sampler's own): where MagicFace's launches come from."""
    with _KernelOpCounter(by_function=True) as counter:
        fn()
    return counter.by_function


def device_busy_seconds(fn, device: torch.device, table_path=None):
    """Sum of the GPU kernel times of one fn() run (torch.profiler), None on CPU.

    Divided by the run's unprofiled wall time this says how busy the GPU was: far below 1, the
    run is bound by the host's Python and kernel launches, not by GPU arithmetic. table_path
    also gets the profiler's top operators by host and by device time.
    """
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    averages = prof.key_averages()
    # Kernel events only: the aten rows that launched them carry the same device time again.
    busy_us = sum(event.self_device_time_total for event in averages
                  if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False))
    if table_path is not None:
        with open(table_path, "w") as out:
            for key in ("self_cpu_time_total", "self_cuda_time_total"):
                out.write(averages.table(sort_by=key, row_limit=30) + "\n\n")
    return busy_us / 1e6
