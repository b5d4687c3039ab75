from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from pipeline import sandbox, sandbox_walls
from pipeline.sandbox import SandboxRefused, SandboxResult, classify, run_many, run_python

PASSING = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n"
FAILING = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"
WHY_NOT = sandbox.refusal(sandbox.isolation())
MODES = ["guards"] + ([] if WHY_NOT else ["namespaces"])
needs_walls = pytest.mark.skipif(WHY_NOT is not None, reason=f"{WHY_NOT}: nothing to attack")
# A failed libc call raises its errno, as Python's own wrappers would.
LIBC = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def check(result):\n    if result < 0:\n        err = ctypes.get_errno()\n"
        "        raise OSError(err, os.strerror(err))\n    return result\n")
SYS_UNLINKAT = {"x86_64": 263, "aarch64": 35}.get(os.uname().machine)


@pytest.fixture(params=["nobody", "user_namespace"])
def walls(request, monkeypatch):
    """Both ways to keep the program from undoing the walls: the real root drops to nobody,
    anyone else enters a nested user namespace (forced here where the tests run as root)."""
    if WHY_NOT:
        pytest.skip(f"{WHY_NOT}: nothing to attack")
    if request.param == "nobody" and not sandbox_walls.real_root():
        pytest.skip("dropping to nobody needs the real root")
    if request.param == "user_namespace":
        monkeypatch.setattr(sandbox_walls, "real_root", lambda: False)
    return request.param


@pytest.fixture
def outside():
    """A folder the sandbox sees (not under the private /tmp, not a home), with a planted file."""
    base = next((p for p in ("/var/tmp", os.getcwd()) if os.access(p, os.W_OK)), None)
    folder = Path(tempfile.mkdtemp(prefix="sandbox-target-", dir=base))
    os.chmod(folder, 0o755)
    (folder / "keep.txt").write_text("precious")
    os.chmod(folder / "keep.txt", 0o644)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def home_secret():
    path = Path.home() / f".sandbox-secret-{uuid.uuid4().hex}"
    try:
        path.write_text("AKIA-home-secret")
    except OSError:
        pytest.skip("the home folder is not writable here")
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", MODES)
def test_passing_and_failing_programs(mode):
    good = run_python(PASSING, mode=mode)
    assert good.ok and good.reason is None and good.stdout.strip() == "ok" and good.returncode == 0
    bad = run_python(FAILING, mode=mode)
    assert not bad.ok and bad.reason == "assertion_failed" and "AssertionError" in bad.detail
    assert run_python("def f(:\n    pass", mode=mode).reason == "syntax_error"
    assert run_python("import sys\nsys.exit(3)", mode=mode).reason == "exit:3"
    assert run_python("raise KeyError('k')", mode=mode).reason == "exception:KeyError"
    assert run_python("import os\nos.kill(os.getpid(), 11)", mode=mode).reason == "process_blocked"


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_killed(mode):
    assert run_python("while True:\n    pass\n", timeout_s=1.0, mode=mode).reason == "timeout"


@pytest.mark.parametrize("mode", MODES)
def test_python_level_guards_hold_in_both_modes(mode, tmp_path):
    code = "import socket\ns = socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
    assert run_python(code, mode=mode).reason == "network_blocked"
    assert run_python("x = bytearray(1024 ** 3)", memory_mb=256, mode=mode).reason == "memory"
    assert run_python("import os\nos.fork()", mode=mode).reason == "process_blocked"
    assert run_python("import subprocess\nsubprocess.run(['true'])",
                      mode=mode).reason == "process_blocked"
    escape = tmp_path / "escape.txt"
    assert run_python(f"open({str(escape)!r}, 'w').write('x')",
                      mode=mode).reason == "filesystem_blocked"
    assert not escape.exists()
    inside = run_python("open('a.txt', 'w').write('x')\nimport os\nprint(os.listdir('.'))",
                        mode=mode)
    assert inside.ok and "a.txt" in inside.stdout
    flood = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", file_mb=1,
                       mode=mode)
    assert flood.reason == "output_limit" and len(flood.stdout) <= 2000


def test_temp_folders_are_removed_and_env_is_clean():
    result = run_python("import os, sys\nprint(os.getcwd())\nprint(sorted(os.environ))\n"
                        "print(sys.flags.isolated)", mode=MODES[-1])
    cwd, env, isolated = result.stdout.strip().splitlines()
    assert not os.path.exists(cwd) and isolated == "1"
    assert "PYTHONPATH" not in env and "HOME" in env


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = [f"import time\nprint({i}, time.time())\ntime.sleep(0.5)\nprint(time.time())"
                for i in range(4)]
    results = run_many(programs, workers=4, mode=MODES[-1])
    lines = [r.stdout.split() for r in results]
    assert [line[0] for line in lines] == ["0", "1", "2", "3"]
    starts, ends = [float(line[1]) for line in lines], [float(line[2]) for line in lines]
    assert max(starts) < min(ends)  # all four were running at once
    assert run_many([]) == []


