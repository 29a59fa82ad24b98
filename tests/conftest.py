"""Shared fixtures: one real local Ray per session, a real S3 server (moto over HTTP), a
plumbing bundle (random torchvision weights: for tests of the pipeline, never of labels),
the default labelling run, a Ray head for `ray job submit`, and the synthetic training set
with one uninterrupted training run that the resume tests compare against. Plain helpers:
helpers.py.

The suite runs on pytest-xdist workers (`-n auto`, modules kept whole by `--dist loadscope`,
see pyproject.toml): what a worker's tests touch live (a Ray, the S3 server, a Ray head) is its
own; the artefacts that take tens of seconds to make (the default run, the training set, the
reference training run) are made once by the first worker that needs them and read by the others."""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from filelock import FileLock

from helpers import (
    NO_CUDA_REASON,
    RAY_CLI,
    SAMPLE_CORPUS,
    SECRET_MARKER,
    STRAIGHT_TRAINING,
    RayHead,
    bad_file_catalogue,
    cuda_available,
    free_port,
    job_main,
    run_cli,
    short_temp_dir,
    start_ray_head,
    stop_process_group,
)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train on the tests' machine: its controller looks at the workers every 0.5 s instead of 2 s
# (a run's start, end and restart each waited for that poll), and no preemption watcher or metrics
# actors, which a spot-instance cluster wants and a 16-step test run pays a process each for
# (two 16-step runs: 61 -> 49 s, 76 -> 70 CPU-s). Inherited by every Ray and job the tests start.
for _name, _value in (
    ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
    ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    ("RAY_TRAIN_METRICS_ENABLED", "0"),
):
    os.environ.setdefault(_name, _value)
# every Ray of the tests (theirs, the CLI runs', the clusters') keeps its sockets under a short
# folder: Unix socket paths are limited to 107 bytes, and a long TMPDIR (macOS) is past that
if os.path.isdir("/tmp"):
    os.environ.setdefault("RAY_TMPDIR", "/tmp")
