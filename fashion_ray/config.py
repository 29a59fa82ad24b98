"""Job configuration: frozen dataclasses, validated on construction, no hardware probing.

Resource defaults are chosen to work on a 2-core laptop with no GPU *and* to be the shape
of a GPU cluster configuration: every actor pool takes a fraction of a CPU so that read
and decode tasks always have a CPU left (on Ray 2.60 a pool that takes every CPU leaves
reads "backpressured" forever). On a GPU cluster pass --device cuda and raise max_actors.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from fashion_ray.errors import InputError, RunError
from fashion_ray.storage import StorageOptions
from fashion_ray.taxonomy import ACTIONS_STAGE, PERSON_STAGE, STAGES

DEVICES = ("cpu", "cuda")
RELABEL_CHOICES = ("changed", "outdated", "all")
JPEG_DECODE_CHOICES = ("tasks", "person")
# the default bound on what waits between stages (LabelJobConfig.in_flight_budget_mb); 512 MiB
# kept a 2-core run's peak memory flat from 200 to 1,000 images at the throughput of no bound
IN_FLIGHT_FLOOR_MB = 512
IN_FLIGHT_PER_ACTOR_MB = 128
SAMPLE_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "sample_corpus")


def field_defaults(cls) -> dict:
    """A dataclass's field defaults, for command-line parsers: one place holds each default."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


class ConfigError(InputError):
    """A configuration value that cannot work; the message names the valid choices."""


@dataclass(frozen=True)
class VideoSampling:
    fps: float | None = 1.0  # frames per second of video time (AVA annotates at 1 Hz)
    every_n: int | None = None  # or every Nth frame (then fps is ignored)
    start_s: float = 0.0  # window [start_s, end_s) in seconds of video time
    end_s: float | None = None
    max_frames: int | None = None  # cap per video
    # rows one file may become (sampled frames or pages); past it, one "too_many_frames" row
    # says what was left out (a 3 MB TIFF can hold 30,000 pages)
    max_frames_per_file: int = 10_000
    frames_per_task: int = 16  # sampled frames decoded by one task
    # a file's probe, and each segment's decode, gives up after this long: a "timeout" row
    # (a hostile file cannot hold a task, and with it a scheduled run, forever)
    timeout_s: float = 60.0

    def __post_init__(self):
        if self.every_n is None and (self.fps is None or self.fps <= 0):
            raise ConfigError("give --video-fps > 0 or --video-every-n >= 1")
        if self.every_n is not None and self.every_n < 1:
            raise ConfigError("--video-every-n must be >= 1")
        if self.start_s < 0 or (self.end_s is not None and self.end_s <= self.start_s):
            raise ConfigError("the window needs 0 <= --video-start < --video-end")
        if (
            (self.max_frames is not None and self.max_frames < 1)
            or self.frames_per_task < 1
            or self.max_frames_per_file < 1
        ):
            raise ConfigError("--video-max-frames, --max-frames-per-file and frames_per_task must be >= 1")
        if self.timeout_s <= 0:
            raise ConfigError("--file-timeout must be > 0 seconds")


@dataclass(frozen=True)
class Device:
    """Where a stage's models run: the part of its resources the actor itself reads. AMP is
    used only on CUDA, where fp16 autocast is safe for inference."""

    name: str = "cpu"  # one of DEVICES
    amp: bool = True
    torch_threads: int = 1  # intra-op threads per actor; Ray would otherwise pick from num_cpus

    def __post_init__(self):
        if self.name not in DEVICES:
            raise ConfigError(f"device {self.name!r} is not one of: {', '.join(DEVICES)}")

    def setup(self):
        import torch

        torch.set_num_threads(max(1, self.torch_threads))
        if self.name == "cuda" and not torch.cuda.is_available():
            raise RunError("stage configured for device 'cuda' but this actor sees no GPU (set num_gpus > 0)")
        return torch.device(self.name)

    def autocast(self):
        import contextlib

        import torch

        if self.name == "cuda" and self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


