"""`ray job submit` against a real local head, exactly as a cluster user launches the jobs:
the labelling job, and a training run whose published bundle the labelling job then runs."""

from __future__ import annotations

import json
import os
import subprocess

from fashion_ray.models.bundle import load_bundle
from fashion_ray.training import data
from helpers import ROOT, SAMPLE_CORPUS, job_main, read_rows


def _submit(ray_head, *job: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> -- python <job...>` against the module's head, as a
    cluster user types it; waits for the job and returns what the CLI printed."""
    return subprocess.run(
        [ray_head.cli, "job", "submit", "--address", ray_head.dashboard, "--working-dir", ROOT, "--", "python", *job],
        capture_output=True,
        text=True,
        env=ray_head.env,
        timeout=timeout,
        cwd=ROOT,
    )


def test_label_job_under_ray_job_submit(ray_head, tmp_path):
    out = tmp_path / "labels"
    proc = _submit(ray_head, "jobs/label_corpus.py", "--input", SAMPLE_CORPUS, "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "images     4 in = 4 ok + 0 error" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["persons"] == 5
    assert sorted(os.path.basename(r["uri"]) for r in read_rows(out)) == sorted(
        n for n in os.listdir(SAMPLE_CORPUS) if n.endswith(".jpg")
    )


def test_failed_job_is_visible_to_the_scheduler(ray_head, tmp_path):
    proc = _submit(
        ray_head, "jobs/label_corpus.py", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stdout + proc.stderr


def test_parts_model_learns_under_ray_job_submit_and_its_bundle_labels(ray_head, synth_coco, tmp_path):
    out = tmp_path / "parts-v1"
    proc = _submit(
        ray_head,
        "jobs/train.py",
        "--task",
        "parts",
        "--data",
        synth_coco,
        "--output",
        str(out),
        "--workers",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--steps",
        "60",
        "--batch-size",
        "4",
        "--input-size",
        "64",
        "--lr",
        "0.05",
        "--warmup-steps",
        "10",
        "--checkpoint-every",
        "20",
        "--storage",
        str(tmp_path / "runs"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "training.json").read_text())
    metrics = record["metrics"]  # the same held-out crops scored before training and at the best checkpoint
    assert record["final_step"] == 60 and metrics["val_metric"] > max(0.08, metrics["val_initial"] + 0.06), record
    bundle = load_bundle(str(out))
    assert (
        set(bundle.stages) == set(data.taxonomy.STAGES)
        and bundle.stages["parts"].architecture == "lraspp_mobilenet_v3_large"
    )

    labels = tmp_path / "labels"
    # the stages this bundle's parts need (persons to crop): its garment and action stages are the base bundle's
    assert (
        job_main(
            "label_corpus",
            "--input",
            SAMPLE_CORPUS,
            "--output",
            str(labels),
            "--bundle",
            str(out),
            "--stages",
            "person,parts",
        )
        == 0
    )
    rows = read_rows(labels)
    assert {r["bundle_name"] for r in rows} == {bundle.name} and sum(
        len(p["parts"]) for r in rows for p in r["persons"]
    ) > 0
