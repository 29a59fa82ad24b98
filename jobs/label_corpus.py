"""Label a corpus of fashion images and videos: person -> clothing -> body parts, to Parquet + COCO shards.

Videos (mp4, mov, avi, mkv, webm) become rows of sampled frames (1 per second by default)
with timestamps and person track ids, plus AVA-style CSV.

On a laptop (local Ray, the built-in sample corpus and bootstrap bundle):
    python jobs/label_corpus.py

Every hour, only what is new (a ledger in the output; a killed run resumes):
    python jobs/label_corpus.py --input s3://bucket/uploads/ --output s3://bucket/labels/ --incremental

On a cluster:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/label_corpus.py --input s3://bucket/uploads/ --output s3://bucket/labels/ \
        --bundle s3://bucket/models/fashion-v1/ --device cuda --set all.max_actors=8

What a run will ask the cluster for, and whether it fits (exit 2 when it cannot):
    python jobs/label_corpus.py --ray-address auto --device cuda --set person.node_resource=gpu_node --plan
"""

from __future__ import annotations

import argparse
import signal
import sys

from fashion_ray import config, placement, storage, taxonomy
from fashion_ray.errors import InputError, RunError
from fashion_ray.lease import LeaseHeldError
from fashion_ray.ray_init import init_ray
from fashion_ray.run import format_summary, run_label_job

