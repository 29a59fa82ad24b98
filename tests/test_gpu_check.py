"""The GPU check (jobs/gpu_check.py) run here as `--device cpu --quick`: every step runs and
its report has every figure docs/figures.md's GPU section reads, so the script cannot rot before a
GPU is lent; its parsing and time budgets by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fashion_ray.bench import gpu_check
from helpers import ROOT


def test_budgets_fit_one_ten_minute_call_and_every_step_is_planned():
    steps = gpu_check.plan("cuda", quick=False, install=True, wheels="/wheels")
    assert [s.name for s in steps] == list(gpu_check.STEPS)
    assert sum(s.budget_s for s in steps if s.name != "install") <= 540  # a lent machine's call: 600 s
    install = steps[0].argv[-1]
    assert "uninstall -y -q onnxruntime;" in install
    assert install.endswith(
        "install -q --no-index --find-links /wheels onnxruntime-gpu torch==2.14.1 torchvision==0.29.1"
    )
    with open(os.path.join(ROOT, ".ci", "run")) as fh:  # the pins CI installs
        ci = fh.read()
    assert all(pin in ci for pin in gpu_check.PINNED_TORCH)

    def flag(step, name):
        return step.argv[step.argv.index(name) + 1]

    cascade, training = steps[2], steps[4]
    assert (flag(cascade, "--amp"), flag(cascade, "--jpeg-decode"), flag(cascade, "--device")) == (
        "on,off",
        "tasks,person",
        "cuda",
    )
    assert flag(training, "--train-gpus-per-worker") == "1" and flag(training, "--train-tasks") == "parts,garments"
    assert flag(training, "--train-scenes") == "240" and flag(steps[5], "--stages") == "person,clothing,parts,actions"
    # the quick check trains on fewer scenes and serves the person stage alone (the suite does the rest)
    quick = {s.name: s for s in gpu_check.plan("cpu", quick=True)}
    assert flag(quick["training"], "--train-scenes") == "40" and flag(quick["serve"], "--stages") == "person"
    # on a CPU autocast does nothing: AMP off is not run again
    assert flag(gpu_check.plan("cpu", quick=True)[1], "--amp") == "on"


def test_reports_are_read_from_the_jobs_own_output():
    printed = 'Ray started\n{ not json\n{\n  "images": 6,\n  "nested": {"a": 1}\n}\n'
    assert gpu_check.last_json_object(printed) == {"images": 6, "nested": {"a": 1}}
    shutdown = printed + "(raylet) Task ServeController.graceful_shutdown failed.\n"
    assert gpu_check.last_json_object(shutdown) == {"images": 6, "nested": {"a": 1}}
    with pytest.raises(ValueError):
        gpu_check.last_json_object("no figures at all")
    out = (
        "SKIPPED [1] tests/test_media.py:74: no CUDA device\nSKIPPED [2] tests/test_x.py:9: no CUDA device\n"
        "1 failed, 3 passed, 5 skipped, 240 deselected in 12.3s\n"
    )
    summary = gpu_check.pytest_summary(out)
    assert summary["counts"] == {"failed": 1, "passed": 3, "skipped": 5, "deselected": 240}
    assert summary["skipped"] == ["tests/test_media.py:74: no CUDA device", "tests/test_x.py:9: no CUDA device"]


def test_a_step_over_its_budget_is_stopped_with_what_it_started_and_the_rest_go_on(tmp_path):
    sleeper = gpu_check.Step(
        "hang",
        (
            sys.executable,
            "-c",
            "import subprocess, time; "
            "subprocess.Popen(['sleep', '600']); print('started', flush=True); time.sleep(600)",
        ),
        2,
    )
    result = gpu_check.run_step(sleeper, str(tmp_path))
    assert result["ok"] is False and result["exit_code"] is None and "over its budget of 2 s" in result["error"]
    assert result["seconds"] < 30 and "started" in result["output_tail"]
    # the grandchild went with it: nothing of the step is left running
    left = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.split()
    assert not left
    broken = gpu_check.run_step(
        gpu_check.Step("broken", (sys.executable, "-c", "raise SystemExit('CUDA provider missing')"), 30), str(tmp_path)
    )
    assert broken["exit_code"] == 1 and "CUDA provider missing" in broken["output_tail"]


@pytest.mark.slow
def test_the_quick_cpu_check_runs_every_step_and_reports_every_figure(ray_session, tmp_path):
    # the steps' jobs join the tests' Ray (RAY_ADDRESS, as under `ray job submit`) instead of
    # starting a Ray each: the check's own work is what is tested here
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "jobs", "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1500,
        env={**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address},
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {name: step.get("output_tail", "")[-1500:] for name, step in report["steps"].items() if not step["ok"]}
    assert proc.returncode == 0 and not failed and report["all_ran"], failed or proc.stderr[-3000:]
    assert list(report["steps"]) == [s for s in gpu_check.STEPS if s != "install"]
    assert all(os.path.getsize(tmp_path / "logs" / f"{name}.log") >= 0 for name in report["steps"])

    env = report["steps"]["environment"]["figures"]
    assert env["nanodet_session_providers"][0] == "CPUExecutionProvider" and env["problems"] == [] and env["ray"]
    summary = report["summary"]
    assert set(summary["stage_images_per_s"]) == {"person", "clothing", "parts", "actions"}
    assert summary["pipeline_images_per_s"] > 0 and summary["pipeline_vs_bare_loop"] > 0
    assert set(summary["variants_ratio_to_first"]) == {"amp=on jpeg_decode=tasks", "amp=on jpeg_decode=person"}
    assert summary["fractional_actors"]["actors_per_stage"] == 2 and summary["fractional_actors"]["images_per_s"] > 0
    assert set(summary["training_samples_per_s"]) == {"garments"}
    assert all(v > 0 for v in summary["training_samples_per_s"].values())
    assert set(summary["serve_p50_ms"]) == {"1", "4"} and all(v > 0 for v in summary["serve_p50_ms"].values())
    # no GPU here: the CUDA tests are collected and every one says why it skipped
    assert summary["cuda_tests"]["skipped"] >= 4 and not summary["cuda_tests"].get("failed")
    assert summary["pipeline_gpu"] is None and report["steps"]["cascade"]["gpu"] is None
