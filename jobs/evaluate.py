"""Score labels against ground truth: COCO AP/AR tables, per-part IoU, counts (JSON + Markdown),
precision-recall curves per class (PNG) and a page of the worst misses and false positives.

    python jobs/evaluate.py --predictions out/synth-labels --ground-truth out/synth
    python jobs/evaluate.py --predictions results.json --ground-truth s3://bucket/gt/instances.json
    python jobs/evaluate.py --predictions out/pennfudan --ground-truth ../shared/data/pennfudan/coco.json
    python jobs/evaluate.py --mode semantic --predictions out/ccp-val-labels --ground-truth out/ccp-val.json

--mode semantic scores garment masks per pixel (per-class IoU, mIoU) against semantic ground
truth such as Clothing Co-Parsing (jobs/convert.py --format ccp), in seed 004's table layout.

--mode actions scores a run's person actions (or an AVA detection CSV) against AVA ground truth
(ava_val_v2.2.csv, or jobs/convert.py --format penn-fudan-actions): AVA's frame-mAP at IoU 0.5,
per-action AP, precision and recall at --threshold, and the single-label accuracy:
    python jobs/evaluate.py --mode actions --predictions out/pennfudan-actions --ground-truth out/pf-actions.csv

A standard COCO file's categories are matched to ours by name; categories we do not label are
skipped (the report says which) and only tables the ground truth has labels for are scored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fashion_ray import evaluation, storage
from fashion_ray.evaluation import pictures


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate labels against ground truth.")
    p.add_argument(
        "--predictions", required=True, help="labelling run folder, COCO shards folder/file or COCO results list"
    )
    p.add_argument("--ground-truth", required=True, help="synthetic set / run folder, COCO shards folder or COCO file")
    p.add_argument(
        "--mode",
        default="instances",
        choices=("instances", "semantic", "actions"),
        help="instances: COCO AP tables; semantic: per-class IoU of garment masks against per-pixel ground "
        "truth; actions: AVA frame-mAP against an AVA CSV",
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="actions: the score at which precision and recall are given"
    )
    p.add_argument("--out", default=None, help="folder for evaluation.json + evaluation.md (default: PREDICTIONS/eval)")
    p.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="leave out predictions scored below this (to compare score thresholds on one run)",
    )
    p.add_argument("--s3-endpoint-url", default=None)
    return p


def main(args) -> int:
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    semantic = args.mode == "semantic"
    try:
        if args.mode == "actions":
            report = evaluation.evaluate_actions_uris(
                args.ground_truth, args.predictions, options, min_score=args.min_score, threshold=args.threshold
            )
        else:
            report = (evaluation.evaluate_parse_uris if semantic else evaluation.evaluate_uris)(
                args.ground_truth, args.predictions, options, min_score=args.min_score
            )
    except (FileNotFoundError, json.JSONDecodeError, storage.StorageError) as exc:
        print(f"error: cannot read {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    markdown = {"semantic": evaluation.parse_to_markdown, "actions": evaluation.actions_to_markdown}.get(
        args.mode, evaluation.to_markdown
    )(report)
    out = args.out or (
        storage.join(args.predictions, "eval")
        if not args.predictions.endswith(".json")
        else os.path.splitext(args.predictions)[0] + "_eval"
    )
    storage.write_bytes_atomic(storage.join(out, "evaluation.json"), json.dumps(report, indent=2).encode(), options)
    storage.write_bytes_atomic(storage.join(out, "evaluation.md"), markdown.encode(), options)
    if args.mode != "instances":
        print(markdown)
        print(f"written to {out}: evaluation.json, evaluation.md")
        return 0
    # photos of a COCO file are relative to its folder; a run's are absolute URIs
    photos_root = args.ground_truth.rsplit("/", 1)[0] if args.ground_truth.endswith(".json") else args.ground_truth
    written = pictures.write_pictures(report, evaluation.TABLES, out, photos_root, options)
    print(markdown)
    print(f"written to {out}: evaluation.json, evaluation.md, {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
