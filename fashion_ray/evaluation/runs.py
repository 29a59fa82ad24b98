"""A labelling run, synthetic set, COCO file or results list scored against a ground truth:
every COCO table, the part IoUs and the person counts in one pass over buckets of images.
Images are matched by id (the same URI gives the same id) and, failing that, by file name."""

from __future__ import annotations

import os
from collections import Counter

from fashion_ray.evaluation.coco import TASKS, CocoTable, PersonCounts
from fashion_ray.evaluation.common import remap_image_ids
from fashion_ray.evaluation.semantic import PartsEvaluator
from fashion_ray.formats.readers import iter_coco_chunks, to_our_categories


class Evaluator:
    """Every table of the report, fed one bucket of images (with their gt and dt annotations) at a time.

    Each part has detectron2's evaluator shape, reset / process(images, gt, dt) / evaluate;
    this one fans a bucket out to the COCO tables, the part IoUs and the person counts.
    """

    def __init__(self):
        self.parts: dict = {name: CocoTable(*spec) for name, spec in TASKS.items()}
        self.parts |= {"parts": PartsEvaluator(), "counts": PersonCounts()}
        self.error_rows = 0

    def reset(self) -> None:
        for part in self.parts.values():
            part.reset()
        self.error_rows = 0

    def process(self, images: list[dict], gt_anns: list[dict], dt_anns: list[dict]) -> None:
        for part in self.parts.values():
            part.process(images, gt_anns, dt_anns)

    def evaluate(self) -> dict:
        report = {name: part.evaluate() for name, part in self.parts.items()}
        report["counts"] |= {"error_rows": self.error_rows}
        return report


def evaluate(gt: dict, dt: dict, errors: int = 0) -> dict:
    """All tables for predictions `dt` against ground truth `gt` (COCO dicts held in memory;
    gt's categories are matched to ours by name).

    Only images the predictions cover are scored: a partial run is not penalised for the rest.
    """
    skipped: Counter = Counter()
    gt_anns = to_our_categories(gt, skipped)
    gt_images = {img["id"]: img for img in gt["images"]}
    remap = remap_image_ids(dt["images"], gt_images, {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]})
    covered = set(remap.values())
    ev = Evaluator()
    ev.process(
        [gt_images[i] for i in sorted(covered)],
        [a for a in gt_anns if a["image_id"] in covered],
        [{**a, "image_id": remap[a["image_id"]]} for a in dt["annotations"] if a["image_id"] in remap],
    )
    ev.error_rows = errors
    return ev.evaluate() | {"skipped_ground_truth": dict(skipped.most_common())}


def evaluate_uris(
    gt_uri: str, dt_uri: str, options=None, images_per_bucket: int = 2000, min_score: float = 0.0
) -> dict:
    """Evaluate sets of any size: both sides are spilled to local buckets by image id, then
    evaluated a bucket at a time, so memory holds one bucket's masks, not the whole set.
    Predictions scored below `min_score` are left out (what a bundle with that threshold writes)."""
    import pickle
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fashion-ray-eval-") as work:
        gt_images: dict[int, dict] = {}  # id -> image record (small: no masks)
        by_name: dict[str, int] = {}
        gt_files = []
        skipped: Counter = Counter()
        for k, (images, anns, _) in enumerate(iter_coco_chunks(gt_uri, options, skipped)):
            for img in images:
                gt_images[img["id"]] = img
                by_name[os.path.basename(img["file_name"])] = img["id"]
            gt_files.append(os.path.join(work, f"gt-{k}.pkl"))
            with open(gt_files[-1], "wb") as fh:
                pickle.dump(anns, fh)
        buckets = max(1, -(-len(gt_images) // images_per_bucket))
        spill = [open(os.path.join(work, f"bucket-{b}.pkl"), "ab") for b in range(buckets)]
        covered, errors = set(), 0
        for images, anns, chunk_errors in iter_coco_chunks(dt_uri, options):
            errors += chunk_errors
            remap = remap_image_ids(images, gt_images, by_name)
            covered.update(remap.values())
            for a in anns:
                if a["image_id"] in remap and a.get("score", 1.0) >= min_score:
                    a = {**a, "image_id": remap[a["image_id"]]}
                    pickle.dump(("dt", a), spill[a["image_id"] % buckets])
        for path in gt_files:  # ground truth of covered images only, into the same buckets
            with open(path, "rb") as fh:
                for a in pickle.load(fh):
                    if a["image_id"] in covered:
                        pickle.dump(("gt", a), spill[a["image_id"] % buckets])
        for fh in spill:
            fh.close()
        ev = Evaluator()
        for b in range(buckets):
            gt_anns, dt_anns = [], []
            with open(os.path.join(work, f"bucket-{b}.pkl"), "rb") as fh:
                while True:
                    try:
                        side, a = pickle.load(fh)
                    except EOFError:
                        break
                    (gt_anns if side == "gt" else dt_anns).append(a)
            images = [gt_images[i] for i in sorted(covered) if i % buckets == b]
            ev.process(images, gt_anns, dt_anns)
        ev.error_rows = errors
        report = ev.evaluate() | {"skipped_ground_truth": dict(skipped.most_common())}
        for table in report.values():  # where the worst cases' photos are, for the HTML page
            for case in table.get("worst", []) if isinstance(table, dict) else []:
                case["file_name"] = gt_images[case["image_id"]]["file_name"]
        return report
