"""The sandbox's kernel walls: user, network, mount and PID namespaces (util-linux ``unshare``).

``unshare`` starts the sandboxed interpreter in new network, mount and PID namespaces (and a
user namespace unless the caller is the real root); :func:`enter_walls` then runs inside it,
before the program, and builds the mount wall:

- every mount read-only and ``nosuid`` (``mount_setattr`` with ``AT_RECURSIVE``);
- a private, writable tmpfs on ``/tmp`` and ``/dev/shm``;
- an empty read-only tmpfs over the home folders, ``/run`` (daemon sockets) and every path the
  caller hides (the run folder, secrets named in the config); a hidden file reads as empty;
  the interpreter's own folders (``sys.prefix`` ...) are bound back, read-only, when they lie
  under a hidden folder;
- the program's folder bound back writable: the only writable place besides the private tmpfs;
- a fresh session keyring, without the caller's keys.

Then the program loses the power to undo any of it: the real root becomes ``nobody``
(uid 65534, no capabilities); anyone else enters a nested user and mount namespace, in which
the kernel locks every inherited mount (no unmounting a cover, no remounting read-write).
The network namespace has only a downed loopback; in the PID namespace the program is PID 1,
so every process it starts dies with it, and it sees and signals nothing outside.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

NOBODY = 65534
WALLS = ("user", "network", "mount", "pid")
MEANING = {"user": "no powers outside", "network": "no network",
           "mount": "read-only root, private /tmp; home folders, /run, the run folder and named "
                    "secrets hidden",
           "pid": "every process dies with the program, nothing outside visible"}
KEYCTL = {"x86_64": 250, "aarch64": 219}  # keyctl(2), which libc does not wrap
ALWAYS_HIDDEN = ("/root", "/home", "/run")
PRIVATE_TMP = ("/tmp", "/dev/shm")


def enter_walls(spec: dict) -> None:
    """Build the mount wall and drop the power to undo it (runs inside the namespaces)."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    rdonly, nosuid, nodev, bind, rec, recursive, newuser, newns = (
        1, 2, 4, 4096, 16384, 0x8000, 0x10000000, 0x20000)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox wall: {what}: {os.strerror(err)}")

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clear", "propagation", "userns")]

    def attrs(path: str, set_: int = 0, clear: int = 0, flags: int = 0) -> None:
        attr = MountAttr(set_, clear, 0, 0)  # mount_setattr(2) is syscall 442 everywhere
        check(libc.syscall(442, -100, path.encode(), flags, ctypes.byref(attr),
                           ctypes.sizeof(attr)), f"mount_setattr {path}")

    def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
        check(libc.mount(source.encode(), target.encode(), fstype and fstype.encode(),
                         ctypes.c_ulong(flags), data.encode()), f"mount {target}")

    work = spec["work"]
    fds = {path: os.open(path, os.O_PATH) for path in [*spec["keep"], work]}
    attrs("/", set_=rdonly | nosuid, flags=recursive)
    covered = []
    for path, writable in sorted(spec["cover"], key=lambda c: len(c[0])):
        if not os.path.lexists(path):
            continue  # absent, or inside a folder covered already
        if not os.path.isdir(path):
            mount("/dev/null", path, None, bind)  # a hidden file reads as empty
            continue
        mount("tmpfs", path, "tmpfs", nosuid | nodev, f"mode=0755,size={spec['tmp_mb']}m")
        covered += [] if writable else [path]
        for keep, fd in fds.items():
            if keep.startswith(path + "/") and keep != work:
                os.makedirs(keep, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", keep, None, bind | rec)
    os.makedirs(work, exist_ok=True)
    mount(f"/proc/self/fd/{fds[work]}", work, None, bind)
    attrs(work, clear=rdonly)
    for path in covered:
        attrs(path, set_=rdonly)
    for fd in fds.values():
        os.close(fd)
    os.chdir(work)
    if spec["keyctl"]:  # a fresh session keyring: none of the caller's keys (Kerberos tickets...)
        libc.syscall(spec["keyctl"], 1, None)  # refused only where keyctl is blocked for all
    if spec["drop_to"] is not None:
        os.setgroups([])
        os.setgid(spec["drop_to"])
        os.setuid(spec["drop_to"])
    else:
        check(libc.unshare(newuser | newns), "nested user namespace")
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")


WALLS_SOURCE = inspect.getsource(enter_walls)


def real_root() -> bool:
    """Root of the initial user namespace: namespaces without a user namespace, then ``nobody``."""
    if os.geteuid() != 0:
        return False
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return first[:3] == ["0", "0", "4294967295"]


def unshare_command() -> list[str]:
    tool = shutil.which("unshare") or "unshare"
    user = [] if real_root() else ["--user", "--map-root-user"]
    return [tool, *user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private"]


def interpreter_folders(python: str) -> list[str]:
    """What the sandboxed interpreter reads: its prefixes and its executable's folder."""
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
               os.path.dirname(os.path.realpath(python)), os.path.dirname(python)}
    return sorted({os.path.realpath(f) for f in folders if f})


def spec(work: str, hide: list[str], python: str, tmp_mb: int) -> dict:
    """What :func:`enter_walls` builds: covers, folders kept visible, the uid to drop to."""
    hidden = {os.path.realpath(os.path.expanduser(p))
              for p in [*ALWAYS_HIDDEN, str(Path.home()), *hide]}
    if "/" in hidden:
        raise ValueError("the sandbox cannot hide the root folder '/'")
    cover = [[p, False] for p in sorted(hidden)] + [[p, True] for p in PRIVATE_TMP]
    return {"work": os.path.realpath(work), "keep": interpreter_folders(python), "cover": cover,
            "tmp_mb": tmp_mb, "drop_to": NOBODY if real_root() else None,
            "keyctl": KEYCTL.get(os.uname().machine)}


def spec_arg(walls_spec: dict) -> str:
    return json.dumps(walls_spec)


def kill_namespace(pid: int) -> None:
    """SIGKILL the PID-namespace init started by ``unshare`` (pid): the kernel then kills every
    process in the namespace, however it detached itself (setsid, a cleared parent-death signal)."""
    for child in _children(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return found


@functools.lru_cache(maxsize=1)
def kernel_walls() -> dict[str, str]:
    """Which namespaces the kernel grants here: each wall ``namespace`` or ``refused: why``."""
    tool = shutil.which("unshare")
    if tool is None:
        return {w: "refused: util-linux unshare is not installed" for w in WALLS}
    user = [] if real_root() else ["-r"]
    flags = {"user": ["-r"], "network": [*user, "-n"], "mount": [*user, "-m"],
             "pid": [*user, "-p", "-f", "--mount-proc"]}
    report = {}
    for wall, args in flags.items():
        if wall == "user" and real_root():
            report[wall] = f"uid {NOBODY} (nobody), no capabilities"
            continue
        try:
            done = subprocess.run([tool, *args, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            report[wall] = f"refused: {exc}"
            continue
        why = done.stderr.decode(errors="replace").strip().splitlines()
        report[wall] = "namespace" if done.returncode == 0 else \
            f"refused: {why[-1] if why else f'exit {done.returncode}'}"
    return report