JOB = config.field_defaults(config.LabelJobConfig)
VIDEO = config.field_defaults(config.VideoSampling)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Label fashion imagery with a model cascade on Ray Data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="+",
        default=[config.SAMPLE_CORPUS],
        help="URIs of prefixes/folders, images, or .txt manifests (one URI per line)",
    )
    p.add_argument("--output", default="out/labels", help="output URI (parquet/, coco/, manifest.json)")
    p.add_argument("--bundle", default=JOB["bundle"], help="model bundle URI or built-in bundle name")
    p.add_argument(
        "--stages", default=",".join(JOB["stages"]), help=f"comma-separated subset of {','.join(taxonomy.STAGES)}"
    )
    p.add_argument("--device", default="cpu", choices=config.DEVICES, help="preset for every stage's resources")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.FIELD=VALUE",
        help="per-stage resource override, e.g. person.max_actors=4, all.batch_size=8",
    )
    p.add_argument(
        "--score-threshold",
        dest="score_thresholds",
        action="append",
        default=[],
        metavar="STAGE=VALUE",
        help="a stage's score threshold instead of the bundle's, e.g. person=0.4: persons at or over it are "
        "labels (confident), those under it down to the bundle's candidate floor are written as candidates "
        "(recorded in the manifest's config)",
    )
    p.add_argument(
        "--jpeg-decode",
        default=JOB["jpeg_decode"],
        choices=config.JPEG_DECODE_CHOICES,
        help="decode plain JPEGs in the CPU tasks or batched in the person actor on its device "
        "(nvJPEG with --device cuda)",
    )
    p.add_argument("--rows-per-shard", type=int, default=JOB["rows_per_shard"])
    p.add_argument("--read-batch-size", type=int, default=JOB["read_batch_size"])
    p.add_argument("--max-pixels", type=int, default=JOB["max_pixels"], help="decompression-bomb limit")
    p.add_argument("--work-max-side", type=int, default=JOB["work_max_side"], help="longest side the models see")
    p.add_argument(
        "--max-in-flight-mb",
        type=int,
        default=JOB["max_in_flight_mb"],
        metavar="MIB",
        help="decoded media that may wait between stages, whole job (default 0: 128 per model-stage actor, "
        "at least 512)",
    )
    p.add_argument("--video-fps", type=float, default=VIDEO["fps"], help="sampled frames per second of video time")
    p.add_argument(
        "--video-every-n", type=int, default=VIDEO["every_n"], help="sample every Nth frame instead of --video-fps"
    )
    p.add_argument(
        "--video-start", type=float, default=VIDEO["start_s"], metavar="SECONDS", help="sampling window start"
    )
    p.add_argument(
        "--video-end", type=float, default=VIDEO["end_s"], metavar="SECONDS", help="sampling window end (None: the end)"
    )
    p.add_argument(
        "--video-max-frames", type=int, default=VIDEO["max_frames"], help="at most this many frames per video"
    )
    p.add_argument(
        "--max-frames-per-file",
        type=int,
        default=VIDEO["max_frames_per_file"],
        help="rows one video, animation or multi-page TIFF may become; the rest are one 'too_many_frames' row",
    )
    p.add_argument(
        "--video-frames-per-task",
        type=int,
        default=VIDEO["frames_per_task"],
        help="sampled frames one decode task handles (a long video spreads over many tasks)",
    )
    p.add_argument(
        "--file-timeout",
        type=float,
        default=VIDEO["timeout_s"],
        metavar="SECONDS",
        help="a file's probe (and each video segment's decode) gives up after this long: a 'timeout' row",
    )
    p.add_argument(
        "--incremental",
        action="store_true",
        help="label only inputs the output's ledger has not seen or saw change; commit as it goes",
    )
    p.add_argument(
        "--relabel",
        default=JOB["relabel"],
        choices=config.RELABEL_CHOICES,
        help="with --incremental, also relabel: changed inputs only, inputs labelled by another bundle "
        "(outdated), or all",
    )
    p.add_argument(
        "--commit-every",
        type=float,
        default=JOB["commit_every_s"],
        metavar="SECONDS",
        help="with --incremental, commit accepted shards this often (the most work a crash can cost)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=JOB["lease_ttl_s"],
        metavar="SECONDS",
        help="lease on the output, renewed while running; a crashed run's lease expires after this",
    )
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--anon", action="store_true", help="anonymous object-store access")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the resource plan and whether this cluster can place it, then exit (2: it cannot)",
    )
    p.add_argument(
        "--cpu-node-resource",
        default=JOB["cpu_node_resource"],
        metavar="NAME",
        help="custom resource of the nodes that run decode and write tasks (e.g. cpu_node)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=JOB["stall_timeout_s"],
        metavar="SECONDS",
        help="end a pass that moves no data for this long (nodes lost): what was labelled is kept",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: start even if the nodes alive now cannot hold the plan",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument("--verbose", action="store_true", help="print Ray's and the workers' own logs too")
    return p


def make_config(args) -> config.LabelJobConfig:
    resources = config.stage_resources(args.device, args.overrides)
    return config.LabelJobConfig(
        inputs=tuple(args.input),
        output=args.output,
        bundle=args.bundle,
        stages=config.parse_stages(args.stages),
        resources=resources,
        read_batch_size=args.read_batch_size,
        rows_per_shard=args.rows_per_shard,
        max_pixels=args.max_pixels,
        work_max_side=args.work_max_side,
        max_in_flight_mb=args.max_in_flight_mb,
        incremental=args.incremental,
        video=config.VideoSampling(
            fps=args.video_fps,
            every_n=args.video_every_n,
            start_s=args.video_start,
            end_s=args.video_end,
            max_frames=args.video_max_frames,
            max_frames_per_file=args.max_frames_per_file,
            frames_per_task=args.video_frames_per_task,
            timeout_s=args.file_timeout,
        ),
        relabel=args.relabel,
        cpu_node_resource=args.cpu_node_resource,
        autoscaling=args.autoscaling,
        stall_timeout_s=args.stall_timeout,
        commit_every_s=args.commit_every,
        lease_ttl_s=args.lease_ttl,
        jpeg_decode=args.jpeg_decode,
        score_thresholds=config.parse_score_thresholds(args.score_thresholds),
        storage=storage.StorageOptions(endpoint_url=args.s3_endpoint_url, anon=args.anon),
    )


def show_plan(cfg: config.LabelJobConfig, args) -> int:
    init_ray(args.ray_address, args.num_cpus, verbose=args.verbose)
    plan, nodes = placement.resource_plan(cfg), placement.alive_nodes()
    print(placement.format_plan(plan, nodes))
    found = placement.problems(plan, nodes)
    print("placeable: yes" if not found else "placeable: no\n  " + "\n  ".join(found))
    return 2 if found and not cfg.autoscaling else 0


def main(args) -> int:
    # a scheduler stops jobs with SIGTERM: exit through the normal path so the lease is released
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cfg = make_config(args)
        if args.plan:
            return show_plan(cfg, args)
        manifest = run_label_job(cfg, ray_address=args.ray_address, num_cpus=args.num_cpus, verbose=args.verbose)
    except InputError as exc:  # flags, URIs, bundles, a plan the cluster cannot place
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LeaseHeldError as exc:  # another run holds the output
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except RunError as exc:  # ids in != ids out, the lease lost
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
