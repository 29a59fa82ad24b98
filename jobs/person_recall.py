"""Measure the person stage: recall by person height and false persons on composites, and
tracks per walker on walkers videos.

    python jobs/person_recall.py --composites 60
    python jobs/person_recall.py --composites 0 --walkers 4
    python jobs/person_recall.py --bundle s3://models/person-v3 --composites 200 --seed 1

Composites are real person cut-outs on real no-people photos with exact boxes
(fashion_ray/bench/person_eval.py); the bundle's person stage runs on them and on the no-people
photos. Walkers videos are cut-outs crossing a real background at walking speed, labelled by
the real labelling job at 1 fps (motion proposals and tracking included). Prints one JSON
object: recall at IoU 0.5 per height bucket, false persons per composite and per no-people
photo, seconds per image; frame recall, tracks per walker, id switches and false tracks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from fashion_ray.bench import person_eval
from fashion_ray.config import DEVICES, Device
from fashion_ray.models import build_stage_predictor, load_bundle
from fashion_ray.taxonomy import PERSON_STAGE


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="bootstrap", help="bundle with a person stage (URI or built-in name)")
    p.add_argument("--composites", type=int, default=60, help="composite images to build (0: none)")
    p.add_argument("--walkers", type=int, default=0, help="walkers videos to build and label (0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for the local Ray of the walkers run (default: all)"
    )
    return p


def main(args) -> int:
    bundle = load_bundle(args.bundle)
    if PERSON_STAGE not in bundle.stages:
        print(f"error: bundle {bundle.label} has no person stage", file=sys.stderr)
        return 2
    result = {"bundle": bundle.label, "seed": args.seed}
    if args.composites > 0:
        predictor = build_stage_predictor(bundle, PERSON_STAGE, Device(args.device))
        result |= person_eval.evaluate_detector(
            predictor,
            person_eval.make_composites(args.composites, seed=args.seed),
            person_eval.empty_photos(),
            min_score=bundle.stages[PERSON_STAGE].score_threshold,
        )
    if args.walkers > 0:
        with tempfile.TemporaryDirectory() as workdir:
            result["walkers_videos"] = person_eval.evaluate_walkers(
                args.bundle, args.walkers, args.seed, workdir, num_cpus=args.num_cpus
            )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
