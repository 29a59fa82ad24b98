"""Render a synthetic fashion set with exact ground truth (images + Parquet + COCO shards).

    python jobs/make_synthetic.py --output out/synth --count 200 --seed 0
    ray job submit --working-dir . -- python jobs/make_synthetic.py --output s3://bucket/synth/ --count 100000

Label it and score the labels:
    python jobs/label_corpus.py --input out/synth/images --output out/synth-labels
    python jobs/evaluate.py --predictions out/synth-labels --ground-truth out/synth

Made-up action tracks (stand, walk, sit, bend; half under a panning camera) to train the
actions head on, no pixels:
    python jobs/make_synthetic.py --kind actions --count 800 --output out/synth-actions.parquet
    python jobs/train.py --task actions --data out/synth-actions.parquet --output out/actions-synth
"""

from __future__ import annotations

import argparse
import sys

from fashion_ray import storage
from fashion_ray.bench.synth import make_action_examples, make_synthetic
from fashion_ray.formats.ava import write_examples
from fashion_ray.ray_init import init_ray


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Render synthetic fashion scenes with exact ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--kind",
        default="scenes",
        choices=("scenes", "actions"),
        help="scenes: images with exact labels; actions: made-up tracks as action examples (Parquet)",
    )
    p.add_argument(
        "--output",
        default="out/synth",
        help="output URI (images/, parquet/, coco/, manifest.json; with --kind actions one .parquet file)",
    )
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--rows-per-shard", type=int, default=256)
    p.add_argument("--s3-endpoint-url", default=None)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--num-cpus", type=int, default=None)
    return p


def main(args) -> int:
    if args.count < 1 or min(args.width, args.height) < 64:
        print("error: --count must be >= 1 and --width/--height >= 64", file=sys.stderr)
        return 2
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    if args.kind == "actions":
        if not args.output.endswith(".parquet"):
            print("error: with --kind actions, --output is a .parquet file", file=sys.stderr)
            return 2
        write_examples(make_action_examples(args.count, args.seed), args.output, options)
        print(f"synthetic action examples: {args.count} tracks -> {args.output}")
        return 0
    init_ray(args.ray_address, args.num_cpus)
    manifest = make_synthetic(
        args.output,
        args.count,
        seed=args.seed,
        width=args.width,
        height=args.height,
        rows_per_shard=args.rows_per_shard,
        storage_options=options,
    )
    c = manifest["counts"]
    print(
        f"synthetic set: {c['inputs']} images, {c['persons']} persons, {c['garments']} garments, {c['parts']} part masks; "
        f"{manifest['images_per_s']:.1f} images/s; {storage.join(args.output, 'manifest.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
