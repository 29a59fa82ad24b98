"""Training on Ray Train with 2 CPU workers (gloo): a killed run that resumes to the same
weights, and a clothing detector that publishes its classes. The part model that learns under
`ray job submit` is in test_ray_job_submit.py, on that module's Ray head. The synthetic training
set and the uninterrupted reference run are conftest's, shared with test_cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fashion_ray.models.bundle import load_bundle
from fashion_ray.training import data
from fashion_ray.training.loop import TrainConfig, lr_factor
from helpers import (
    ROOT,
    STRAIGHT_TRAINING,
    final_checkpoint_state,
    job_main,
    registered_checkpoints,
)


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "jobs", "train.py"), *args]


def test_schedule_and_split_are_what_the_config_says():
    cfg = TrainConfig(task="parts", data="x.json", steps=120, warmup_steps=20)
    assert lr_factor(0, cfg) == pytest.approx(0.001) and lr_factor(20, cfg) == pytest.approx(1.0)
    assert lr_factor(70, cfg) == pytest.approx(0.5) and lr_factor(120, cfg) == pytest.approx(0.0, abs=1e-9)
    step = TrainConfig(task="parts", data="x.json", steps=110, warmup_steps=20, schedule="step")
    assert [lr_factor(s, step) for s in (30, 80, 109)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]
    samples = [data.Sample(i, None) for i in range(1000)]
    train, val = data.split(samples, 0.2)
    assert (
        len(train) + len(val) == 1000
        and 150 < len(val) < 250
        and not {s.image_id for s in val} & {s.image_id for s in train}
    )
    assert list(data.epoch_order(10, 0, 3)) == list(data.epoch_order(10, 0, 3)) != list(data.epoch_order(10, 0, 4))


@pytest.mark.slow
def test_a_non_finite_loss_is_stopped_before_it_reaches_the_weights():
    """A NaN loss (a corrupt example, a learning rate too high) raises instead of stepping: one
    SGD step would carry it into every weight of the model."""
    import numpy as np

    from fashion_ray.training.loop import NonFiniteLoss, TrainState, train_one_step

    cfg = TrainConfig(task="actions", data="unused", lr=0.1)
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.lr)
    run = TrainState(
        model,
        params,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    labels = {"labels": np.array([1, 0, 0], np.float32)}
    good = [(np.ones(4, np.float32), labels)] * 2
    assert np.isfinite(train_one_step(run, good, cfg, torch.device("cpu"), 0)) and run.step == 1
    before = [p.detach().clone() for p in params]
    bad = [(np.array([1, np.nan, 0, 0], np.float32), labels)] + good
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 1 .*lower --lr or check the data"):
        train_one_step(run, bad, cfg, torch.device("cpu"), 0)
    assert run.step == 1 and all(torch.equal(a, b) for a, b in zip(before, params))


def _kill_at_first_checkpoint(args: list[str], run_dir, log_path) -> None:
    """Start a training run and kill it (driver, Ray and workers: the whole node goes) once Ray
    Train has registered its first checkpoint."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.time() + 300
        while not registered_checkpoints(run_dir):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(synth_coco, straight_training_run, tmp_path):
    args = _train_cmd(
        *STRAIGHT_TRAINING,
        "--data",
        synth_coco,
        "--cpus-per-worker",
        "0.5",
        "--num-cpus",
        "2",
        "--storage",
        str(tmp_path / "runs"),
        "--output",
        str(tmp_path / "resumed"),
        "--name",
        "interrupted",
    )
    _kill_at_first_checkpoint(args, tmp_path / "runs" / "interrupted", tmp_path / "killed.log")
    # the same flags again, as after a crash; on the tests' Ray (a fresh node, as the killed one is gone)
    assert job_main("train", *args[2:]) == 0
    record = json.loads((tmp_path / "resumed" / "training.json").read_text())
    assert record["final_step"] == 16 and record["final_metrics"]["resumed_from_step"] in (4, 8, 12)

    a, b = (final_checkpoint_state(run) for run in (straight_training_run, tmp_path / "runs" / "interrupted"))
    assert a["step"] == b["step"] == 16 and a["scheduler"] == b["scheduler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments = [(x["state"][k]["momentum_buffer"]) for x in (a["optimizer"], b["optimizer"]) for k in sorted(x["state"])]
    half = len(moments) // 2
    assert half and all(torch.equal(u, v) for u, v in zip(moments[:half], moments[half:]))


@pytest.mark.cuda
def test_training_on_the_gpu_with_amp_learns_and_resumes(synth_coco, tmp_path):
    """--gpus-per-worker 1: a CUDA worker with AMP (NCCL and SyncBN take a GPU per worker, so
    one machine's single GPU runs one worker), killed after its first checkpoint: the same
    command again goes on from a checkpoint and learns."""
    args = _train_cmd(
        "--task",
        "parts",
        "--data",
        synth_coco,
        "--output",
        str(tmp_path / "parts-gpu"),
        "--workers",
        "1",
        "--gpus-per-worker",
        "1",
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--input-size",
        "64",
        "--lr",
        "0.05",
        "--warmup-steps",
        "5",
        "--checkpoint-every",
        "20",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "gpu",
        "--base-bundle",
        "",
    )
    _kill_at_first_checkpoint(args, tmp_path / "runs" / "gpu", tmp_path / "killed.log")
    resumed = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((tmp_path / "parts-gpu" / "training.json").read_text())
    assert record["final_step"] == 60 and record["final_metrics"]["resumed_from_step"] in (20, 40)
    assert record["metrics"]["val_metric"] > record["metrics"]["val_initial"], record


@pytest.mark.slow
def test_clothing_detector_trains_and_publishes_its_classes(synth_coco, tmp_path):
    out = tmp_path / "clothing-v1"
    assert (
        job_main(
            "train",
            "--task",
            "clothing",
            "--data",
            synth_coco,
            "--output",
            str(out),
            "--workers",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--input-size",
            "96",
            "--checkpoint-every",
            "2",
            "--val-samples",
            "4",
            "--storage",
            str(tmp_path / "runs"),
        )
        == 0
    )
    record = json.loads((out / "training.json").read_text())
    metrics = record["metrics"]
    # the bundle was chosen by held-out box AP, scored beside the untrained network's, with all 12 COCO stats
    assert record["final_step"] == 2 and metrics["val_metric"] == metrics["val_box_ap"] and "val_initial" in metrics
    assert {f"val_box_{s}" for s in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100", "ar_large")} <= set(metrics)
    clothing = load_bundle(str(out)).stages["clothing"]
    assert clothing.architecture == "maskrcnn_mobilenet_v3_large_fpn"
    assert set(clothing.classes) <= set(data.taxonomy.DEEPFASHION2) and len(clothing.classes) >= 5


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file or directory"),
        ('{"images": [], "annotations": [], "categories": []}', "has 0 training and 0 held-out parts samples"),
    ],
)
def test_bad_training_data_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "coco.json"
    if content:
        path.write_text(content)
    assert job_main("train", "--task", "parts", "--data", str(path), "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_training_error_leaves_the_process_as_one_line(tmp_path):
    proc = subprocess.run(
        _train_cmd("--task", "parts", "--data", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and "No such file or directory" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )
