"""Measure the person stage: recall by person height and false persons, on composites.

    python jobs/person_recall.py --composites 60
    python jobs/person_recall.py --bundle s3://models/person-v3 --composites 200 --seed 1

Builds composites of real person cut-outs on real no-people photos with exact boxes
(fashion_ray/person_eval.py), runs the bundle's person stage on them and on the no-people
photos, and prints one JSON object: recall at IoU 0.5 per height bucket, false persons per
composite and per no-people photo, seconds per image.
"""

from __future__ import annotations

import argparse
import json
import sys

from fashion_ray import person_eval
from fashion_ray.models import build_stage_predictor, load_bundle


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="bootstrap", help="bundle with a person stage (URI or built-in name)")
    p.add_argument("--composites", type=int, default=60, help="composite images to build")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def main(args) -> int:
    bundle = load_bundle(args.bundle)
    if "person" not in bundle.stages:
        print(f"error: bundle {bundle.label} has no person stage", file=sys.stderr)
        return 2
    predictor = build_stage_predictor(bundle, "person", args.device)
    result = person_eval.evaluate_detector(predictor, person_eval.make_composites(args.composites, seed=args.seed),
                                           person_eval.empty_photos())
    print(json.dumps({"bundle": bundle.label, "seed": args.seed} | result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