def test_classify_signals_and_wall_errors():
    assert classify(-24, "", False) == "timeout"  # SIGXCPU: the CPU-time limit
    assert classify(-11, "", False) == "signal:SIGSEGV"
    assert classify(0, "", False) is None
    assert classify(1, "OSError: [Errno 30] Read-only file system: 'x'", False) == \
        "filesystem_blocked"
    assert classify(1, "OSError: [Errno 3] No such process", False) == "process_blocked"
    assert classify(1, "BlockingIOError: [Errno 11] Resource temporarily unavailable",
                    False) == "process_blocked"  # fork refused by RLIMIT_NPROC
    assert classify(1, "FileNotFoundError: [Errno 2] No such file", False) == \
        "exception:FileNotFoundError"
    assert SandboxResult(False, "x", 1, "", "a\nValueError: bad\n", 0.1).detail == "ValueError: bad"


@needs_walls
def test_isolation_reports_every_wall():
    report = sandbox.isolation()
    assert report["mode"] == "namespaces" and sandbox.refusal(report) is None
    assert all(report[w] == "namespace" for w in ("network", "mount", "pid"))
    line = sandbox.describe(report)
    assert all(f"{w}: " in line for w in sandbox_walls.WALLS)
    assert sandbox.isolation("guards")["network"].startswith("off")


