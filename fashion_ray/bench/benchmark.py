"""Pipeline efficiency and memory: the Ray Data pipeline against a plain loop, in one run.

- baseline: one process, the same predictor, decode + predict image by image;
- pipeline: run_label_job on the same files (reads, decode tasks, actor pool, shard writes);
- efficiency = pipeline images/s / baseline images/s, end to end (start-up included) and
  marginal (extra images / extra seconds between two corpus sizes: start-up cancels out);
- memory: peak RSS summed over the driver and every Ray worker, sampled every 0.2 s, at two
  corpus sizes: streaming keeps it flat as the corpus grows.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pyarrow as pa
from PIL import Image

from fashion_ray import config, media, taxonomy
from fashion_ray.config import Device, VideoSampling
from fashion_ray.models import build_stage_predictor, load_bundle
from fashion_ray.models.torchvision_models import GARMENT_DETECTOR, PART_SEGMENTER, PERSON_DETECTOR
from fashion_ray.run import run_label_job
from fashion_ray.samplers import GpuUtilisation
from fashion_ray.stages import STAGE_CLASSES, persons_column
from fashion_ray.taxonomy import CLOTHING_STAGE, GARMENTS_TASK, PARTS_STAGE, PERSON_STAGE
from fashion_ray.video.decoding import decode_segment, encode_video, probe

CORPORA = ("smooth", "people")


def make_corpus(
    folder: str, n: int, width: int = 640, height: int = 480, seed: int = 0, kind: str = "smooth"
) -> list[str]:
    """`smooth`: random photo-like JPEGs with nobody in them (noise compresses badly and decodes
    unrealistically slowly); `people`: real person cut-outs on real photos (person_eval's
    composites, 2-5 people of 24-320 px each), for the cascade with a real bundle."""
    from fashion_ray.bench import person_eval

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos, persons = (person_eval.empty_photos(), person_eval.cutouts()) if kind == "people" else (None, None)
    paths = []
    for i in range(n):
        if kind == "people":
            img = Image.fromarray(
                person_eval.make_composite(rng, str(i), photos, persons, width=width, height=height).image
            )
        else:
            small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        path = os.path.join(folder, f"img_{i:06d}.jpg")
        img.save(path, quality=90)
        paths.append(path)
    return paths


def make_bundle(path: str, stages: tuple[str, ...] = ("person",)) -> str:
    """A torchvision bundle with random weights (speed does not depend on training); score
    threshold 0 and two detections an image, so every stage after the person one has crops."""
    import torch

    from fashion_ray.models.bundle import StageModel, save_bundle
    from fashion_ray.models.torchvision_models import build_model

    torch.manual_seed(0)
    two = {"box_detections_per_img": 2}
    specs = {
        PERSON_STAGE: StageModel(PERSON_DETECTOR, (taxonomy.PERSON,), 320, 0.0, 0.5, model_options=two),
        CLOTHING_STAGE: StageModel(GARMENT_DETECTOR, taxonomy.DEEPFASHION2, 192, 0.0, 0.5, model_options=two),
        PARTS_STAGE: StageModel(PART_SEGMENTER, taxonomy.PARTS, 128),
    }
    save_bundle(
        path,
        "bench",
        "0",
        {
            s: (
                specs[s],
                build_model(
                    specs[s].architecture, num_classes=len(specs[s].classes) + 1, input_size=specs[s].input_size
                ).state_dict(),
            )
            for s in stages
        },
    )
    return path


def baseline_loop(
    paths: list[str],
    bundle_uri: str,
    threads: int,
    work_max_side: int,
    device: str = "cpu",
    amp: bool = True,
    stages: tuple[str, ...] = ("person",),
) -> dict:
    """The stages' own objects (as the actors hold them) called image by image in this process,
    after decoding; images/s overall and per stage."""
    t0 = time.perf_counter()
    run = {
        s: STAGE_CLASSES[s](bundle_uri, Device(name=device, amp=amp, torch_threads=threads), batch_size=1)
        for s in stages
    }
    t_ready = time.perf_counter()
    seconds, persons = dict.fromkeys(stages, 0.0), 0
    for path in paths:
        with open(path, "rb") as fh:
            decoded = media.decode_image(fh.read(), max_pixels=64_000_000, max_side=work_max_side)
        batch = {
            "status": np.array(["ok"], dtype=object),
            "error": np.array([""], dtype=object),
            "error_detail": np.array([""], dtype=object),
            "image": np.empty(1, dtype=object),
            "persons": persons_column([[]]),
        }
        batch["image"][0] = decoded.image
        for name, stage in run.items():
            start = time.perf_counter()
            batch = stage(batch)
            seconds[name] += time.perf_counter() - start
        persons += len(batch["persons"][0].items)
    end = time.perf_counter()
    return {
        "images": len(paths),
        "seconds": end - t0,
        "images_per_s": len(paths) / (end - t0),
        "images_per_s_after_load": len(paths) / (end - t_ready),
        "persons_per_image": round(persons / len(paths), 2),
        "stage_images_per_s": {name: round(len(paths) / sec, 2) for name, sec in seconds.items()},
        # the crop stages' cost per person (the clothing stage's budget is stated per crop)
        "stage_ms_per_person": {
            name: round(1000 * sec / max(1, persons), 1) for name, sec in seconds.items() if name != PERSON_STAGE
        },
    }


def pipeline_run(
    inputs: list[str],
    output: str,
    bundle_uri: str,
    actors: int,
    threads: int,
    work_max_side: int,
    rows_per_shard: int,
    sampling: VideoSampling = VideoSampling(),
    device: str = "cpu",
    amp: bool = True,
    jpeg_decode: str = "tasks",
    stages: tuple[str, ...] = ("person",),
    max_in_flight_mb: int = 0,
) -> dict:
    """The labelling job on `inputs` (`actors` per stage); images/s end to end, and the GPU's use on CUDA."""
    on_device = (
        {"device": "cuda", "num_gpus": 1 / (actors * len(stages)), "batch_size": 8}
        if device == "cuda"
        else {"batch_size": 1}
    )
    # 0.8 CPU for all the actors together, the rest for decode and write tasks; never the decode
    # tasks' 0.5, for Ray Data fuses a task into the next actor when their resource asks are equal
    res = config.StageResources(
        min_actors=actors,
        max_actors=actors,
        num_cpus=0.8 / (actors * len(stages)),
        torch_threads=threads,
        amp=amp,
        **on_device,
    )
    cfg = config.LabelJobConfig(
        inputs=tuple(inputs),
        output=output,
        bundle=bundle_uri,
        stages=stages,
        resources={s: res for s in taxonomy.STAGES},
        work_max_side=work_max_side,
        rows_per_shard=rows_per_shard,
        read_batch_size=8,
        video=sampling,
        jpeg_decode=jpeg_decode,
        max_in_flight_mb=max_in_flight_mb,
    )
    t0 = time.perf_counter()
    with GpuUtilisation() as gpu:
        rows = run_label_job(cfg, progress=io.StringIO())["counts"]["rows"]
    total = time.perf_counter() - t0
    return {
        "images": rows,
        "seconds": total,
        "images_per_s": rows / total,
        "in_flight_budget_mb": cfg.in_flight_budget_mb(),
        **({"gpu": gpu.summary()} if device == "cuda" else {}),
    }


