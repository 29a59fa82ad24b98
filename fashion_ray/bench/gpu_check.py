"""The GPU check: every CUDA path of the product exercised and measured by one command.

Each step runs in a process of its own under its own time budget, so a crash or a hang in
one (a CUDA provider that does not load, a hung NCCL group) costs that step and never the
rest. Every figure, every failure (with the end of its output) and the GPU's utilisation
and memory sampled during each step go into one JSON, rewritten after every step so a run
cut off by its lease still leaves what it measured.

Steps, in the order that gives the most when time runs out:

- install: onnxruntime-gpu in place of onnxruntime and the pinned torch, from an index or a
  wheel folder (optional);
- environment: torch, CUDA, the GPU, onnxruntime's providers with a real session on the
  person detector (NanoDet-g) that must run on the CUDA provider, Ray;
- cascade: jobs/benchmark.py on the bootstrap bundle, person -> clothing -> parts -> actions,
  over real person cut-outs: pipeline vs the bare loop in the same run, images/s per stage,
  AMP on/off and JPEG decode in the tasks vs nvJPEG in the person actor, each with its ratio;
- fractional_actors: the pipeline alone with several actors per stage sharing the one GPU;
- training: Ray Train samples/s of the part segmenter and the garment parser on one worker
  (one GPU with AMP, NCCL);
- serve: the served cascade's /v1/label latency for 1 and 4 clients against the same
  cascade in one process, both on the device;
- cuda_tests: the test suite's CUDA tests (`pytest -m cuda`).

`--device cpu --quick` runs the same steps on a CPU machine in a few minutes, so the script
is tested where no GPU is (tests/test_gpu_check.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

from fashion_ray.samplers import GpuUtilisation
from fashion_ray.taxonomy import STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASCADE = ",".join(STAGES)  # every model stage, as the jobs' --stages takes them
STEPS = ("install", "environment", "cascade", "fractional_actors", "training", "serve", "cuda_tests")
OUTPUT_TAIL = 6000  # characters of a failed step's output kept in the JSON
PINNED_TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # the project's pins (README, .ci/run)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    budget_s: float
    output: str = "json"  # what its stdout ends with: "json" (one object), "pytest" (a summary line) or "none"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each step does: a full check on a GPU, or a quick one on a CPU."""

    images: int
    actors: int  # per stage, in the fractional_actors step
    fractional_stages: str  # the stages of that step
    train_steps: int
    train_tasks: str  # the models the training step trains, one Ray Train run each
    train_input_size: int  # 0: each task's default
    train_scenes: int  # the synthetic scenes it trains on (made first, in the step)
    requests_per_client: int
    serve_stages: str  # the served app's stages
    serve_set: str  # and their resource overrides
    budget_scale: float

    @classmethod
    def of(cls, quick: bool) -> "Sizes":
        # on a GPU, 400 images keep Ray's start-up under a tenth of a cascade run; the quick
        # check (a CPU, the test suite) runs each path once with the fewest processes: two
        # actors of one stage show actors sharing, one model trains on a few scenes (the
        # suite trains both elsewhere), one person replica serves alone (the suite serves the
        # whole cascade)
        if quick:
            return cls(
                images=2,
                actors=2,
                fractional_stages="person",
                train_steps=4,
                train_tasks="garments",
                train_input_size=64,
                train_scenes=40,
                requests_per_client=1,
                serve_stages="person",
                serve_set="person.min_actors=1,person.max_actors=1",
                budget_scale=3.0,
            )
        return cls(
            images=400,
            actors=3,
            fractional_stages=CASCADE,
            train_steps=120,
            train_tasks="parts,garments",
            train_input_size=0,
            train_scenes=240,
            requests_per_client=8,
            serve_stages=CASCADE,
            serve_set="",
            budget_scale=1.0,
        )