def test_attack_unlink_and_overwrite_outside(walls, outside):
    target = str(outside / "keep.txt").encode()
    attacks = [f"check(libc.unlink({target!r}))",
               f"check(libc.open({target!r}, os.O_WRONLY | os.O_TRUNC))",
               f"check(libc.rename({target!r}, {target + b'.moved'!r}))",
               f"import _io\n_io.FileIO({target.decode()!r}, 'w').write(b'gone')"]
    if SYS_UNLINKAT:
        attacks.append(f"check(libc.syscall({SYS_UNLINKAT}, -100, {target!r}, 0))")
    for attack in attacks:
        result = run_python(LIBC + attack)
        assert result.reason == "filesystem_blocked", (attack, result.stderr)
    assert (outside / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_attack_create_a_file_in_the_home_folder(walls):
    planted = Path.home() / f".sandbox-planted-{uuid.uuid4().hex}"
    try:
        attack = f"check(libc.open({str(planted).encode()!r}, os.O_CREAT | os.O_WRONLY, 0o644))"
        assert run_python(LIBC + attack).reason == "filesystem_blocked"
        assert not planted.exists()
    finally:
        planted.unlink(missing_ok=True)


def test_attack_read_planted_secrets(walls, outside, home_secret):
    secrets = outside / "credentials"
    secrets.mkdir()
    (secrets / "key").write_text("AKIA-named-secret")
    for path in (home_secret, secrets / "key"):
        result = run_python(f"print(open({str(path)!r}).read())", hide=[secrets])
        assert result.reason == "exception:FileNotFoundError", result.stderr
        assert "AKIA" not in result.stdout + result.stderr
    named_file = run_python(f"print(repr(open({str(outside / 'keep.txt')!r}).read()))",
                            hide=[outside / "keep.txt"])
    assert named_file.ok and named_file.stdout.strip() == "''"  # a hidden file reads as empty
    undo = ("libc.unshare(0x10000000 | 0x20000)\n"  # a fresh user + mount namespace: full powers
            "libc.umount2(b'/root', 2)\nlibc.umount2(b'/', 2)\n"
            f"print(open({str(home_secret)!r}).read())")
    result = run_python(LIBC + undo)
    assert result.reason == "exception:FileNotFoundError" and "AKIA" not in result.stdout
    assert home_secret.read_text() == "AKIA-home-secret"


def _processes_with(argument: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("ends_by", ["timeout", "exit"])
def test_attack_a_forked_process_outlives_the_program(walls, ends_by):
    mark = f"{uuid.uuid4().int % 10**6}.5"
    attack = (LIBC + "pid = check(libc.fork())\nif pid == 0:\n"
              "    libc.setsid()\n    libc.prctl(1, 0)\n"  # detached, no parent-death signal
              f"    argv = (ctypes.c_char_p * 3)(b'sleep', {mark.encode()!r}, None)\n"
              "    libc.execv(b'/bin/sleep', argv)\n    libc._exit(0)\n")
    attack += "import time\ntime.sleep(60)\n" if ends_by == "timeout" else "print(pid)\n"
    try:
        result = run_python(attack, timeout_s=2)
        expected = {"timeout": "timeout", "exit": None}[ends_by]
        # as nobody, RLIMIT_NPROC = 0 refuses the fork itself
        assert result.reason in (expected, "process_blocked"), result.stderr
        assert walls == "nobody" or result.reason == expected
        assert _processes_with(mark) == []
    finally:
        for pid in _processes_with(mark):
            os.kill(pid, 9)


def test_attack_kill_a_process_outside(walls):
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        for attack in (f"check(libc.kill({sleeper.pid}, 9))",
                       f"import os\nos.kill({sleeper.pid}, 9)",
                       "check(libc.kill(-1, 9))\nimport time\ntime.sleep(60)"):
            result = run_python(LIBC + attack, timeout_s=2)
            assert result.reason in ("process_blocked", "timeout"), (attack, result.stderr)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_attack_connect_to_a_server_on_the_host_loopback(walls):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    raw = f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n"
    sockaddr = ("import socket, struct\nfd = check(libc.socket(2, 1, 0))\n"
                f"addr = struct.pack('!HH4s8x', 0, {port}, socket.inet_aton('127.0.0.1'))\n"
                "addr = struct.pack('=H', 2) + addr[2:]\n"
                "check(libc.connect(fd, addr, len(addr)))\n")
    try:
        for attack in (raw, LIBC + sockaddr):
            result = run_python(attack)
            assert result.reason == "network_blocked", (attack, result.stderr)
        with pytest.raises(BlockingIOError):
            server.accept()  # no connection ever reached the server
    finally:
        server.close()


def test_the_interpreter_and_its_packages_stay_readable(walls):
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="host-") as planted:
        result = run_python("import json, decimal, numpy, pyarrow\nimport tempfile, os\n"
                            "with tempfile.NamedTemporaryFile() as fh:\n"
                            "    fh.write(b'x')\n"
                            f"print(os.path.exists({planted.name!r}),\n"
                            "      os.path.basename(os.getcwd()) in os.listdir('/tmp'))\n"
                            "print(os.listdir('/run'), os.listdir(os.path.expanduser('~root')))")
    assert result.ok, result.stderr
    private_tmp, hidden = result.stdout.strip().splitlines()
    # the host's /tmp is out of sight (a venv under /tmp is bound back, read-only, at its path)
    assert private_tmp == "False True"
    assert hidden.startswith("[] [")


@pytest.fixture
def kernel_refuses(tmp_path, monkeypatch):
    """An ``unshare`` that fails the way it does in containers that refuse namespaces."""
    fake = tmp_path / "bin" / "unshare"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    caches = (sandbox.isolation, sandbox.require, sandbox_walls.kernel_walls)
    for cache in caches:
        cache.cache_clear()
    yield
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


def test_refused_namespaces_stop_untrusted_code(kernel_refuses, capsys):
    report = sandbox.isolation()
    assert report["network"] == "refused: unshare: unshare failed: Operation not permitted"
    with pytest.raises(SandboxRefused, match='sandbox = "guards"'):
        run_python(PASSING)
    with pytest.raises(SandboxRefused):
        run_many([PASSING, PASSING])
    assert capsys.readouterr().err == ""  # nothing ran, nothing was excused
    assert run_python(PASSING, mode="guards").ok
    assert run_many([PASSING], mode="guards")[0].ok
    warned = capsys.readouterr().err
    assert warned.count('sandbox = "guards"') == 1 and "read secrets" in warned


@needs_walls
def test_exercises_card_says_which_walls_held():
    from stages import exercises

    record = {"folder": "05-exercises", "rows_kept": 1, "config": {"timeout_s": 10},
              "info": {"sandbox": sandbox.isolation(), "requested": 2, "executed": 2}}
    card = exercises.card_section(record, Path("."))
    assert "sandbox namespaces: user: " in card and "network: namespace (no network)" in card
    assert "pid: namespace" in card and "mount: namespace (read-only root" in card


@pytest.mark.skipif(sandbox_walls.KEYCTL.get(os.uname().machine) is None, reason="keyctl number")
def test_attack_the_callers_session_keyring(walls):
    import ctypes

    keyctl = sandbox_walls.KEYCTL[os.uname().machine]
    ours = ctypes.CDLL(None).syscall(keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session
    if ours < 0:
        pytest.skip("keyctl is refused here")
    result = run_python(LIBC + f"print(check(libc.syscall({keyctl}, 0, -3, 0)))")
    assert result.ok and int(result.stdout) != ours


def test_exercises_and_humaneval_refuse_before_asking_any_model(kernel_refuses):
    from stages import exercises
    from trainers.config import EvalConfig
    from trainers.evaluate import humaneval

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"{name} was used before the sandbox was checked")

    with pytest.raises(SandboxRefused):
        exercises.run(Untouchable(), exercises.Config())
    with pytest.raises(SandboxRefused):
        humaneval(Untouchable(), Untouchable(), EvalConfig(humaneval=2), "cpu")
