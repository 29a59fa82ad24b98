"""`ray job submit` against a real local head, exactly as a cluster user launches the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE_CORPUS, free_port, read_rows


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head in its own process group: stopping it must not touch the tests' own Ray
    (`ray stop` would kill every Ray process on the machine)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    temp = tmp_path_factory.mktemp("rayhead")
    # a free agent port too: the default (52365) belongs to the tests' own local Ray
    port, dashboard, agent = free_port(), free_port(), free_port()
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
                             "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    # ready when the job agent accepts a trivial job
    while subprocess.run([ray_cli, "job", "submit", "--address", address, "--", "true"], capture_output=True,
                         env=env).returncode != 0:
        assert head.poll() is None and time.time() < deadline, (temp / "head.log").read_text()[-3000:]
        time.sleep(1)
    yield ray_cli, address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    log.close()


def test_label_job_under_ray_job_submit(ray_head, tmp_path):
    ray_cli, address, env = ray_head
    out = tmp_path / "labels"
    proc = subprocess.run(
        [ray_cli, "job", "submit", "--address", address, "--working-dir", ROOT, "--",
         "python", "jobs/label_corpus.py", "--input", SAMPLE_CORPUS, "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "images     4 in = 4 ok + 0 error" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["persons"] == 5
    assert sorted(os.path.basename(r["uri"]) for r in read_rows(out)) == sorted(
        n for n in os.listdir(SAMPLE_CORPUS) if n.endswith(".jpg"))


def test_failed_job_is_visible_to_the_scheduler(ray_head, tmp_path):
    ray_cli, address, env = ray_head
    proc = subprocess.run(
        [ray_cli, "job", "submit", "--address", address, "--working-dir", ROOT, "--",
         "python", "jobs/label_corpus.py", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "does not exist" in proc.stdout + proc.stderr