def plan(
    device: str, quick: bool, *, install: bool = False, wheels: str | None = None, python: str = sys.executable
) -> list[Step]:
    """The steps of one check, with their commands and time budgets (seconds)."""
    sizes, job = Sizes.of(quick), lambda name: os.path.join(ROOT, "jobs", name)

    def cascade(stages: str) -> list[str]:
        return [
            python,
            job("benchmark.py"),
            "--device",
            device,
            "--bundle",
            "bootstrap",
            "--corpus",
            "people",
            "--stages",
            stages,
            "--images",
            str(sizes.images),
            "--memory-sizes",
            "none",
            "--driver-rows",  # the driver's bookkeeping is the same on any machine: not a GPU figure
            "0",
        ]

    steps = []
    if install:
        # onnxruntime and onnxruntime-gpu are one module: the CPU build goes first
        source = f"--no-index --find-links {shlex.quote(wheels)} " if wheels else ""
        pip = f"{shlex.quote(python)} -m pip"
        steps.append(
            Step(
                "install",
                (
                    "sh",
                    "-c",
                    f"{pip} uninstall -y -q onnxruntime; "
                    f"{pip} install -q {source}onnxruntime-gpu {' '.join(PINNED_TORCH)}",
                ),
                120,
                "none",
            )
        )
    steps += [
        Step("environment", (python, job("gpu_check.py"), "--probe", "--device", device), 60),
        # autocast is CUDA's: on a CPU, AMP off would run the same thing again
        Step(
            "cascade",
            (
                *cascade(CASCADE),
                "--actors",
                "1",
                "--amp",
                "on,off" if device == "cuda" else "on",
                "--jpeg-decode",
                "tasks,person",
            ),
            150,
        ),
        Step(
            "fractional_actors",
            (*cascade(sizes.fractional_stages), "--actors", str(sizes.actors), "--no-baseline"),
            60,
        ),
        Step(
            "training",
            (
                python,
                job("benchmark.py"),
                "--training-only",
                "--train-workers",
                "1",
                "--train-tasks",
                sizes.train_tasks,
                "--train-steps",
                str(sizes.train_steps),
                "--train-input-size",
                str(sizes.train_input_size),
                "--train-scenes",
                str(sizes.train_scenes),
                "--train-gpus-per-worker",
                "1" if device == "cuda" else "0",
            ),
            120,
        ),
        Step(
            "serve",
            (
                python,
                job("benchmark_serve.py"),
                "--device",
                device,
                "--clients",
                "1,4",
                "--requests-per-client",
                str(sizes.requests_per_client),
                "--stages",
                sizes.serve_stages,
                "--set",
                sizes.serve_set,
                "--port",
                str(_free_port()),
            ),
            60,
        ),
        Step(
            "cuda_tests",
            (
                python,
                "-m",
                "pytest",
                "-rs",
                "-q",
                "-n",
                "0",
                "-p",
                "no:cacheprovider",
                "-m",
                "cuda",
                *_cuda_test_files(),
            ),
            90,
            "pytest",
        ),
    ]
    # budgets are for a GPU node (540 s: a 10-minute call with room for start-up); a 2-core CPU
    # doing the quick workloads needs longer for the same steps
    return [dataclasses.replace(s, budget_s=s.budget_s * sizes.budget_scale) for s in steps]


