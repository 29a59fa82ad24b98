"""Render overlays of a labelling run's output into PNGs and an HTML page.

python jobs/preview.py --labels out/labels            # writes out/labels/preview/index.html
"""

from __future__ import annotations

import argparse
import sys

from fashion_ray import storage
from fashion_ray.preview import write_preview


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Render label overlays for a sample of a run's images.")
    p.add_argument("--labels", default="out/labels", help="output URI of a labelling run (holds manifest.json)")
    p.add_argument("--out", default=None, help="where to write PNGs + index.html (default: LABELS/preview)")
    p.add_argument("--limit", type=int, default=24, help="number of images to render")
    p.add_argument("--s3-endpoint-url", default=None)
    return p


def main(args) -> int:
    try:
        index = write_preview(
            args.labels, args.out, args.limit, storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
        )
    except FileNotFoundError:
        print(f"error: no manifest.json under {args.labels!r}: run jobs/label_corpus.py first", file=sys.stderr)
        return 2
    print(f"preview: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
