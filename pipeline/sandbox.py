"""Run untrusted Python (generated exercises, model completions under evaluation) in a sandbox.

Each program runs in its own subprocess, ``python -I`` (no user site, no ``PYTHON*`` variables,
no script folder on ``sys.path``), in a fresh temporary folder as working directory that is
removed afterwards, with a clean environment, behind two layers:

- **kernel walls** (``mode="namespaces"``, the default; :mod:`pipeline.sandbox_walls`): new
  user, network, mount and PID namespaces. The root filesystem is read-only, the program's
  folder is the only writable place besides a private ``/tmp``; the home folders, ``/run`` and
  the paths in ``hide`` (the run folder, secrets) are empty; there is no network; every process
  the program starts dies with it and nothing outside can be seen or signalled. The program
  cannot undo them, through ``ctypes`` or raw system calls either. Where the kernel refuses
  namespaces, :func:`require` raises :class:`SandboxRefused`: untrusted code is not run, unless
  the caller chose ``mode="guards"`` and accepted the risk printed once.
- **limits and guards** (both modes; :mod:`pipeline.sandbox_guards`): ``RLIMIT_CPU`` (the
  timeout, rounded up), ``RLIMIT_AS`` = ``memory_mb`` (``memory``), ``RLIMIT_FSIZE`` =
  ``file_mb`` for every file, stdout and stderr included (``output_limit``), ``RLIMIT_CORE`` = 0,
  set by the sandboxed interpreter itself (no ``preexec_fn``, unsafe in threaded callers such
  as Ray workers); a wall-clock ``timeout_s`` kills everything (``timeout``); Python-level guards
  make sockets, new processes, signals and writes outside the folder raise
  (``network_blocked``, ``process_blocked``, ``filesystem_blocked``). The guards alone stop
  accidents (a generated test that deletes files), not a program that means to escape.

A wall's refusal is classified too (``[Errno 30] Read-only file system`` is
``filesystem_blocked``). Syntax errors are found before any process starts (``syntax_error``).
Other failures: ``assertion_failed``, ``exception:<Type>``, ``exit:<code>``, ``signal:<NAME>``.
:func:`isolation` reports which walls hold here, for the log, ledgers and dataset cards.

    result = run_python("assert add(1, 2) == 3", timeout_s=5)
    results = run_many(programs, workers=4, timeout_s=10, hide=[run_folder])
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline import sandbox_walls as walls
from pipeline.sandbox_guards import PREAMBLE, classify

MODES = ("namespaces", "guards")
GUARDS_RISK = (
    'sandbox = "guards": untrusted code runs behind Python-level guards only. A program that '
    "means harm can get past them (ctypes, raw system calls): delete or overwrite the user's "
    "files, read secrets (~/.ssh, cloud credentials, the run folder) into the records, reach "
    "the network, and leave processes running.")
# Run behind the walls once per process: PID 1, a read-only root, /run emptied, no network.
WALLS_PROBE = ("import os, socket\nassert os.getpid() == 1 and not os.access('/', os.W_OK)\n"
               "assert not os.path.isdir('/run') or os.listdir('/run') == []\n"
               "assert [name for _, name in socket.if_nameindex()] == ['lo']\n")
log = logging.getLogger("pipeline")


class SandboxRefused(RuntimeError):
    """The kernel refuses the namespaces here, and the caller did not choose the guards."""


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


def _tail(path: str, chars: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4 * chars))
        return fh.read().decode("utf-8", "replace")[-chars:]


@functools.lru_cache(maxsize=2)
def isolation(mode: str = "namespaces") -> dict[str, str]:
    """Which wall holds here, one entry each (``user``, ``network``, ``mount``, ``pid``): what
    the kernel grants, checked once per process by a program run behind all of them."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; one of {MODES}")
    if mode == "guards":
        return {"mode": mode, **{w: "off (guards only)" for w in walls.WALLS}}
    report = {"mode": mode, **walls.kernel_walls()}
    if not any(v.startswith("refused") for v in report.values()):
        probe = _run(WALLS_PROBE, mode, [], 10.0, 256, 1, 400, None)
        if not probe.ok:
            report["probe"] = f"refused: a program behind the walls failed: {probe.detail}"
    return report