# bundle files from S3 are cached per machine: the tests' own cache, inherited by Ray workers, CLI runs
# and xdist workers, and removed by the process that made it (about 110 MB a run)
if "FASHION_RAY_CACHE" not in os.environ:
    os.environ["FASHION_RAY_CACHE"] = tempfile.mkdtemp(prefix="fashion-ray-cache-")
    atexit.register(shutil.rmtree, os.environ["FASHION_RAY_CACHE"], ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per CPU, at most 4 (each worker has its own Ray). More workers than
    CPUs were tried: Ray's node start (30 s, fixed in Ray) then times out under the load."""
    return max(1, min(4, os.cpu_count() or 1))


def _made_once(tmp_path_factory, name: str, make) -> pathlib.Path:
    """A folder `make(folder)` fills, made once per test run: by this process alone, or under
    xdist by the first worker that asks while the others wait on a lock, then read by all."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    shared = pathlib.Path(tmp_path_factory.getbasetemp().parent)  # the run's folder, above every worker's
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


# the modules that take longest, longest first (CPU-seconds in one process, docs/development.md):
# xdist hands modules to workers in collection order (--no-loadscope-reorder); longest first
# leaves the short modules to even out the workers' ends, where one long module started last
# would leave the other worker idle while it runs
LONGEST_FIRST = (
    "test_cluster",
    "test_gpu_check",
    "test_serving",
    "test_incremental",
    "test_training",
    "test_ray_job_submit",
    "test_export",
    "test_pipeline",
    "test_readme",
    "test_hostile_files",
    "test_garments",
    "test_video",
    "test_person_recall",
    "test_actions",
    "test_label_job",
    "test_synth",
    "test_run",
)


def pytest_collection_modifyitems(config, items):
    """The longest modules first; the CUDA paths (nvJPEG, GPU actor pools, AMP, NCCL) run where
    a GPU is and say why they skip elsewhere (their CPU twins run everywhere)."""

    def rank(item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1]
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's own order is kept
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda and not cuda_available():
        for item in cuda:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA_REASON))


_test_started: dict[str, tuple[float, float]] = {}  # wall clock and CPU seconds at its start
_timeline_file: str | None = None  # set in the processes that run tests
_tree_cpu = None  # a samplers.TreeCPU of this process, with a timeline file


def pytest_configure(config):
    """FASHION_RAY_TEST_TIMELINE=FILE appends a line per test to FILE: worker, start, end (set-up
    and tear-down included), test id, and the CPU seconds its worker's process tree used meanwhile
    (samplers.TreeCPU); `python tests/timeline.py FILE` says how each worker's time went
    (docs/development.md). Written where the tests run: by the workers under xdist."""
    global _timeline_file, _tree_cpu
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        _timeline_file = os.environ.get("FASHION_RAY_TEST_TIMELINE")
        if _timeline_file:
            from fashion_ray.samplers import TreeCPU

            _tree_cpu = TreeCPU().__enter__()  # sampled until this process ends


def pytest_runtest_logstart(nodeid, location):
    if _timeline_file:
        _test_started[nodeid] = (time.time(), _tree_cpu.seconds())


def pytest_runtest_logfinish(nodeid, location):
    if _timeline_file:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        started, cpu = _test_started.pop(nodeid)
        cpu = _tree_cpu.seconds() - cpu
        with open(_timeline_file, "a") as fh:
            fh.write(f"{worker}\t{started:.1f}\t{time.time():.1f}\t{nodeid}\t{cpu:.1f}\n")


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """Started after the S3 server so its workers inherit the endpoint and credentials."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def plumbing_bundle(tmp_path_factory):
    """Random-weight torchvision bundle: exercises loading, shapes and the cascade, not accuracy."""
    import torch

    from fashion_ray import taxonomy
    from fashion_ray.models.bundle import StageModel, save_bundle
    from fashion_ray.models.torchvision_models import build_model

    torch.manual_seed(0)
    specs = {
        # score threshold 0 so that random weights still yield a few persons/garments to carry
        "person": StageModel(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            ("person",),
            160,
            0.0,
            0.5,
            model_options={"box_detections_per_img": 2},
        ),
        "clothing": StageModel(
            "maskrcnn_mobilenet_v3_large_fpn",
            taxonomy.DEEPFASHION2,
            128,
            0.0,
            0.5,
            model_options={"box_detections_per_img": 2},
        ),
        "parts": StageModel("lraspp_mobilenet_v3_large", taxonomy.PARTS, 96),
    }
    path = str(tmp_path_factory.mktemp("bundle") / "plumbing-v1")
    save_bundle(
        path,
        "plumbing",
        "1.2.3",
        {
            name: (
                spec,
                build_model(
                    spec.architecture, num_classes=len(spec.classes) + 1, input_size=spec.input_size
                ).state_dict(),
            )
            for name, spec in specs.items()
        },
    )
    return path


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The labelling job run as a user runs it: CLI, default (bootstrap) bundle, on the real
    sample photos plus the bad-file catalogue. Returns (corpus folder, output folder, process)."""

    def make(base):
        corpus = base / "corpus"
        shutil.copytree(SAMPLE_CORPUS, corpus)
        for name, (data, _) in bad_file_catalogue().items():
            (corpus / name).write_bytes(data)
        # credentials in the environment, as on a real machine: none of it may reach outputs or logs
        proc = run_cli(
            "--input",
            str(corpus),
            "--output",
            str(base / "labels"),
            "--num-cpus",
            "2",
            "--rows-per-shard",
            "6",
            env={"AWS_ACCESS_KEY_ID": "AKIAFASHIONRAYTEST", "AWS_SECRET_ACCESS_KEY": SECRET_MARKER},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (base / "process.json").write_text(
            json.dumps({"args": proc.args, "stdout": proc.stdout, "stderr": proc.stderr})
        )

    base = _made_once(tmp_path_factory, "default_run", make)
    printed = json.loads((base / "process.json").read_text())
    return (
        base / "corpus",
        base / "labels",
        subprocess.CompletedProcess(printed["args"], 0, printed["stdout"], printed["stderr"]),
    )


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head in its own process group: stopping it must not touch the tests' own Ray
    (`ray stop` would kill every Ray process on the machine). One per module that asks: a head
    with its dashboard burns about 5 CPU-s a minute idle, more than starting one costs, and a
    session-wide head would idle from its first user to the end of the run."""
    temp = pathlib.Path(short_temp_dir("fr-head-"))
    # the dashboard opens Unix sockets under TMPDIR too: the short folder for those as well
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], "TMPDIR": str(temp)}
    # a free agent port too: the default (52365) belongs to the tests' own local Ray
    port, dashboard, agent = free_port(), free_port(), free_port()
    head, log = start_ray_head(
        temp,
        env,
        f"--port={port}",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-agent-listen-port={agent}",
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    # ready when the dashboard answers and the job agent listens (a submission waits 10 s more
    # for the agent to register); a trivial `ray job submit` as the probe cost 10-30 s of CPU
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not (_answers(no_proxy, f"{address}/api/version") and _listens(agent)):
        assert head.poll() is None and time.time() < deadline, (temp / "head.log").read_text()[-3000:]
        time.sleep(0.5)
    yield RayHead(RAY_CLI, address, f"127.0.0.1:{port}", env)
    stop_process_group(head, log)
    shutil.rmtree(temp, ignore_errors=True)


def _answers(opener, url: str) -> bool:
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def synth_coco(ray_session, tmp_path_factory):
    """200 synthetic scenes converted to the canonical COCO training file (the jobs' own
    main(), on the tests' Ray); returns its path."""

    def make(base):
        assert job_main("make_synthetic", "--output", str(base / "synth"), "--count", "200") == 0
        assert (
            job_main(
                "convert", "--format", "labels", "--input", str(base / "synth"), "--output", str(base / "coco.json")
            )
            == 0
        )

    return str(_made_once(tmp_path_factory, "train-data", make) / "coco.json")


@pytest.fixture(scope="session")
def straight_training_run(synth_coco, tmp_path_factory):
    """STRAIGHT_TRAINING run once, uninterrupted, on the tests' Ray; returns its run folder."""

    def make(base):
        assert (
            job_main(
                "train",
                *STRAIGHT_TRAINING,
                "--data",
                synth_coco,
                "--cpus-per-worker",
                "0.5",
                "--output",
                str(base / "bundle"),
                "--storage",
                str(base / "runs"),
                "--name",
                "straight",
            )
            == 0
        )

    return _made_once(tmp_path_factory, "straight", make) / "runs" / "straight"
