"""Run untrusted Python (generated exercises, model completions under evaluation) in a sandbox.

Each program runs in its own subprocess, ``python -I`` (no user site, no ``PYTHON*`` variables,
no script folder on ``sys.path``), in a fresh temporary folder as working directory that is
removed afterwards, with a clean environment and these limits:

- wall-clock ``timeout_s``: the whole process group is killed (reason ``timeout``);
- ``RLIMIT_CPU`` (the timeout, rounded up): a busy loop is stopped by the kernel too;
  the limits are set by the sandboxed interpreter itself before the program runs (no
  ``preexec_fn``, which is unsafe in threaded callers such as Ray workers);
- ``RLIMIT_AS`` = ``memory_mb`` (reason ``memory`` when Python raises ``MemoryError``);
- ``RLIMIT_FSIZE`` = ``file_mb`` for every file it writes, stdout and stderr included
  (reason ``output_limit``); ``RLIMIT_CORE`` = 0; writing, removing or renaming anything outside
  its folder, and ``os.kill``, raise (``filesystem_blocked``, ``process_blocked``);
- no new processes: ``RLIMIT_NPROC`` = 0 (enforced by the kernel for non-root users) and a
  preamble that disables ``os.fork``/``exec``/``spawn`` and ``subprocess`` (``process_blocked``);
- no network: a new network namespace (``unshare -rn``, only a downed loopback inside) where
  the kernel allows it, and always a preamble that makes socket creation raise
  (``network_blocked``). :func:`network_isolation` says which applies on this machine.

The Python-level guards stop accidents (a generated test that deletes files), not an adversary
with ``ctypes``; the kernel limits and the namespace are the hard walls. Syntax errors are found
before any process starts (``syntax_error``). Other failures:
``assertion_failed``, ``exception:<Type>``, ``exit:<code>``, ``signal:<NAME>``.

    result = run_python("assert add(1, 2) == 3", timeout_s=5)
    results = run_many(programs, workers=4, timeout_s=10)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

BLOCK_MESSAGES = {"network access is blocked in the sandbox": "network_blocked",
                  "process creation is blocked in the sandbox": "process_blocked",
                  "writing outside the sandbox folder is blocked": "filesystem_blocked"}

# Runs inside the sandboxed interpreter before the program: no sockets, no child processes.
PREAMBLE = r'''
import os, resource, socket, sys
_cpu, _memory, _files = (int(v) for v in sys.argv[1:4])
for _limit, _value in ((resource.RLIMIT_CPU, _cpu), (resource.RLIMIT_AS, _memory),
                       (resource.RLIMIT_FSIZE, _files), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_limit, (_value, _value))
def _no_net(*a, **k):
    raise PermissionError("network access is blocked in the sandbox")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        _no_net()
socket.socket = _NoSocket
for _n in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _n, _no_net)
def _no_proc(*a, **k):
    raise PermissionError("process creation is blocked in the sandbox")
for _n in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve",
           "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve"):
    if hasattr(os, _n):
        setattr(os, _n, _no_proc)
try:
    import _posixsubprocess
    _posixsubprocess.fork_exec = _no_proc
except ImportError:
    pass
_home = os.getcwd()
def _inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    full = os.path.realpath(os.path.join(_home, os.fsdecode(path)))
    return full == _home or full.startswith(_home + os.sep)
def _guard(fn, writes=lambda *a, **k: True):
    def guarded(path, *a, **k):
        if k.get("dir_fd") is not None or (writes(path, *a, **k) and not _inside(path)):
            raise PermissionError("writing outside the sandbox folder is blocked")
        return fn(path, *a, **k)
    return guarded
def _writes_mode(path, mode="r", *a, **k):
    return any(c in k.get("mode", mode) for c in "wax+")
def _writes_flags(path, flags, *a, **k):
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
import builtins, io
builtins.open = io.open = _guard(io.open, _writes_mode)
os.open = _guard(os.open, _writes_flags)
for _n in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "chmod", "chown", "lchown",
           "truncate", "mkfifo", "mknod"):
    if hasattr(os, _n):
        setattr(os, _n, _guard(getattr(os, _n)))
def _guard2(fn):
    def guarded(src, dst, *a, **k):
        if not (_inside(src) and _inside(dst)):
            raise PermissionError("writing outside the sandbox folder is blocked")
        return fn(src, dst, *a, **k)
    return guarded
for _n in ("rename", "replace", "link", "symlink"):
    setattr(os, _n, _guard2(getattr(os, _n)))
for _n in ("kill", "killpg", "setuid", "setgid", "chroot"):
    if hasattr(os, _n):
        setattr(os, _n, _no_proc)
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
del _n
sys.argv = ["main.py"]
with io.FileIO("main.py") as _fh:
    _code = _fh.read().decode("utf-8")
_globals = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
exec(compile(_code, "main.py", "exec"), _globals)
'''


@dataclass
class SandboxResult:
    ok: bool
    reason: str | None  # None when ok
    returncode: int | None
    stdout: str  # the last ``tail_chars`` characters
    stderr: str
    duration_s: float

    @property
    def detail(self) -> str:
        """The last line of stderr (the exception), for a rejected record's ``drop_detail``."""
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1][:500] if lines else (self.reason or "")


