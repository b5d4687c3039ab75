"""One real cluster job: a Ray head on 127.0.0.1, ``ray job submit -- pipeline run``, then stop.

The head runs with ``--block`` and is stopped by signalling it, which ends exactly that
cluster: ``ray stop`` would also end the test session's own local Ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline import ledger
from tests.conftest import make_config, write_jsonl


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.cluster
@pytest.mark.timeout(540)
def test_ray_job_submit_runs_the_pipeline_on_a_local_cluster(tmp_path: Path):
    ray_cli = str(Path(sys.executable).parent / "ray")
    write_jsonl(tmp_path / "data" / "a.jsonl",
                [{"text": f"cluster document {i % 40}"} for i in range(120)])
    config = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                         "[stages.ingest]\n[stages.dedup_exact]\n",
                         '[datasets.docs]\nfrom = "dedup_exact"\n', name="cluster")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    short_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--temp-dir", short_tmp],  # Ray's socket paths must stay short
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        submit = None
        deadline = time.time() + 240  # the job agent can take minutes to come up on a busy machine
        entry = (f"env RAY_ADDRESS=127.0.0.1:{gcs} {sys.executable} -m pipeline run {config}")
        while time.time() < deadline:
            submit = subprocess.run(
                [ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
                 *entry.split()], env=env, capture_output=True, text=True, timeout=300)
            if submit.returncode == 0 or "succeeded" in submit.stdout or "FAILED" in submit.stdout:
                break
            time.sleep(3)  # the dashboard is still starting
        assert submit is not None and submit.returncode == 0, (
            submit.stdout[-2000:] + submit.stderr[-2000:] + (tmp_path / "head.log").read_text()[-3000:])
        assert f"ray: 127.0.0.1:{gcs}" in submit.stdout  # the job joined the cluster, not a new Ray
        assert "succeeded" in submit.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(short_tmp, ignore_errors=True)
    records = ledger.funnel(tmp_path / "runs" / "cluster")
    assert [r["rows_kept"] for r in records] == [120, 40]
    assert (tmp_path / "runs" / "cluster" / "datasets" / "docs" / "README.md").is_file()