def _cuda_test_files() -> list[str]:
    """The test modules that hold CUDA tests: collecting only those spares importing the rest
    (about 15 s on a 2-core machine); the whole folder where none is found."""
    folder = pathlib.Path(ROOT, "tests")
    marked = [str(path) for path in sorted(folder.glob("test_*.py")) if "mark.cuda" in path.read_text("utf-8")]
    return marked or [str(folder)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json_object(text: str) -> dict:
    """The JSON object a job printed last (its own lines before it are not JSON; a log line of
    Ray's after it, from a worker shutting down, is ignored)."""
    start = text.rfind("\n{")
    obj, _ = json.JSONDecoder().raw_decode(text[start + 1 if start >= 0 else text.index("{") :])
    return obj


def pytest_summary(text: str) -> dict:
    """Counts from pytest's last line, and the reasons of the skipped tests (-rs)."""
    last = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
    skipped = sorted(set(re.findall(r"^SKIPPED \[\d+\] (.+)$", text, flags=re.M)))
    return {"counts": counts, "skipped": skipped}


def run_step(step: Step, log_dir: str) -> dict:
    """Run one step under its budget; its figures, or why it failed, and the GPU's use meanwhile."""
    log_path = os.path.join(log_dir, f"{step.name}.log")
    started = time.perf_counter()
    # the checkout importable without an install (a bare machine), ahead of any other copy
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
    }
    with GpuUtilisation() as gpu, open(log_path, "w") as log:
        # a session of its own: over budget, the step goes with everything it started (Ray too)
        proc = subprocess.Popen(
            step.argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env, start_new_session=True
        )
        try:
            stdout, _ = proc.communicate(timeout=step.budget_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            code = None
    result = {
        "command": " ".join(step.argv),
        "budget_s": step.budget_s,
        "seconds": round(time.perf_counter() - started, 1),
        "exit_code": code,
        "ok": code == 0,
        "figures": None,
        "error": None,
        "gpu": gpu.summary(),
    }
    try:
        if step.output == "json" and stdout.strip():
            result["figures"] = last_json_object(stdout)
        elif step.output == "pytest":
            result["figures"] = pytest_summary(stdout)
            result["ok"] = code == 0 and not result["figures"]["counts"].get("failed")
    except ValueError as exc:
        result["ok"], result["error"] = False, f"no JSON figures in the output ({exc})"
    if code is None:
        result["error"] = f"over its budget of {step.budget_s:.0f} s: stopped"
    elif code != 0:
        result["error"] = f"exit code {code}"
    if not result["ok"]:
        with open(log_path) as fh:
            result["output_tail"] = (stdout + fh.read())[-OUTPUT_TAIL:]
    return result


def run_check(
    device: str,
    quick: bool,
    output: str,
    *,
    install: bool = False,
    wheels: str | None = None,
    only: tuple[str, ...] = (),
) -> dict:
    """Run every planned step (or only the named ones); the report is written to
    output/gpu_check.json after each step."""
    os.makedirs(os.path.join(output, "logs"), exist_ok=True)
    report = {
        "device": device,
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": {},
        "all_ran": False,
    }
    path = os.path.join(output, "gpu_check.json")
    for step in plan(device, quick, install=install, wheels=wheels):
        if only and step.name not in only:
            continue
        print(f"[gpu_check] {step.name} (budget {step.budget_s:.0f} s) ...", file=sys.stderr, flush=True)
        report["steps"][step.name] = result = run_step(step, os.path.join(output, "logs"))
        print(
            f"[gpu_check] {step.name}: {'ok' if result['ok'] else 'FAILED: ' + str(result['error'])} "
            f"in {result['seconds']} s",
            file=sys.stderr,
            flush=True,
        )
        _write(path, report)
    report["all_ran"] = all(r["ok"] for r in report["steps"].values())
    report["summary"] = summarise(report)
    _write(path, report)
    return report


def _write(path: str, report: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp, path)


def summarise(report: dict) -> dict:
    """The headline figures docs/figures.md records, pulled out of the steps' own JSON."""
    out = {}

    def figures(step: str) -> dict:  # {} for a step that did not run or printed no figures
        return (report["steps"].get(step) or {}).get("figures") or {}

    cascade, fractional, training, serve, tests = (
        figures(s) for s in ("cascade", "fractional_actors", "training", "serve", "cuda_tests")
    )
    if cascade:
        out["stage_images_per_s"] = cascade["baseline"]["stage_images_per_s"]
        out["pipeline_images_per_s"] = cascade["pipeline"]["images_per_s"]
        out["pipeline_vs_bare_loop"] = cascade["efficiency_end_to_end"]
        out["variants_ratio_to_first"] = {
            name: v.get("ratio_to_first", 1.0) for name, v in cascade.get("variants", {}).items()
        }
        out["pipeline_gpu"] = cascade["pipeline"].get("gpu")
    if fractional:
        out["fractional_actors"] = {
            "actors_per_stage": fractional["actors_per_stage"],
            "images_per_s": fractional["pipeline"]["images_per_s"],
            "gpu": fractional["pipeline"].get("gpu"),
        }
    if training:
        out["training_samples_per_s"] = {
            task: t["workers"]["1"]["samples_per_s"] for task, t in training["training"].items()
        }
    if serve:
        out["serve_p50_ms"] = {str(r["clients"]): r.get("p50_ms") for r in serve["served"]}
        out["serve_ratio_vs_in_process"] = serve["ratio_vs_baseline"]
    if tests:
        out["cuda_tests"] = tests["counts"]
    return out


def probe(device: str) -> tuple[dict, list[str]]:
    """What this machine offers the CUDA paths, and what is missing for `device`."""
    import platform

    figures: dict = {"python": platform.python_version(), "device_asked": device}
    problems = []
    try:
        import torch

        figures["torch"] = torch.__version__
        figures["torch_cuda"] = torch.version.cuda
        figures["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            figures["gpu"] = {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count(),
                "capability": f"{props.major}.{props.minor}",
            }
            figures["nvjpeg"] = _nvjpeg_works()
        elif device == "cuda":
            problems.append("torch sees no CUDA device")
    except ImportError as exc:
        problems.append(f"torch: {exc}")
    try:
        import onnxruntime as ort

        from fashion_ray.models import onnx

        figures["onnxruntime"] = ort.__version__
        figures["onnxruntime_providers"] = ort.get_available_providers()
        model = os.path.join(ROOT, "fashion_ray", "assets", "bundles", "bootstrap", "nanodet_g_416.onnx")
        with open(model, "rb") as fh:
            figures["nanodet_session_providers"] = onnx.session(fh.read(), device).get_providers()
    except Exception as exc:  # noqa: BLE001 (any failure here is the finding)
        problems.append(f"onnxruntime on {device}: {exc}")
    try:
        import ray

        figures["ray"] = ray.__version__
    except ImportError as exc:
        problems.append(f"ray: {exc}")
    try:
        figures["nvidia_smi"] = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        figures["nvidia_smi"] = None
    return figures, problems


def _nvjpeg_works() -> bool:
    """The person actor's batched JPEG decode (media.decode_jpegs) on the GPU, on one small JPEG."""
    import io

    import numpy as np
    from PIL import Image

    from fashion_ray import media

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, format="JPEG")
    [image] = media.decode_jpegs([buf.getvalue()], [(16, 16)], None, "cuda")
    return image is not None and image.shape == (16, 16, 3)
