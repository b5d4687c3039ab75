from __future__ import annotations

import os
import time

from pipeline.sandbox import SandboxResult, classify, network_isolation, run_many, run_python

PASSING = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n"
FAILING = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"


def test_passing_and_failing_programs():
    good = run_python(PASSING)
    assert good.ok and good.reason is None and good.stdout.strip() == "ok" and good.returncode == 0
    bad = run_python(FAILING)
    assert not bad.ok and bad.reason == "assertion_failed" and "AssertionError" in bad.detail
    assert run_python("def f(:\n    pass").reason == "syntax_error"
    assert run_python("import sys\nsys.exit(3)").reason == "exit:3"
    assert run_python("raise KeyError('k')").reason == "exception:KeyError"


def test_infinite_loop_is_killed_with_its_process_group():
    started = time.perf_counter()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.reason == "timeout" and time.perf_counter() - started < 5


def test_network_is_blocked_either_way():
    code = "import socket\ns = socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
    assert run_python(code).reason == "network_blocked"
    raw = "import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))\n"
    result = run_python(raw, timeout_s=5)  # below the Python-level block: only a namespace stops it
    if network_isolation() == "namespace":
        assert result.reason == "network_blocked", result.stderr
    assert network_isolation() in ("namespace", "preamble")


def test_memory_processes_and_files_are_limited(tmp_path):
    assert run_python("x = bytearray(1024 ** 3)", memory_mb=256).reason == "memory"
    assert run_python("import os\nos.fork()").reason == "process_blocked"
    assert run_python("import subprocess\nsubprocess.run(['true'])").reason == "process_blocked"
    outside = tmp_path / "escape.txt"
    assert run_python(f"open({str(outside)!r}, 'w').write('x')").reason == "filesystem_blocked"
    assert not outside.exists()
    inside = run_python("open('a.txt', 'w').write('x')\nimport os\nprint(os.listdir('.'))")
    assert inside.ok and "a.txt" in inside.stdout
    flood = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", file_mb=1)
    assert flood.reason == "output_limit" and len(flood.stdout) <= 2000


def test_temp_folders_are_removed_and_env_is_clean():
    result = run_python("import os, sys\nprint(os.getcwd())\nprint(sorted(os.environ))\n"
                        "print(sys.flags.isolated)")
    cwd, env, isolated = result.stdout.strip().splitlines()
    assert not os.path.exists(cwd) and isolated == "1"
    assert "PYTHONPATH" not in env and "HOME" in env


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = [f"import time\ntime.sleep(0.5)\nprint({i})" for i in range(4)]
    started = time.perf_counter()
    results = run_many(programs, workers=4)
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert time.perf_counter() - started < 1.8
    assert run_many([]) == []


def test_classify_signals():
    assert classify(-24, "", False) == "timeout"  # SIGXCPU: the CPU-time limit
    assert classify(-11, "", False) == "signal:SIGSEGV"
    assert classify(0, "", False) is None
    assert SandboxResult(False, "x", 1, "", "a\nValueError: bad\n", 0.1).detail == "ValueError: bad"