@dataclass(frozen=True)
class StageResources:
    """How a stage is scheduled (actors, CPUs, GPUs, the node type) and where its models run
    (`runs_on`: its Device); `--set STAGE.FIELD=VALUE` overrides any field."""

    device: str = "cpu"  # one of DEVICES
    batch_size: int = 4  # images (person) or person crops (clothing, parts) per model call
    min_actors: int = 1
    max_actors: int = 1  # > min_actors lets Ray Data autoscale the pool
    num_cpus: float = 0.3  # three stages at 0.3 leave > 1 CPU of a 2-core node for reads
    num_gpus: float = 0.0  # fractions share one GPU between stages
    torch_threads: int = 1  # intra-op threads per actor (Device)
    amp: bool = True  # fp16 autocast, applied on CUDA only
    # a custom resource that marks the node type this stage runs on (e.g. "gpu_node"): each
    # actor asks for a sliver of it, so the stage lands only on nodes that declare it
    node_resource: str = ""

    def __post_init__(self):
        Device(self.device)  # one of DEVICES, or a ConfigError naming them
        if self.batch_size < 1 or self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ConfigError("batch_size >= 1 and 1 <= min_actors <= max_actors are required")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("num_cpus and num_gpus must be >= 0")
        if self.device == "cuda" and self.num_gpus == 0:
            raise ConfigError("device 'cuda' needs num_gpus > 0 (fractions such as 0.5 share a GPU)")

    @property
    def runs_on(self) -> Device:
        return Device(self.device, self.amp, self.torch_threads)


# One actor of each model stage fits on one GPU (0.3 x 3); scale out with max_actors.
GPU_STAGE = StageResources(device="cuda", batch_size=8, num_cpus=1.0, num_gpus=0.3, torch_threads=2)
# The actions stage reads keypoints, not pixels (rules, or a small MLP): a sliver of a CPU,
# and on the CPU on GPU clusters too, where a GPU share would sit idle.
ACTIONS_RESOURCES = StageResources(batch_size=16, num_cpus=0.1)


def default_resources(model_stage: StageResources = StageResources()) -> dict[str, StageResources]:
    """Every stage's resources: `model_stage` for the stages that run image models."""
    return {s: ACTIONS_RESOURCES if s == ACTIONS_STAGE else model_stage for s in STAGES}


def stage_resources(device: str = "cpu", overrides=()) -> dict[str, StageResources]:
    """Every stage's resources for a `--device` (the GPU preset on cuda) with "stage.field=value"
    overrides: the one mapping the job, serving and the benchmarks use."""
    Device(device)  # one of DEVICES, or a ConfigError naming them
    return apply_overrides(default_resources(GPU_STAGE if device == "cuda" else StageResources()), list(overrides))


