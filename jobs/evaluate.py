"""Score labels against ground truth: COCO AP/AR tables, per-part IoU, counts (JSON + Markdown).

    python jobs/evaluate.py --predictions out/synth-labels --ground-truth out/synth
    python jobs/evaluate.py --predictions results.json --ground-truth s3://bucket/gt/instances.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fashion_ray import evaluation, storage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate labels against ground truth.")
    p.add_argument("--predictions", required=True, help="labelling run folder, COCO shards folder/file or COCO results list")
    p.add_argument("--ground-truth", required=True, help="synthetic set / run folder, COCO shards folder or COCO file")
    p.add_argument("--out", default=None, help="folder for evaluation.json + evaluation.md (default: PREDICTIONS/eval)")
    p.add_argument("--s3-endpoint-url", default=None)
    return p


def main(args) -> int:
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    try:
        report = evaluation.evaluate_uris(args.ground_truth, args.predictions, options)
    except (FileNotFoundError, json.JSONDecodeError, storage.StorageError) as exc:
        print(f"error: cannot read {exc}", file=sys.stderr)
        return 2
    markdown = evaluation.to_markdown(report)
    out = args.out or (storage.join(args.predictions, "eval") if not args.predictions.endswith(".json")
                       else os.path.splitext(args.predictions)[0] + "_eval")
    storage.write_bytes_atomic(storage.join(out, "evaluation.json"), json.dumps(report, indent=2).encode(), options)
    storage.write_bytes_atomic(storage.join(out, "evaluation.md"), markdown.encode(), options)
    print(markdown)
    print(f"written: {storage.join(out, 'evaluation.json')}, {storage.join(out, 'evaluation.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