def refusal(report: dict[str, str]) -> str | None:
    """Why the walls of ``report`` do not hold, or None."""
    refused = [f"{w} ({v.removeprefix('refused: ')})" for w, v in report.items()
               if v.startswith("refused")]
    return f"the kernel refuses the sandbox's namespaces here: {'; '.join(refused)}" \
        if refused else None


def describe(report: dict[str, str]) -> str:
    """One line for logs and cards: each wall and how it holds."""
    return "; ".join(f"{w}: {report.get(w)}" + (f" ({walls.MEANING[w]})" if report.get(w) ==
                                                 "namespace" else "") for w in walls.WALLS)


@functools.lru_cache(maxsize=2)
def require(mode: str = "namespaces") -> dict[str, str]:
    """The isolation report of ``mode``, logged once; raises :class:`SandboxRefused` where the
    walls do not hold. ``guards`` prints once what running untrusted code without them risks."""
    report = isolation(mode)
    why = refusal(report)
    if why and mode == "namespaces":
        raise SandboxRefused(f"{why}. Untrusted code is not run. sandbox = \"guards\" (in the "
                             "stage's table or [eval]) runs it anyway, behind the Python-level "
                             "guards alone: they stop accidents, not a program that means harm")
    log.info("sandbox %s: %s", mode, describe(report))
    if mode == "guards":
        print(f"warning: {GUARDS_RISK}", file=sys.stderr)
        if log.hasHandlers():  # else logging's last resort would print it a second time
            log.warning(GUARDS_RISK)
    return report


def run_python(code: str, *, mode: str = "namespaces", hide: list | tuple = (),
               timeout_s: float = 10.0, memory_mb: int = 512, file_mb: int = 16,
               tail_chars: int = 2000, python: str | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox, with the paths in ``hide`` (the run folder,
    secrets) emptied; never raises for anything the program does. Raises
    :class:`SandboxRefused` when ``mode`` is ``namespaces`` and the kernel refuses them."""
    require(mode)
    return _run(code, mode, [os.fspath(p) for p in hide], timeout_s, memory_mb, file_mb,
                tail_chars, python)


def _run(code: str, mode: str, hide: list[str], timeout_s: float, memory_mb: int, file_mb: int,
         tail_chars: int, python: str | None) -> SandboxResult:
    started = time.perf_counter()
    try:
        compile(code, "main.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return SandboxResult(False, "syntax_error", None, "", f"{type(exc).__name__}: {exc}",
                             time.perf_counter() - started)
    python = python or sys.executable
    work = tempfile.mkdtemp(prefix="sandbox-")
    logs = tempfile.mkdtemp(prefix="sandbox-logs-")  # outside the program's folder
    try:
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as fh:
            fh.write(code)
        out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        limits = [str(int(timeout_s) + 1), str(memory_mb * 2**20), str(file_mb * 2**20)]
        cmd, spec = [python, "-I", "-c", PREAMBLE, *limits], ""
        if mode == "namespaces":
            spec = walls.spec(work, hide, python, tmp_mb=memory_mb)
            if spec["drop_to"] is not None:  # the folder belongs to the uid the program runs as
                for path in (work, os.path.join(work, "main.py")):
                    os.chown(path, spec["drop_to"], spec["drop_to"])
            cmd, spec = walls.unshare_command() + cmd, walls.spec_arg(spec)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}  # no thread pools: RLIMIT_NPROC also counts threads
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([*cmd, spec], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if mode == "namespaces":  # its PID 1, and with it everything inside; unshare
                    walls.kill_namespace(proc.pid)  # returns once the namespace is empty
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
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
    """Run programs in parallel (``workers`` at once, default one per CPU); results in order.
    ``limits``: :func:`run_python`'s keywords (``mode``, ``hide``, ``timeout_s`` ...)."""
    if not programs:
        return []
    require(limits.get("mode", "namespaces"))  # refused before any thread starts
    workers = max(1, min(len(programs), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda code: run_python(code, **limits), programs))
