"""Start a real ComfyUI server (subprocess) with this pack, and talk to it."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from .graph import GraphResult, execution_error, fresh_prefix, namespace_prompt, strip_prefix
from .host import PACK_NAME, check_host_layout, make_custom_nodes_dir


def _die_with_parent() -> None:
    """Child-side: get SIGTERM when the test process dies, even if it is
    killed without running teardown (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on 127.0.0.1 with its own input/output/temp dirs.

    ``start()`` launches ``main.py --cpu`` in a new process group and waits
    until HTTP answers; ``stop()`` kills the whole group.  Use as a context
    manager, or through the ``comfy_server`` pytest fixture.
    """

    def __init__(self, root: Path, work_dir: Path, models_dir: Path, python: str = sys.executable,
                 extra_args=()):
        self.root, self.work_dir, self.models_dir, self.python = Path(root), Path(work_dir), Path(models_dir), python
        self.extra_args = list(extra_args)  # more main.py options, e.g. --front-end-root <dir>
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.work_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------
    def _write_paths_yaml(self, custom_nodes: Path) -> Path:
        lines = ["magicface_tests:"]
        for kind in ("checkpoints", "loras", "controlnet"):
            lines.append(f"    {kind}: {self.models_dir / kind}")
        lines.append(f"    custom_nodes: {custom_nodes}")
        path = self.work_dir / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self) -> list:
        custom_nodes = make_custom_nodes_dir(self.work_dir)
        dirs = {name: self.work_dir / name for name in ("input", "output", "temp", "user")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch",
               "--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
               "--temp-directory", str(dirs["temp"]),
               "--extra-model-paths-config", str(self._write_paths_yaml(custom_nodes))]
        cli_args = (self.root / "comfy" / "cli_args.py").read_text()
        if "--user-directory" in cli_args:  # newer hosts: keep user data/db out of the checkout
            cmd += ["--user-directory", str(dirs["user"]),
                    "--database-url", f"sqlite:///{dirs['user'] / 'comfyui.db'}"]
        return cmd + self.extra_args

    def accepts_option(self, option: str) -> bool:
        """Whether this host's main.py knows a command-line option (e.g. --front-end-root)."""
        return option in (self.root / "comfy" / "cli_args.py").read_text()

    def start(self, timeout: float = 180) -> "ComfyServer":
        check_host_layout(self.root)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.work_dir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self._request("GET", "/prompt", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI server did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        finally:
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_failed(self) -> bool:
        """True if the log reports our pack as failed to import."""
        return any(("IMPORT FAILED" in line or "Cannot import" in line) and PACK_NAME in line
                   for line in self.log_text().splitlines())

    # -- HTTP API ----------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:  # 4xx/5xx still carry a JSON body
            return err.code, err.read()

    def get_json(self, path: str):
        status, raw = self._request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self) -> dict:
        """``GET /object_info``: every registered node class and its inputs."""
        return self.get_json("/object_info")

    def interrupt(self) -> None:
        """``POST /interrupt``: stop the prompt that is executing now."""
        self._request("POST", "/interrupt", {})

    def queue(self) -> dict:
        return self.get_json("/queue")

    def submit(self, prompt: dict) -> tuple:
        """POST /prompt with fresh node ids; returns (status, body, prefix)."""
        prefix = fresh_prefix()
        status, raw = self._request("POST", "/prompt", {"prompt": namespace_prompt(prompt, prefix),
                                                        "client_id": str(uuid.uuid4())})
        try:
            body = json.loads(raw)
        except ValueError:  # e.g. a 500 page from an old host's failed validation
            body = {"error": {"type": "http_error", "message": raw.decode(errors="replace")[:2000]}}
        return status, body, prefix

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Poll /history until the prompt finished; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry is not None:  # hosts add to history only when done
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 600) -> GraphResult:
        """Submit, wait, fetch images; node errors come back, never raise."""
        status, body, prefix = self.submit(prompt)
        if status != 200 or "error" in body:
            return GraphResult(ok=False, error=body.get("error"),
                               node_errors=strip_prefix(body.get("node_errors"), prefix))
        prompt_id = body["prompt_id"]
        entry = self.wait(prompt_id, timeout)
        st = entry.get("status") or {}
        messages = [tuple(m) for m in st.get("messages", [])]
        error = execution_error(messages, prefix)
        outputs = strip_prefix(entry.get("outputs"), prefix)
        return GraphResult(ok=st.get("status_str", "success") == "success" and error is None,
                           error=error, node_errors=strip_prefix(body.get("node_errors"), prefix),
                           outputs=outputs, images=self._fetch_images(outputs), messages=messages,
                           prompt_id=prompt_id)

    def _fetch_images(self, outputs: dict) -> list:
        from PIL import Image
        images = []
        for node_id in sorted(outputs):
            for item in outputs[node_id].get("images", []):
                query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
                status, raw = self._request("GET", f"/view?{query}")
                if status != 200:
                    raise RuntimeError(f"/view {query} -> {status}")
                with Image.open(io.BytesIO(raw)) as im:
                    images.append(np.array(im.convert("RGB")))
        return images