@functools.lru_cache(maxsize=1)
def network_isolation() -> str:
    """``namespace`` when ``unshare -rn`` works here (user + network namespace), else ``preamble``."""
    tool = shutil.which("unshare")
    if tool is None:
        return "preamble"
    try:
        done = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "preamble"
    return "namespace" if done.returncode == 0 else "preamble"


def _tail(path: str, chars: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4 * chars))
        return fh.read().decode("utf-8", "replace")[-chars:]


def classify(returncode: int | None, stderr: str, timed_out: bool) -> str | None:
    """The reason a finished program failed, or None when it succeeded."""
    if timed_out:
        return "timeout"
    if returncode == 0:
        return None
    for message, reason in BLOCK_MESSAGES.items():
        if message in stderr:
            return reason
    if returncode is not None and returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"  # the CPU limit: SIGXCPU at the soft limit, SIGKILL at the hard one
        if sig == signal.SIGXFSZ:
            return "output_limit"
        return f"signal:{signal.Signals(sig).name}" if sig in signal.Signals._value2member_map_ \
            else f"signal:{sig}"
    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    found = re.match(r"^([A-Za-z_][\w.]*)(?::|$)", last)
    if found and found.group(1).endswith(("Error", "Exception", "Exit", "Interrupt")):
        name = found.group(1).rsplit(".", 1)[-1]
        if name == "AssertionError":
            return "assertion_failed"
        if name == "MemoryError":
            return "memory"
        if "Network is unreachable" in last:
            return "network_blocked"
        if "File too large" in last:
            return "output_limit"  # Python ignores SIGXFSZ: the write fails with EFBIG
        return f"exception:{name}"
    return f"exit:{returncode}"


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, file_mb: int = 16,
               tail_chars: int = 2000, python: str | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox; never raises for anything the program does."""
    started = time.perf_counter()
    try:
        compile(code, "main.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return SandboxResult(False, "syntax_error", None, "", f"{type(exc).__name__}: {exc}",
                             time.perf_counter() - started)
    work = tempfile.mkdtemp(prefix="sandbox-")
    logs = tempfile.mkdtemp(prefix="sandbox-logs-")  # outside the program's folder
    try:
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as fh:
            fh.write(code)
        out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        limits = [str(int(timeout_s) + 1), str(memory_mb * 2**20), str(file_mb * 2**20)]
        cmd = [python or sys.executable, "-I", "-c", PREAMBLE, *limits]
        if network_isolation() == "namespace":
            cmd = [shutil.which("unshare") or "unshare", "-rn"] + cmd
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}  # no thread pools: RLIMIT_NPROC also counts threads
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it started
                except ProcessLookupError:
                    pass
                proc.wait()
        stdout, stderr = _tail(out_path, tail_chars), _tail(err_path, tail_chars)
        reason = classify(proc.returncode, stderr, timed_out)
        return SandboxResult(reason is None, reason, proc.returncode, stdout, stderr,
                             time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def run_many(programs: list[str], *, workers: int | None = None, **limits) -> list[SandboxResult]:
    """Run programs in parallel (``workers`` at once, default one per CPU); results in order."""
    if not programs:
        return []
    workers = max(1, min(len(programs), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda code: run_python(code, **limits), programs))
