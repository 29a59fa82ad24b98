"""Benchmark the labelling pipeline against a plain loop on the same images, in one run.

    python jobs/benchmark.py --images 200 --memory-sizes 100,400
    python jobs/benchmark.py --bundle bootstrap --stages person,clothing,parts --corpus people --images 200
    python jobs/benchmark.py --video-only --video-seconds 120 --video-fps 5
    python jobs/benchmark.py --training-only --train-workers 1,2
    python jobs/benchmark.py --training-only --train-workers 1 --train-tasks parts,garments --train-gpus-per-worker 1
    python jobs/benchmark.py --device cuda --stages person,clothing,parts --amp on,off --jpeg-decode tasks,person

Prints one JSON object: baseline and pipeline images/s, their ratio (pipeline efficiency,
end to end and marginal), peak RSS and PSS at two corpus sizes, and the driver's own bytes per
input row and per ledger row (--driver-rows simulated rows, no Ray); with --train-workers, Ray Train's
samples/s on each --train-tasks task for each worker count and the scaling against the first. Several
--amp / --jpeg-decode values run the pipeline once per combination, each with its ratio to
the first; with --device cuda every pipeline run reports GPU utilisation (nvidia-smi).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fashion_ray import config
from fashion_ray.bench import benchmark
from fashion_ray.ray_init import init_ray
from fashion_ray.samplers import PeakRSS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="corpus size for the throughput comparison")
    p.add_argument(
        "--memory-sizes", default="100,400", help="two corpus sizes for the peak-memory check ('none': skip it)"
    )
    p.add_argument(
        "--bundle",
        default=None,
        help="bundle with a person stage (default: random-weight fasterrcnn_mobilenet_v3_large_320_fpn)",
    )
    p.add_argument("--actors", type=int, default=2, help="person-stage actors in the pipeline")
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument(
        "--stages",
        default="person",
        help="stages to run, e.g. person,clothing,parts (per-stage images/s come from the plain loop)",
    )
    p.add_argument("--device", default="cpu", choices=config.DEVICES, help="where the models run (pipeline and loop)")
    p.add_argument(
        "--corpus",
        default="smooth",
        choices=benchmark.CORPORA,
        help="smooth: photo-like JPEGs with nobody; people: real person cut-outs on real photos",
    )
    p.add_argument("--amp", default="on", help="fp16 autocast on CUDA: on, off, or on,off to compare")
    p.add_argument(
        "--jpeg-decode", default="tasks", help="tasks, person, or tasks,person to compare (see label_corpus.py)"
    )
    p.add_argument("--baseline-threads", type=int, default=2, help="torch threads of the plain loop")
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the plain loop (and the ratios to it): the pipeline alone"
    )
    p.add_argument("--work-max-side", type=int, default=640)
    p.add_argument("--rows-per-shard", type=int, default=16)
    p.add_argument("--max-in-flight-mb", type=int, default=0, help="as the labelling job's (a large value: no bound)")
    p.add_argument(
        "--driver-rows", type=int, default=100_000, help="simulated inputs for the driver's memory per row (0: skip)"
    )
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--video-seconds", type=float, default=0, help="also benchmark a 25 fps 640x360 video this long")
    p.add_argument("--video-fps", type=float, default=5.0, help="frames sampled per second of that video")
    p.add_argument("--video-only", action="store_true", help="skip the image benchmark")
    p.add_argument("--train-workers", default="", help="also benchmark training with these worker counts, e.g. 1,2")
    p.add_argument("--train-steps", type=int, default=80)
    p.add_argument("--train-tasks", default="parts", help="tasks to benchmark: parts, garments or parts,garments")
    p.add_argument(
        "--train-gpus-per-worker", type=float, default=0.0, help="GPUs per training worker (CUDA, AMP, NCCL)"
    )
    p.add_argument("--train-input-size", type=int, default=0, help="training views' side (0: each task's default)")
    p.add_argument("--train-batch-size", type=int, default=4, help="per worker")
    p.add_argument("--train-scenes", type=int, default=240, help="synthetic scenes the training runs draw from")
    p.add_argument("--training-only", action="store_true", help="skip the labelling benchmarks")
    return p


def parse_choices(flag: str, value: str, valid: tuple[str, ...]) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if not chosen or set(chosen) - set(valid):
        raise SystemExit(f"error: {flag} takes a comma-separated subset of: {', '.join(valid)}")
    return chosen


def round_all(figures: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def main(args) -> int:
    if args.workdir:
        return run_benchmarks(args, args.workdir)
    # the default scratch folder (corpus, bundle, outputs: about 120 MB) goes when the run ends
    with tempfile.TemporaryDirectory(prefix="fashion-ray-bench-") as work:
        return run_benchmarks(args, work)


def run_benchmarks(args, work: str) -> int:
    try:
        stages = config.parse_stages(args.stages)
    except config.ConfigError as exc:
        raise SystemExit(f"error: --stages: {exc}") from None
    if args.no_baseline and args.memory_sizes != "none":
        raise SystemExit(
            "error: --no-baseline needs --memory-sizes none (the memory check is scored against the plain loop)"
        )
    train_tasks = parse_choices("--train-tasks", args.train_tasks, ("parts", "garments"))
    variants = [
        (amp, decode)
        for amp in parse_choices("--amp", args.amp, ("on", "off"))
        for decode in parse_choices("--jpeg-decode", args.jpeg_decode, config.JPEG_DECODE_CHOICES)
    ]
    result = {}
    if args.driver_rows and not (args.training_only or args.video_only):
        result["driver_memory"] = benchmark.driver_memory(args.driver_rows, os.path.join(work, "driver"))
    init_ray(None, args.num_cpus)

    def folder_of(count: int) -> list[str]:
        manifest = os.path.join(work, f"list_{count}.txt")
        with open(manifest, "w") as fh:
            fh.write("\n".join(paths[:count]))
        return [manifest]

    if args.train_workers or args.training_only:
        workers = [int(w) for w in (args.train_workers or "1,2").split(",")]
        result["training"] = {
            task: benchmark.training_benchmark(
                os.path.join(work, "training"),
                workers,
                task=task,
                gpus_per_worker=args.train_gpus_per_worker,
                steps=args.train_steps,
                input_size=args.train_input_size,
                batch_size=args.train_batch_size,
                scenes=args.train_scenes,
                torch_threads=args.threads_per_actor,
            )
            for task in train_tasks
        }
    if args.training_only:
        print(json.dumps(result, indent=2))
        return 0
    bundle = args.bundle or benchmark.make_bundle(os.path.join(work, "bundle"), stages)
    if args.video_seconds:
        result["video"] = benchmark.video_benchmark(
            work, args.video_seconds, args.video_fps, bundle, args.actors, args.threads_per_actor, args.work_max_side
        )
    if args.video_only:
        print(json.dumps(result, indent=2))
        return 0
    sizes = [] if args.memory_sizes == "none" else [int(v) for v in args.memory_sizes.split(",")]
    paths = benchmark.make_corpus(os.path.join(work, "corpus"), max([args.images, *sizes]), kind=args.corpus)
    first_amp = variants[0][0] == "on"
    base = (
        None
        if args.no_baseline
        else benchmark.baseline_loop(
            paths[: args.images],
            bundle,
            args.baseline_threads,
            args.work_max_side,
            device=args.device,
            amp=first_amp,
            stages=stages,
        )
    )

    def pipeline(count: int, name: str, amp: bool, decode: str) -> dict:
        return benchmark.pipeline_run(
            folder_of(count),
            os.path.join(work, name),
            bundle,
            args.actors,
            args.threads_per_actor,
            args.work_max_side,
            args.rows_per_shard,
            device=args.device,
            amp=amp,
            jpeg_decode=decode,
            stages=stages,
            max_in_flight_mb=args.max_in_flight_mb,
        )

    pipe = pipeline(args.images, "out_main", first_amp, variants[0][1])
    if len(variants) > 1:
        runs = {
            f"amp={amp} jpeg_decode={decode}": pipeline(args.images, f"out_{amp}_{decode}", amp == "on", decode)
            for amp, decode in variants[1:]
        }
        result["variants"] = {
            f"amp={variants[0][0]} jpeg_decode={variants[0][1]}": round_all(pipe),
            **{
                name: {**round_all(run), "ratio_to_first": round(run["images_per_s"] / pipe["images_per_s"], 3)}
                for name, run in runs.items()
            },
        }
    result |= {
        "images": args.images,
        "bundle": bundle
        if args.bundle
        else "random torchvision (person: fasterrcnn_mobilenet_v3_large_320_fpn, clothing: "
        "maskrcnn_mobilenet_v3_large_fpn at 192, parts: lraspp_mobilenet_v3_large at 128)",
        "stages": list(stages),
        "corpus": args.corpus,
        "device": args.device,
        "actors_per_stage": args.actors,
        "pipeline": round_all(pipe),
    }
    if base:
        result |= {
            "baseline": round_all(base),
            "efficiency_end_to_end": round(pipe["images_per_s"] / base["images_per_s"], 3),
        }
    if sizes:
        small, large = sizes
        memory, shared_split, seconds = {}, {}, {}
        for count in (small, large):
            with PeakRSS() as peak:
                seconds[count] = pipeline(count, f"out_{count}", first_amp, variants[0][1])["seconds"]
            memory[str(count)], shared_split[str(count)] = round(peak.peak / 2**20, 1), round(peak.peak_pss / 2**20, 1)
        marginal = (large - small) / (seconds[large] - seconds[small])
        result |= {
            "pipeline_seconds_by_size": {str(k): round(v, 3) for k, v in seconds.items()},
            "pipeline_marginal_images_per_s": round(marginal, 3),
            "efficiency_marginal": round(marginal / base["images_per_s_after_load"], 3),
            "peak_rss_mib": memory,
            "peak_rss_growth": round(memory[str(large)] / memory[str(small)], 3),
            "peak_pss_mib": shared_split,
            "peak_pss_growth": round(shared_split[str(large)] / shared_split[str(small)], 3),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