def cascade_stages(stages) -> tuple[str, ...]:
    """The stages to run, checked and in cascade order whatever order the user typed."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"unknown stages {unknown} (valid: {', '.join(STAGES)})")
    if PERSON_STAGE not in stages:
        raise ConfigError("the person stage is required: clothing, parts and actions run on its persons")
    return tuple(s for s in STAGES if s in stages)


def parse_stages(text: str) -> tuple[str, ...]:
    """A `--stages` value ("person,clothing"), checked and in cascade order."""
    return cascade_stages([s.strip() for s in text.split(",") if s.strip()])


@dataclass(frozen=True)
class LabelJobConfig:
    inputs: tuple[str, ...]
    output: str
    bundle: str = "bootstrap"
    stages: tuple[str, ...] = STAGES
    resources: dict[str, StageResources] = field(default_factory=default_resources)
    read_batch_size: int = 16  # objects fetched and decoded per task
    decode_num_cpus: float = 0.5
    # where plain JPEGs are decoded: in the CPU tasks that fetch them, or batched in the person
    # actor on its device (nvJPEG with --device cuda); other formats and bad files stay on the tasks
    jpeg_decode: str = "tasks"
    write_num_cpus: float = 0.25  # shard writing is I/O; a small slice keeps it from being starved
    cpu_node_resource: str = ""  # like StageResources.node_resource, for the probe, decode, write and track tasks
    rows_per_shard: int = 256
    max_pixels: int = 64_000_000  # decompression-bomb guard, checked from the header
    max_bytes: int = 200 * 1024 * 1024
    work_max_side: int = 1280  # models see at most this long side; labels are in original pixels
    storage: StorageOptions = StorageOptions()
    video: VideoSampling = VideoSampling()  # which frames of video inputs become rows
    # Incremental runs label only inputs the output's ledger has not seen (or saw change),
    # and commit every commit_every_s so that a killed run loses at most that much work.
    incremental: bool = False
    relabel: str = "changed"  # changed | outdated (also inputs labelled by another bundle) | all
    commit_every_s: float = 60.0
    lease_ttl_s: float = 120.0  # a crashed run's lease blocks the output at most this long
    max_attempts: int = 2  # passes over inputs a fault lost before the run reports them unlabelled
    # a pass that moves no data for this long ends (nodes gone, nothing can be scheduled):
    # what it labelled is kept, the rest is reported, never a run that hangs forever
    stall_timeout_s: float = 600.0
    autoscaling: bool = False  # the cluster adds nodes on demand: a plan the nodes alive now cannot hold is not refused
    # decoded media allowed to wait in the object store between stages, whole job, in MiB (0:
    # in_flight_budget_mb's rule). Unbounded, Ray Data lets it grow towards a share of the
    # object store (GBs on a large node), so a run's peak memory grew with its corpus.
    max_in_flight_mb: int = 0
    # stage -> score threshold instead of the bundle's (e.g. person 0.05 to measure AP over every
    # candidate, as COCO evaluations do); the manifest's config records it beside the bundle
    score_thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "stages", cascade_stages(self.stages))
        for stage, value in self.score_thresholds.items():
            if stage not in STAGES or not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"score threshold {stage}={value}: the stage must be one of {', '.join(STAGES)} "
                    "and the value within 0..1"
                )
        if self.rows_per_shard < 1 or self.read_batch_size < 1:
            raise ConfigError("rows_per_shard and read_batch_size must be >= 1")
        if self.jpeg_decode not in JPEG_DECODE_CHOICES:
            raise ConfigError(f"jpeg_decode {self.jpeg_decode!r} is not one of: {', '.join(JPEG_DECODE_CHOICES)}")
        if self.relabel not in RELABEL_CHOICES:
            raise ConfigError(f"relabel {self.relabel!r} is not one of: {', '.join(RELABEL_CHOICES)}")
        if self.max_in_flight_mb < 0:
            raise ConfigError(f"max_in_flight_mb {self.max_in_flight_mb} must be >= 0 (0: the default rule)")
        if self.commit_every_s < 0 or self.lease_ttl_s < 5 or self.max_attempts < 1 or self.stall_timeout_s <= 0:
            raise ConfigError(
                "commit_every_s >= 0, lease_ttl_s >= 5, max_attempts >= 1 and stall_timeout_s > 0 are required"
            )

    def in_flight_budget_mb(self) -> int:
        """max_in_flight_mb, or by default IN_FLIGHT_PER_ACTOR_MB for each model-stage actor the
        job may run (a few batches queued for each at work_max_side 1280), at least
        IN_FLIGHT_FLOOR_MB (a decode block or two of every kind, a video segment)."""
        if self.max_in_flight_mb:
            return self.max_in_flight_mb
        actors = sum(self.resources[stage].max_actors for stage in self.stages)
        return max(IN_FLIGHT_FLOOR_MB, IN_FLIGHT_PER_ACTOR_MB * actors)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["storage"] = {"endpoint_url": self.storage.endpoint_url, "anon": self.storage.anon}  # never credentials
        return out


def parse_score_thresholds(values: list[str]) -> dict[str, float]:
    """["person=0.3"] -> {"person": 0.3}; LabelJobConfig checks the stage names and values."""
    out = {}
    for item in values:
        stage, sep, value = item.partition("=")
        try:
            out[stage.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"score threshold {item!r}: expected STAGE=VALUE, e.g. person=0.3") from None
        if not sep:
            raise ConfigError(f"score threshold {item!r}: expected STAGE=VALUE, e.g. person=0.3")
    return out


def apply_overrides(resources: dict[str, StageResources], overrides: list[str]) -> dict[str, StageResources]:
    """Apply "stage.field=value" overrides ("all.field=value" for every stage)."""
    fields = {f.name: f.type for f in dataclasses.fields(StageResources)}
    changes: dict[str, dict] = {s: {} for s in resources}
    for item in overrides:
        key, sep, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not sep or not dot or name not in fields or stage not in (*STAGES, "all"):
            raise ConfigError(
                f"bad override {item!r}: use STAGE.FIELD=VALUE with STAGE in "
                f"{', '.join((*STAGES, 'all'))} and FIELD in {', '.join(fields)}"
            )
        kind = fields[name]
        try:
            parsed = (
                value
                if kind == "str"
                else (
                    value.lower() in ("1", "true", "yes")
                    if kind == "bool"
                    else (int(value) if kind == "int" else float(value))
                )
            )
        except ValueError:
            raise ConfigError(f"bad override {item!r}: {name} takes a {kind}") from None
        for s in STAGES if stage == "all" else (stage,):
            changes[s][name] = parsed
    # validated once per stage with all its changes (min_actors=2 may come before max_actors=2)
    return {s: dataclasses.replace(res, **changes[s]) if changes[s] else res for s, res in resources.items()}


@dataclass(frozen=True)
class ServeConfig:
    """The served cascade (fashion_ray/serving): the batch job's bundle, stages, stage
    resources and image limits, so that a served answer is the row the batch job writes."""

    bundle: str = "bootstrap"
    stages: tuple[str, ...] = STAGES
    # two person replicas: the person stage is the slowest (jobs/benchmark_serve.py, 8 clients on
    # 2 cores: 1.38 requests/s against 0.82 with one); 0.25 + 4 x 0.3 + 0.1 CPUs fit a 2-core machine
    resources: dict[str, StageResources] = field(
        default_factory=lambda: default_resources() | {"person": StageResources(min_actors=2, max_actors=2)}
    )
    ingress_num_cpus: float = 0.25  # the HTTP replica decodes uploads and draws overlays
    max_bytes: int = 32 * 1024 * 1024  # a larger request is refused before its body is read
    max_pixels: int = 64_000_000
    work_max_side: int = 1280
    # what the requests being decoded at the ingress may hold at once (serving/cascade.MemoryBudget):
    # up to 32 requests are admitted, and a 60 KB PNG can decode to 64 megapixels
    decode_memory_mb: int = 2048
    batch_wait_timeout_s: float = 0.01  # how long a stage waits to fill a batch with concurrent requests
    # URIs the server may read for a request ({"uri": ...}): prefixes such as "s3://uploads/";
    # none by default, so a public endpoint cannot be made to read the server's own files
    allow_uris: tuple[str, ...] = ()
    storage: StorageOptions = StorageOptions()
    # the API token's file (serving/auth.py): a mounted secret; none = loopback clients only
    auth_token_file: str = ""
    # the one Label Studio task images are read from, and its token's file (else the
    # LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY environment variables); a request never changes them
    label_studio_url: str = ""
    label_studio_token_file: str = ""
    label_studio_concurrency: int = 8  # tasks of one /predict labelled at once
    label_studio_max_tasks: int = 1000  # a larger /predict is refused (413)
    # a /predict answers within this (Label Studio gives up at 100 s); tasks not done by then get
    # no prediction, and Label Studio's next "Retrieve predictions" asks for them again
    label_studio_deadline_s: float = 80.0
    # one task image read from Label Studio, start to end (in a thread pool of its own, so a
    # slow Label Studio cannot hold up the threads that /v1/label decodes in)
    label_studio_fetch_timeout_s: float = 30.0
    expose_info: bool = False  # /v1/info, /docs and /openapi.json (they describe the server's limits and prefixes)
    # requests waiting at the ingress beyond its running ones; more are answered 503 at once
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64

    def __post_init__(self):
        object.__setattr__(self, "stages", cascade_stages(self.stages))
        if self.max_bytes < 1 or self.max_pixels < 1 or self.decode_memory_mb < 1 or self.batch_wait_timeout_s < 0:
            raise ConfigError(
                "max_bytes >= 1, max_pixels >= 1, decode_memory_mb >= 1 and batch_wait_timeout_s >= 0 are required"
            )
        if (
            min(
                self.label_studio_concurrency,
                self.label_studio_max_tasks,
                self.max_ongoing_requests,
                self.max_queued_requests,
            )
            < 1
            or min(self.label_studio_deadline_s, self.label_studio_fetch_timeout_s) <= 0
        ):
            raise ConfigError(
                "label_studio_concurrency, label_studio_max_tasks, max_ongoing_requests and "
                "max_queued_requests must be >= 1, label_studio_deadline_s and "
                "label_studio_fetch_timeout_s > 0"
            )
        web = [p for p in self.allow_uris if p.lower().startswith(("http://", "https://"))]
        if web:  # no fetch path reads them (and one would follow a web server's redirects elsewhere)
            raise ConfigError(
                f"allow_uris: {web[0]!r}: the server reads object stores and local folders "
                "(s3://, gs://, az://, file paths), not http(s) URLs"
            )
