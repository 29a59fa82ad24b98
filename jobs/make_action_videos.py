"""Build videos of real people standing and walking (static and panning cameras) with AVA ground truth.

    python jobs/make_action_videos.py --out out/action-videos --count 8 --people ../shared/data/pennfudan/PennFudanPed
    python jobs/label_corpus.py --input out/action-videos/videos --output out/action-videos-labels --stages person,actions \
        --score-threshold actions=0.0
    python jobs/evaluate.py --mode actions --predictions out/action-videos-labels \
        --ground-truth out/action-videos/ground_truth.csv

Without --people the bundled sample-photo people (waist-up) are the cut-outs. Street walkers
too small for a pose: --person-heights 20,40.
"""

from __future__ import annotations

import argparse
import os
import sys

from fashion_ray.bench import action_videos
from fashion_ray.formats import ava


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", required=True, help="local folder: videos/ and ground_truth.csv")
    p.add_argument("--count", type=int, default=8, help="videos (every other one with a panning camera)")
    p.add_argument(
        "--people", default=None, help="a Penn-Fudan folder (PennFudanPed) whose pedestrians are the cut-outs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--person-heights", default="130,230", help="min,max height of a person in pixels (e.g. 20,40: street walkers)"
    )
    return p


def main(args) -> int:
    if args.count < 1:
        print("error: --count must be >= 1", file=sys.stderr)
        return 2
    try:
        low, high = (int(v) for v in args.person_heights.split(","))
    except ValueError:
        low = high = 0
    if not 8 <= low <= high <= 340:
        print(
            "error: --person-heights takes min,max pixels, 8 <= min <= max <= 340 (the video is 360 px high)",
            file=sys.stderr,
        )
        return 2
    try:
        people = action_videos.penn_fudan_people(args.people) if args.people else action_videos.bundled_people()
    except (OSError, ValueError) as exc:
        print(f"error: --people {args.people}: {exc}", file=sys.stderr)
        return 2
    lines = action_videos.make_action_videos(
        os.path.join(args.out, "videos"), args.count, people, args.seed, person_heights=(low, high)
    )
    with open(os.path.join(args.out, "ground_truth.csv"), "wb") as fh:
        fh.write(ava.to_csv(lines))
    walks = sum(line[6] == action_videos.WALK for line in lines)
    print(
        f"{args.count} videos, {len(lines)} labelled persons at keyframes ({walks} walk, {len(lines) - walks} stand) "
        f"-> {args.out}/videos, {args.out}/ground_truth.csv"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
