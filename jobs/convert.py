"""Convert a dataset into fashion-ray's canonical training format (one COCO file, images by URI).

    python jobs/convert.py --format deepfashion2 --input s3://datasets/deepfashion2/validation --output s3://datasets/df2-val.json
    python jobs/convert.py --format ccp --input ../shared/data/ccp --output out/ccp-garments.json
    python jobs/convert.py --format ccp --input ../shared/data/ccp --split val --output out/ccp-val.json --image-list out/ccp-val.txt
    python jobs/convert.py --format ccp --input ../shared/data/ccp --tags ../shared/data/ccp_tags --max-tagged 400 --output out/ccp-tagged.json
    python jobs/convert.py --format ccp --input ../shared/data/ccp --split val --framing waist_up --crops out/ccp-val-waist_up \
        --output out/ccp-val-waist_up.json --image-list out/ccp-val-waist_up.txt
    python jobs/convert.py --format labels --input out/labels --output out/teacher-labels.json

Actions (AVA format):
    python jobs/convert.py --format penn-fudan-actions --input ../shared/data/pennfudan/PennFudanPed --output out/pf-actions.csv
    python jobs/convert.py --format ava --input ava_train_v2.2.csv --labels out/ava-labels --output out/ava-train.parquet

penn-fudan-actions writes AVA ground truth (walking / standing per pedestrian) for
jobs/evaluate.py --mode actions; ava matches AVA's labelled persons to the tracks of a
labelling run of AVA's videos (run at 1 fps over AVA's 900-1800 s window) and writes action
examples for jobs/train.py --task actions.
"""

from __future__ import annotations

import argparse
import os
import sys

from fashion_ray import storage
from fashion_ray.formats import ava, converters
from fashion_ray.training import action_examples

FORMATS = {
    "deepfashion2": lambda a, o: converters.convert_deepfashion2(a.input, o),
    "fashionpedia": lambda a, o: converters.convert_fashionpedia(a.input, a.image_root, o),
    "pascal-part": lambda a, o: converters.convert_pascal_part(a.input, o),
    "seed004": lambda a, o: converters.convert_seed004(a.input, o),
    "penn-fudan": lambda a, o: converters.convert_penn_fudan(a.input, o),
    "ccp": lambda a, o: converters.convert_ccp(a.input, o, a.split, a.tags, a.framing, a.crops, a.max_tagged),
    "labels": lambda a, o: converters.convert_labels(a.input, o),
}
ACTION_FORMATS = ("penn-fudan-actions", "ava")  # AVA CSV / action examples, not COCO


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert a dataset to COCO with fashion-ray's categories.")
    p.add_argument("--format", required=True, choices=sorted((*FORMATS, *ACTION_FORMATS)))
    p.add_argument("--input", required=True, help="dataset root (or Fashionpedia's instances JSON)")
    p.add_argument("--image-root", default=None, help="Fashionpedia only: folder of its images")
    p.add_argument(
        "--split",
        default=None,
        choices=("train", "val"),
        help="ccp only: keep one split (default: all, each image marked)",
    )
    p.add_argument(
        "--tags",
        default=None,
        help="ccp only: CCP's image-level tag folder (tags.json, photos/), added as "
        "tagged training photos for the garment parser's presence head",
    )
    p.add_argument("--max-tagged", type=int, default=None, help="ccp --tags only: keep this many tagged photos")
    p.add_argument(
        "--framing",
        default=None,
        choices=sorted(converters.FRAMING_CUT),
        help="ccp only: cut every photo below the person's waist or shoulders (written to --crops)",
    )
    p.add_argument("--crops", default=None, help="ccp --framing only: folder the cut photos are written to")
    p.add_argument(
        "--labels", default=None, help="ava only: the labelling run of AVA's videos whose tracks are matched"
    )
    p.add_argument(
        "--output", required=True, help="URI of the COCO file to write (.csv / .parquet for the action formats)"
    )
    p.add_argument(
        "--image-list",
        default=None,
        help="also write the images' URIs here, one per line (an --input manifest for label_corpus.py)",
    )
    p.add_argument("--s3-endpoint-url", default=None)
    return p


def main(args) -> int:
    if args.format == "fashionpedia" and not args.image_root:
        print("error: --format fashionpedia needs --image-root", file=sys.stderr)
        return 2
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    # images are referenced by URI: a relative local path would mean nothing to a worker elsewhere
    args.input, args.tags, args.crops = (
        uri if uri is None or "://" in uri else os.path.abspath(uri) for uri in (args.input, args.tags, args.crops)
    )
    if args.format in ACTION_FORMATS:
        return convert_actions(args, options)
    try:
        doc = FORMATS[args.format](args, options)
    except FileNotFoundError as exc:
        print(f"error: {args.input!r} is not a {args.format} dataset: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    converters.write_coco(doc, args.output, options)
    if args.image_list:
        storage.write_bytes_atomic(
            args.image_list, "".join(f"{i['file_name']}\n" for i in doc["images"]).encode(), options
        )
    print(f"{args.format}: {len(doc['images'])} images, {len(doc['annotations'])} annotations -> {args.output}")
    return 0


def convert_actions(args, options) -> int:
    suffix = ".csv" if args.format == "penn-fudan-actions" else ".parquet"
    if not args.output.endswith(suffix) or (args.format == "ava" and not args.labels):
        print(
            f"error: --format {args.format} writes a {suffix} file"
            + (" and needs --labels RUN" if args.format == "ava" else ""),
            file=sys.stderr,
        )
        return 2
    try:
        if args.format == "penn-fudan-actions":
            lines = converters.penn_fudan_actions(args.input, options)
            storage.write_bytes_atomic(args.output, ava.to_csv(lines), options)
            print(f"{args.format}: {len(lines)} labelled pedestrians -> {args.output}")
            return 0
        examples, stats = action_examples.ava_examples(args.input, args.labels, options)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ava.write_examples(examples, args.output, options)
    print(f"{args.format}: {len(examples)} examples -> {args.output}; {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
