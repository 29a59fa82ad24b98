"""Open a labelling run in the tools people label in: FiftyOne, CVAT, Label Studio, YOLO.

    python jobs/export.py --run out/labels --format fiftyone --name fashion-labels   # then: fiftyone app launch
    python jobs/export.py --run s3://bucket/labels/ --format cvat --output out/cvat  # CVAT: import "COCO 1.0"
    python jobs/export.py --run out/labels --format labelstudio --output out/ls      # Label Studio: import tasks.json
    python jobs/export.py --run out/labels --format yolo --output out/yolo           # Ultralytics layout

The run is read shard by shard from any URI; `--output` is a local folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from fashion_ray import storage
from fashion_ray.errors import InputError
from fashion_ray.export import FORMATS, export_run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--run", required=True, help="labelling run (folder or URI holding manifest.json)")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--output", default=None, help="folder to write (cvat, labelstudio, yolo)")
    p.add_argument("--name", default="fashion-ray", help="FiftyOne dataset name (persistent)")
    p.add_argument("--media-dir", default=None, help="where FiftyOne's copies of remote photos and video frames go")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FiftyOne dataset of that name")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    return p


def main(args) -> int:
    if args.format not in FORMATS:
        print(f"error: --format {args.format!r} is not one of: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.format != "fiftyone" and not args.output:
        print(f"error: --format {args.format} needs --output FOLDER", file=sys.stderr)
        return 2
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    try:
        summary = export_run(
            args.run,
            args.format,
            args.name if args.format == "fiftyone" else args.output,
            media_dir=args.media_dir,
            overwrite=args.overwrite,
            options=options,
        )
    except InputError as exc:  # the run, the format's needs, the output
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
