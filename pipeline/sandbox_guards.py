"""The sandbox's Python-level guards, and how a finished program's failure is classified.

The guards run inside the sandboxed interpreter before the program, after the kernel walls
(:mod:`pipeline.sandbox_walls`) when those are up: the limits, then Python that makes socket
creation, new processes, signals and writing outside the program's folder raise. They turn a
generated test's accident into a clear reason; only the walls stop a deliberate escape.
"""

from __future__ import annotations

import errno
import re
import signal

from pipeline.sandbox_walls import WALLS_SOURCE

BLOCK_MESSAGES = {"network access is blocked in the sandbox": "network_blocked",
                  "process creation is blocked in the sandbox": "process_blocked",
                  "writing outside the sandbox folder is blocked": "filesystem_blocked"}

# Runs inside the sandboxed interpreter before the program: no sockets, no child processes.
GUARDS = r'''
import json, os, resource, socket, sys
_cpu, _memory, _files = (int(v) for v in sys.argv[1:4])
if sys.argv[4]:
    enter_walls(json.loads(sys.argv[4]))
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
PREAMBLE = WALLS_SOURCE + GUARDS

# What the kernel walls answer to an escape: a read-only or hidden place, no route out, nothing
# outside to signal, no new process (EAGAIN: RLIMIT_NPROC for an unprivileged uid; with no
# network and no child processes, a program has little else that would answer it).
WALL_ERRNOS = {errno.EROFS: "filesystem_blocked", errno.EACCES: "filesystem_blocked",
               errno.ENETUNREACH: "network_blocked", errno.ESRCH: "process_blocked",
               errno.EAGAIN: "process_blocked"}


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
        wall = re.search(r"\[Errno (\d+)\]", last)
        if wall and int(wall.group(1)) in WALL_ERRNOS:
            return WALL_ERRNOS[int(wall.group(1))]
        if "File too large" in last:
            return "output_limit"  # Python ignores SIGXFSZ: the write fails with EFBIG
        return f"exception:{name}"
    return f"exit:{returncode}"
