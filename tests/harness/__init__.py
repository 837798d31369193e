"""Test harness: ComfyUI host bootstrap, tiny random models, graph runners.

Importable as ``harness`` (pytest puts ``tests/`` on sys.path via pyproject's
``pythonpath``; scripts add it themselves).  It never imports the pack
directly: ComfyUI loads it from a ``custom_nodes`` symlink.
"""
from .core import load_core
from .graph import GraphResult, InProcessRunner, namespace_prompt, validate
from .host import (PACK_NAME, REPO_ROOT, InProcessHost, bootstrap_in_process, describe_host, host_version,
                   find_comfyui_root, make_custom_nodes_dir)
from .repository import source_files
from .server import ComfyServer
from .workflows import load_workflow, txt2img

__all__ = ["load_core", "GraphResult", "InProcessRunner", "namespace_prompt", "validate", "PACK_NAME",
           "REPO_ROOT", "InProcessHost", "bootstrap_in_process", "describe_host", "host_version",
           "find_comfyui_root", "make_custom_nodes_dir", "source_files", "ComfyServer", "load_workflow", "txt2img"]
