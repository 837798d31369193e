"""Run API-format ComfyUI workflows (dicts) in-process through the executor."""
from __future__ import annotations

import inspect
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .host import InProcessHost, run_maybe_async

_call_counter = itertools.count(1)


@dataclass
class GraphResult:
    """Outcome of one prompt, the same shape for in-process and server runs.

    ``ok``: validated and executed without error.  ``error``: the top-level
    error dict (validation: ``type``/``message``/``details``; execution:
    ``type="execution_error"`` plus ``node_id``, ``node_type``,
    ``exception_message``).  ``node_errors``: ``{node_id: {"errors": [...],
    "class_type": ...}}`` as the server's /prompt returns.  ``outputs``: the
    UI outputs per node (e.g. ``{"9": {"images": [...]}}``).  ``images``: every
    saved image as an ``HxWxC uint8`` array, in node-id order.  Node ids are
    the caller's original ids.
    """
    ok: bool
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    images: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    prompt_id: str = ""

    def raise_for_error(self) -> "GraphResult":
        if not self.ok:
            raise AssertionError(f"workflow failed: {self.error} node_errors={self.node_errors}")
        return self


def namespace_prompt(prompt: dict, prefix: str) -> dict:
    """Prefix every node id (and every link to it) with ``prefix``.

    The 2024 executor caches outputs by node id without checking class_type,
    so unrelated prompts reusing ids could read each other's results; fresh
    ids per call make every run independent.
    """
    def relink(value):
        if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt \
                and isinstance(value[1], int):
            return [prefix + str(value[0]), value[1]]
        return value

    return {prefix + str(node_id): {**node, "inputs": {k: relink(v) for k, v in node.get("inputs", {}).items()}}
            for node_id, node in prompt.items()}


def strip_prefix(mapping: dict | None, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in (mapping or {}).items()}


def fresh_prefix() -> str:
    return f"r{next(_call_counter)}_"


def execution_error(messages: list, prefix: str) -> dict | None:
    """The executor's error/interrupt message as a GraphResult error, or None."""
    failure = next((d for e, d in messages if e in ("execution_error", "execution_interrupted")), None)
    if failure is None:
        return None
    kind = "execution_error" if "exception_message" in failure else "execution_interrupted"
    error = {**failure, "type": kind, "message": failure.get("exception_message", "interrupted")}
    error["node_id"] = next(iter(strip_prefix({failure["node_id"]: 0}, prefix)))
    return error


def load_image_file(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def validate(prompt: dict):
    """ComfyUI's own validation, for either host's signature.

    Returns ``(ok, error, good_output_ids, node_errors)``.
    """
    import execution
    import nodes
    for node_id, node in prompt.items():
        # the 2024 host raises KeyError here; report it like newer hosts do
        if node.get("class_type") not in nodes.NODE_CLASS_MAPPINGS:
            return False, {"type": "invalid_prompt", "details": f"Node ID '#{node_id}'", "extra_info": {},
                           "message": f"Cannot execute because node {node.get('class_type')} does not exist."}, [], {}
    if len(inspect.signature(execution.validate_prompt).parameters) == 1:
        return execution.validate_prompt(prompt)
    return run_maybe_async(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


def classic_cache_arguments(execution) -> dict:
    """Keyword arguments for PromptExecutor that pick the classic output cache. Hosts whose
    executor reads cache_args (RAM headroom, LRU size) get them, zeroed: the classic cache
    uses none of them; older hosts take only the server."""
    parameters = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" not in parameters:
        return {}
    return {"cache_type": execution.CacheType.CLASSIC, "cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}}


class _ServerStub:
    """The few PromptServer members the executor touches (messages are kept
    by the executor itself in ``status_messages``)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


class InProcessRunner:
    """Runs workflows on an :class:`InProcessHost` with one long-lived executor
    (so model loads can be reused inside ComfyUI's model management)."""

    def __init__(self, host: InProcessHost):
        import execution
        self.host = host
        self.executor = execution.PromptExecutor(_ServerStub(), **classic_cache_arguments(execution))

    def run(self, prompt: dict) -> GraphResult:
        """Validate then execute ``prompt``; never raises for workflow errors."""
        prefix = fresh_prefix()
        spaced = namespace_prompt(prompt, prefix)
        prompt_id = str(uuid.uuid4())
        ok, error, good_outputs, node_errors = validate(spaced)
        if not ok:
            error = {**error, "details": str(error.get("details", "")).replace(f"#{prefix}", "#")}
            return GraphResult(ok=False, error=error, node_errors=strip_prefix(node_errors, prefix),
                               prompt_id=prompt_id)
        self.executor.execute(spaced, prompt_id, {}, good_outputs)
        messages = list(self.executor.status_messages)
        error = execution_error(messages, prefix)
        outputs = strip_prefix(self._ui_outputs(), prefix)
        return GraphResult(ok=error is None and self.executor.success, error=error,
                           node_errors=strip_prefix(node_errors, prefix), outputs=outputs,
                           images=self._read_images(outputs), messages=messages, prompt_id=prompt_id)

    def _ui_outputs(self) -> dict:
        if hasattr(self.executor, "history_result"):  # newer hosts
            return dict(self.executor.history_result.get("outputs", {}))
        return dict(self.executor.outputs_ui)

    def _read_images(self, outputs: dict) -> list:
        import folder_paths
        roots = {"output": folder_paths.get_output_directory(), "temp": folder_paths.get_temp_directory(),
                 "input": folder_paths.get_input_directory()}
        images = []
        for node_id in sorted(outputs):
            for item in outputs[node_id].get("images", []):
                path = Path(roots[item.get("type", "output")]) / item.get("subfolder", "") / item["filename"]
                images.append(load_image_file(path))
        return images
