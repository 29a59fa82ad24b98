"""`ray job submit` against a real local head, exactly as a cluster user launches the job."""

from __future__ import annotations

import json
import os
import subprocess

from helpers import ROOT, SAMPLE_CORPUS, read_rows


def test_label_job_under_ray_job_submit(ray_head, tmp_path):
    ray_cli, address, env = ray_head.cli, ray_head.dashboard, ray_head.env
    out = tmp_path / "labels"
    proc = subprocess.run(
        [
            ray_cli,
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            ROOT,
            "--",
            "python",
            "jobs/label_corpus.py",
            "--input",
            SAMPLE_CORPUS,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "images     4 in = 4 ok + 0 error" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["persons"] == 5
    assert sorted(os.path.basename(r["uri"]) for r in read_rows(out)) == sorted(
        n for n in os.listdir(SAMPLE_CORPUS) if n.endswith(".jpg")
    )


def test_failed_job_is_visible_to_the_scheduler(ray_head, tmp_path):
    ray_cli, address, env = ray_head.cli, ray_head.dashboard, ray_head.env
    proc = subprocess.run(
        [
            ray_cli,
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            ROOT,
            "--",
            "python",
            "jobs/label_corpus.py",
            "--input",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stdout + proc.stderr