def make_video(path: str, seconds: float, rate: int = 25, width: int = 640, height: int = 360) -> str:
    """A smooth moving scene (decodes like footage, not like noise) at a constant frame rate."""
    rng = np.random.default_rng(0)
    background = np.asarray(
        Image.fromarray(rng.integers(0, 255, (height // 16, width // 8, 3), dtype=np.uint8)).resize(
            (width * 2, height), Image.BICUBIC
        )
    )
    count = int(seconds * rate)
    frames = (background[:, (k * 4) % width : (k * 4) % width + width] for k in range(count))
    encode_video(path, frames, [k / rate for k in range(count)])
    return path


def video_benchmark(
    workdir: str, seconds: float, sample_fps: float, bundle_uri: str, actors: int, threads: int, work_max_side: int
) -> dict:
    """Frames decoded and labelled per second: FFmpeg's ceiling, a plain loop and the pipeline, same video."""
    import av

    path = make_video(os.path.join(workdir, "clip.mp4"), seconds)
    t0 = time.perf_counter()
    with av.open(path) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    ceiling = decoded / (time.perf_counter() - t0)

    sampling = VideoSampling(fps=sample_fps, frames_per_task=16)
    t0 = time.perf_counter()
    predictor = build_stage_predictor(load_bundle(bundle_uri), PERSON_STAGE, Device(torch_threads=actors * threads))
    plan = probe(path, sampling)
    for _, image, _, _ in decode_segment(path, [pts for _, pts, _ in plan["frames"]]):
        predictor.predict([media.fit_to_side(image, work_max_side).image], [{}])
    loop = len(plan["frames"]) / (time.perf_counter() - t0)
    pipe = pipeline_run(
        [path], os.path.join(workdir, "out_video"), bundle_uri, actors, threads, work_max_side, 32, sampling
    )
    return {
        "video_seconds": seconds,
        "video_frames": decoded,
        "sampled_fps": sample_fps,
        "sampled_frames": len(plan["frames"]),
        "decode_all_frames_per_s": round(ceiling, 1),
        "plain_loop_frames_per_s": round(loop, 2),
        "pipeline_frames_per_s": round(pipe["images_per_s"], 2),
        "pipeline_seconds": round(pipe["seconds"], 2),
        "efficiency_end_to_end": round(pipe["images_per_s"] / loop, 3),
    }


_LISTING_SERVER = """
import sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
server.start()
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
backend.create_bucket("bench-listing", "us-east-1")
for i in range(int(sys.argv[1])):
    backend.put_object("bench-listing", f"uploads/{i // 1000:04d}/img{i:07d}.jpg", b"")
print("PORT", server._server.server_address[1], flush=True)
sys.stdin.read()
"""


def listing_benchmark(keys: int, uri: str | None = None, options=None) -> dict:
    """Time and memory of listing `keys` objects: our paged listing vs fsspec's find(), same run.

    Without `uri`, an S3 server (moto, over HTTP on loopback, in its own process so that it
    does not count in our memory) is started and filled with `keys` empty .jpg objects
    (written straight into its store: we measure listing, not uploads). Also times the
    incremental diff of that listing against a ledger of the same objects.
    """
    import subprocess
    import sys
    import tracemalloc

    import pyarrow as pa

    from fashion_ray import ledger, storage

    server = None
    if uri is None:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        server = subprocess.Popen(
            [sys.executable, "-c", _LISTING_SERVER, str(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        port = next(int(line.split()[1]) for line in server.stdout if line.startswith("PORT "))
        options = storage.StorageOptions(endpoint_url=f"http://127.0.0.1:{port}")
        uri = "s3://bench-listing/uploads/"

    def find_baseline():
        fs, path = storage.filesystem(uri, options)
        fs.invalidate_cache()
        return [info for info in fs.find(path, detail=True).values() if info["name"].endswith(".jpg")]

    def ours():
        storage.filesystem(uri, options)[0].invalidate_cache()
        return storage.list_inputs([uri], options)

    result = {"keys": keys, "uri": uri}
    try:
        for name, fn in (("fsspec_find", find_baseline), ("paged_listing", ours)):
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
            tracemalloc.start()
            fn()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            count = out.num_rows if isinstance(out, pa.Table) else len(out)
            result[name] = {
                "objects": count,
                "seconds": round(seconds, 3),
                "keys_per_s": round(count / seconds, 1),
                "peak_python_mib": round(peak / 2**20, 1),
            }
    finally:
        if server:
            server.stdin.close()
            server.wait(timeout=60)
    listing = ours() if server is None else out
    prior = ledger.ledger_rows(listing, {"bench": listing["id"].to_pylist()}, "bench@1")
    t0 = time.perf_counter()
    _todo, counts = ledger.classify(listing, prior, "bench@1", "changed")
    result["incremental_diff"] = {"seconds": round(time.perf_counter() - t0, 3), **counts}
    result["speed_ratio_vs_find"] = round(result["fsspec_find"]["seconds"] / result["paged_listing"]["seconds"], 3)
    result["memory_ratio_vs_find"] = round(
        result["paged_listing"]["peak_python_mib"] / result["fsspec_find"]["peak_python_mib"], 3
    )
    return result


def simulated_listing(rows: int) -> pa.Table:
    """A listing as storage.list_inputs returns it, of `rows` S3 objects that exist nowhere."""
    from fashion_ray.storage import LISTING_SCHEMA, stable_id

    uris = [f"s3://corpus/uploads/{i // 1000:06d}/photo_{i:09d}.jpg" for i in range(rows)]
    return pa.table(
        {
            "id": [stable_id(u) for u in uris],
            "uri": uris,
            "size": [200_000 + i % 1000 for i in range(rows)],
            "etag": [f'"{i:032x}"' for i in range(rows)],
            "mtime": pa.array([1_780_000_000_000_000 + i for i in range(rows)], pa.timestamp("us", tz="UTC")),
        },
        schema=LISTING_SCHEMA,
    )


def driver_memory(rows: int, output: str) -> dict:
    """The driver's own memory per input row and per ledger row, with no Ray and no models: a
    run planned over a simulated listing of `rows` images (LabelRun's per-row state and the
    work blocks), and the ledger of as many labelled rows. Python's allocations are traced
    (tracemalloc's peak), Arrow's counted (the bytes its pool holds afterwards)."""
    import tracemalloc

    import fashion_ray.pipeline  # noqa: F401  (imported by the run's plan: not a cost per row)
    from fashion_ray import ledger
    from fashion_ray.run import LabelRun

    def measured(make):
        """make()'s result, and the bytes it took: Python's traced peak plus what Arrow's pool kept."""
        arrow = pa.total_allocated_bytes()
        tracemalloc.start()
        kept = make()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return kept, peak + pa.total_allocated_bytes() - arrow

    bundle, listing = load_bundle("bootstrap"), simulated_listing(rows)
    cfg = config.LabelJobConfig(inputs=("s3://corpus/uploads/",), output=output, stages=(PERSON_STAGE,))

    def planned():
        run = LabelRun(cfg, bundle, listing, None, run_id="sim", progress=io.StringIO(), started="", t0=0.0)
        return run, run.plan()

    _, run_bytes = measured(planned)
    ids = listing["id"].to_pylist()
    shards = {f"shard-{k // 256:06d}": ids[k : k + 256] for k in range(0, rows, 256)}
    _, ledger_bytes = measured(lambda: ledger.ledger_rows(listing, shards, bundle.label, "sim"))
    return {
        "rows": rows,
        "listing_bytes_per_row": round(listing.nbytes / rows, 1),
        "planned_run_bytes_per_input_row": round(run_bytes / rows, 1),
        "driver_bytes_per_input_row": round((listing.nbytes + run_bytes) / rows, 1),
        "ledger_bytes_per_row": round(ledger_bytes / rows, 1),
    }


def garment_parse_coco(coco: dict) -> dict:
    """Synthetic scenes as a garment-parser training file: each garment category becomes the
    parse class it falls under (supercategory garment_parse); persons and parts stay."""
    renamed = []
    for c in coco["categories"]:
        parse = taxonomy.parse_class_of(c["name"])
        is_garment = c["id"] != taxonomy.PERSON_CATEGORY_ID and parse in taxonomy.GARMENT_PARSE[1:]
        renamed.append({**c, "name": parse, "supercategory": taxonomy.PARSE_SUPERCATEGORY} if is_garment else c)
    return {**coco, "categories": renamed}


def training_benchmark(
    work: str,
    workers: list[int],
    *,
    task: str = "parts",
    gpus_per_worker: float = 0.0,
    steps: int = 80,
    scenes: int = 240,
    batch_size: int = 4,
    input_size: int = 0,
    torch_threads: int = 1,
) -> dict:
    """Ray Train on one task (parts: LRASPP; garments: parser v2 on the synthetic scenes'
    garments) with each worker count, the same data and steps, in one run; samples/s is the
    steady-state window (the second half of the steps: warm-up, start-up and held-out scoring
    excluded), data loading included. input_size 0: the task's default."""
    from fashion_ray.bench import synth
    from fashion_ray.formats import converters
    from fashion_ray.training.loop import TrainConfig
    from fashion_ray.training.trainer import fit

    labels, coco = os.path.join(work, "synth"), os.path.join(work, f"train-{task}.json")
    if not os.path.exists(os.path.join(labels, "manifest.json")):
        synth.make_synthetic(labels, scenes)
    scenes_coco = converters.convert_labels(labels)
    converters.write_coco(garment_parse_coco(scenes_coco) if task == GARMENTS_TASK else scenes_coco, coco)
    cfg = TrainConfig(
        task=task,
        data=coco,
        steps=steps,
        batch_size=batch_size,
        input_size=input_size,
        lr=0.05,
        warmup_steps=min(10, steps // 2),
        checkpoint_every=max(1, steps // 2),
        val_samples=16,
    )
    runs = {}
    for n in workers:
        t0 = time.perf_counter()
        result = fit(
            cfg,
            workers=n,
            gpus_per_worker=gpus_per_worker,
            storage_path=os.path.join(work, "train-runs"),
            name=f"{task}-workers-{n}-{time.time_ns()}",
            torch_threads=torch_threads,
        )
        last = result.metrics
        runs[str(n)] = {
            "samples_per_s": round(last["samples_per_s"], 2),
            "seconds_per_step": round(last["seconds_per_step"], 4),
            "load_wait_seconds_per_step": round(last["load_wait_seconds_per_step"], 4),
            "samples_per_step": batch_size * n,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    base = runs[str(workers[0])]["samples_per_s"]
    return {
        "task": task,
        "architecture": cfg.architecture,
        "input_size": cfg.input_size,
        "steps": steps,
        "device": "cuda" if gpus_per_worker else "cpu",
        "gpus_per_worker": gpus_per_worker,
        "batch_size_per_worker": batch_size,
        "torch_threads": torch_threads,
        "workers": runs,
        "scaling": {n: round(r["samples_per_s"] / base, 3) for n, r in runs.items()},
    }
