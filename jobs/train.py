"""Train a person, clothing, body-part or action model on Ray Train and publish it as a model bundle.

On a laptop (2 CPU workers, gloo), from a synthetic set:
    python jobs/make_synthetic.py --output out/synth --count 400
    python jobs/convert.py --format labels --input out/synth --output out/synth-coco.json
    python jobs/train.py --task parts --data out/synth-coco.json --workers 2 --steps 300 --output out/parts-v1

On a cluster:
    ray job submit --working-dir . -- python jobs/train.py --task clothing --data s3://datasets/df2-train.json \
        --workers 16 --gpus-per-worker 1 --storage s3://models/runs/ --output s3://models/clothing-v2/

An actions head, from AVA labels matched to the tracks of a labelling run of AVA's videos:
    python jobs/convert.py --format ava --input ava_train_v2.2.csv --labels out/ava-labels --output out/ava-train.parquet
    python jobs/train.py --task actions --data out/ava-train.parquet --steps 2000 --batch-size 64 --lr 0.1 --output out/actions-v1

Run the same command again after a crash and it resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fashion_ray.config import field_defaults
from fashion_ray.ray_init import init_ray
from fashion_ray.training.loop import TRAINING_TASKS, TrainConfig
from fashion_ray.training.trainer import check_data, fit, publish

TRAIN = field_defaults(TrainConfig)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--task",
        required=True,
        choices=TRAINING_TASKS,
        help="garments: the clothing stage's garment parser (data: jobs/convert.py --format ccp); "
        "actions: the actions stage's window head (data: action examples, .parquet)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="canonical COCO file (jobs/convert.py output), or action examples "
        "(.parquet: jobs/convert.py --format ava, jobs/make_synthetic.py --kind actions); any URI",
    )
    p.add_argument("--output", required=True, help="where the bundle is published (any URI)")
    p.add_argument("--architecture", default=TRAIN["architecture"], help="torchvision architecture (default per task)")
    p.add_argument("--input-size", type=int, default=TRAIN["input_size"], help="model input size (default per task)")
    p.add_argument("--steps", type=int, default=TRAIN["steps"])
    p.add_argument("--batch-size", type=int, default=TRAIN["batch_size"], help="per worker")
    p.add_argument("--lr", type=float, default=TRAIN["lr"])
    p.add_argument("--warmup-steps", type=int, default=TRAIN["warmup_steps"])
    p.add_argument("--schedule", default=TRAIN["schedule"], choices=("cosine", "step"))
    p.add_argument("--clip-grad", type=float, default=TRAIN["clip_grad"])
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--pretrained-backbone", default=TRAIN["pretrained_backbone"], help="backbone state dict URI")
    p.add_argument("--checkpoint-every", type=int, default=TRAIN["checkpoint_every"], help="steps")
    p.add_argument(
        "--val-samples", type=int, default=TRAIN["val_samples"], help="held-out samples scored at each checkpoint"
    )
    p.add_argument("--seed", type=int, default=TRAIN["seed"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--storage", default=os.path.abspath("out/train-runs"), help="checkpoints and run state (any URI)")
    p.add_argument("--name", default=None, help="run name; the same name resumes (default: from --output)")
    p.add_argument(
        "--max-failures", type=int, default=3, help="worker failures survived by restarting from a checkpoint"
    )
    p.add_argument(
        "--base-bundle",
        default="bootstrap",
        help='bundle whose other stages are published with the trained one ("" for none)',
    )
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray")
    return p


def main(args) -> int:
    # workers run in their own working directory: a relative local path would not be found there
    args.data = args.data if "://" in args.data else os.path.abspath(args.data)
    try:
        cfg = TrainConfig(
            task=args.task,
            data=args.data,
            architecture=args.architecture,
            input_size=args.input_size,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            schedule=args.schedule,
            clip_grad=args.clip_grad,
            freeze_backbone=args.freeze_backbone,
            pretrained_backbone=args.pretrained_backbone,
            checkpoint_every=args.checkpoint_every,
            val_samples=args.val_samples,
            seed=args.seed,
        )
        check_data(cfg, args.workers)  # a wrong URI or an empty set is one line, not a worker traceback
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or "train-" + args.output.rstrip("/").rsplit("/", 1)[-1]
    init_ray(args.ray_address, args.num_cpus)
    result = fit(
        cfg,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        storage_path=args.storage,
        name=name,
        max_failures=args.max_failures,
        torch_threads=args.torch_threads,
    )
    record = publish(result, args.output, bundle_name=name, version=args.version, base_bundle=args.base_bundle or None)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
