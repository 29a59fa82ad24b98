"""Per-pixel scores: per-part IoU, mIoU and seed 004's hierarchy levels (upper body / lower body /
body) from one confusion matrix; garment parse IoU against per-pixel ground truth (CCP), by
garment class and by pose region; garments written of a class the photo does not have."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.boxes import box_iou
from fashion_ray.evaluation.common import by_image, mean_or_none, remap_image_ids
from fashion_ray.formats.readers import iter_coco_chunks
from fashion_ray.formats.schema import is_confident


def _part_map(anns: list[dict], height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), np.uint8)
    for a in anns:
        value = taxonomy.PART_VALUE.get(a["category_id"])
        if value and "segmentation" in a:
            out[rle.decode(a["segmentation"])] = value
    return out


class PartsEvaluator:
    """Semantic part segmentation quality, seed-004 style: per-part IoU, mIoU and hierarchy levels."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        n = len(taxonomy.PARTS) + 1
        self.confusion = np.zeros((n, n), np.int64)  # [ground truth, prediction]
        self.levels = {level: [0, 0] for level in taxonomy.PART_HIERARCHY}  # intersection, union
        self.gt_parts = 0

    def process(self, images: list[dict], gt_anns: list[dict], dt_anns: list[dict]) -> None:
        self.gt_parts += sum(a["category_id"] in taxonomy.PART_VALUE for a in gt_anns)  # none: the table is not scored
        gt_by, dt_by = by_image(gt_anns), by_image(dt_anns)
        for img in images:
            h, w = img["height"], img["width"]
            self.add_maps(_part_map(gt_by.get(img["id"], []), h, w), _part_map(dt_by.get(img["id"], []), h, w))

    def add_maps(self, gt_map: np.ndarray, dt_map: np.ndarray) -> None:
        """One image's part maps (values 0..6); training scores its segmenter's output this way."""
        n = len(taxonomy.PARTS) + 1
        self.confusion += np.bincount(gt_map.astype(np.int64).ravel() * n + dt_map.ravel(), minlength=n * n).reshape(
            n, n
        )
        gt_levels, dt_levels = taxonomy.part_hierarchy_masks(gt_map), taxonomy.part_hierarchy_masks(dt_map)
        for level in self.levels:
            self.levels[level][0] += int((gt_levels[level] & dt_levels[level]).sum())
            self.levels[level][1] += int((gt_levels[level] | dt_levels[level]).sum())

    def evaluate(self) -> dict:
        tp = np.diag(self.confusion).astype(float)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = {
            name: (float(tp[k] / union[k]) if union[k] else None)
            for k, name in enumerate(("background", *taxonomy.PARTS))
        }
        parts = [iou[p] for p in taxonomy.PARTS if iou[p] is not None]
        return {
            "gt": self.gt_parts,
            "iou": iou,
            "miou_parts": float(np.mean(parts)) if parts else None,
            "levels": {level: (i / u if u else None) for level, (i, u) in self.levels.items()},
        }


class ParseEvaluator:
    """Garment parsing quality on per-pixel maps (taxonomy.GARMENT_PARSE values, 255 = not
    scored): per-class IoU and mIoU over the garment classes the ground truth has."""

    def __init__(self, classes: tuple[str, ...] = taxonomy.GARMENT_PARSE):
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        n = len(self.classes)
        self.confusion = np.zeros((n, n), np.int64)  # [ground truth, prediction]

    def add_maps(self, gt_map: np.ndarray, dt_map: np.ndarray) -> None:
        n = len(self.classes)
        scored = gt_map != taxonomy.PARSE_IGNORE
        gt, dt = gt_map[scored].astype(np.int64), dt_map[scored].astype(np.int64)
        self.confusion += np.bincount(gt * n + dt, minlength=n * n).reshape(n, n)

    def evaluate(self) -> dict:
        tp = np.diag(self.confusion).astype(float)
        gt_pixels = self.confusion.sum(1)
        union = self.confusion.sum(0) + gt_pixels - tp
        iou = {name: (float(tp[k] / union[k]) if gt_pixels[k] else None) for k, name in enumerate(self.classes)}
        garments = [iou[c] for c in self.classes if c not in taxonomy.NOT_GARMENTS and iou[c] is not None]
        return {
            "iou": iou,
            "miou_garments": float(np.mean(garments)) if garments else None,
            "pixel_accuracy": float(tp.sum() / max(1, self.confusion.sum())),
        }


# the classes a labelling run can be scored on per pixel: it writes garments, not skin or hair
RUN_PARSE_CLASSES = ("background", *[c for c in taxonomy.GARMENT_PARSE if c not in taxonomy.NOT_GARMENTS])


REGION_CLASSES = ("background", *taxonomy.GARMENT_REGIONS)


def _paint(shape, anns: list[dict], value_of) -> np.ndarray:
    """A map of the annotations' values; higher-scored predictions are painted last and win."""
    out = np.zeros(shape, np.uint8)
    for a in sorted(anns, key=lambda a: a.get("score", 1.0)):
        value = value_of(a)
        if value is not None and a.get("segmentation"):
            out[rle.decode(a["segmentation"]).astype(bool)] = value
    return out


def _lut(mapping: dict[int, int | None]) -> np.ndarray:
    lut = np.full(256, taxonomy.PARSE_IGNORE, np.uint8)
    for k, v in mapping.items():
        lut[k] = taxonomy.PARSE_IGNORE if v is None else v
    return lut


# ground-truth parse values -> the run's classes (skin and hair are background to a run) and the pose regions
_GT_TO_RUN = _lut(
    {v: (0 if c in taxonomy.NOT_GARMENTS else RUN_PARSE_CLASSES.index(c)) for v, c in enumerate(taxonomy.GARMENT_PARSE)}
)


_GT_TO_REGION = _lut(
    {
        v: (
            0
            if c in taxonomy.NOT_GARMENTS
            else REGION_CLASSES.index(taxonomy.REGION_OF_PARSE[c])
            if c in taxonomy.REGION_OF_PARSE
            else None
        )
        for v, c in enumerate(taxonomy.GARMENT_PARSE)
    }
)


_NAME = {c["id"]: c["name"] for c in taxonomy.COCO_CATEGORIES}


def _run_value(a: dict) -> int | None:
    parse = taxonomy.PARSE_OF.get(_NAME.get(a["category_id"], ""))
    return RUN_PARSE_CLASSES.index(parse) if parse else None


def _region_value(a: dict) -> int | None:
    name = _NAME.get(a["category_id"], "")
    if name in taxonomy.GARMENT_REGIONS:
        return REGION_CLASSES.index(name)
    parse = taxonomy.PARSE_OF.get(name)  # a garment class, merged the way the ground truth is
    region = taxonomy.REGION_OF_PARSE.get(parse) if parse else None
    return REGION_CLASSES.index(region) if region else None


def evaluate_parse_uris(gt_uri: str, dt_uri: str, options=None, min_score: float = 0.0) -> dict:
    """Per-class IoU of a run's garment masks against per-pixel ground truth (a file of parse
    regions: jobs/convert.py --format ccp), two ways: the garment classes (DeepFashion2 names
    folded back to their parse class, accessories, footwear) and the pose regions (ground
    truth and predictions merged to upper / lower / full body), so the bootstrap regions and a
    garment parser are scored on the same pixels. Only images the run covers are scored."""
    from fashion_ray.formats.readers import _read_json

    gt = _read_json(gt_uri, options)
    value_of = taxonomy.parse_value_of(gt["categories"])
    if not value_of:
        raise ValueError(
            f"{gt_uri} has no garment parse categories (expected {', '.join(taxonomy.GARMENT_PARSE[1:])}: "
            "jobs/convert.py --format ccp writes them)"
        )
    gt_images = {img["id"]: img for img in gt["images"]}
    gt_by = by_image([a for a in gt["annotations"] if a["category_id"] in value_of])
    by_name = {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]}
    garments, regions = ParseEvaluator(RUN_PARSE_CLASSES), ParseEvaluator(REGION_CLASSES)
    absent = AbsentGarments()
    scored, errors = set(), 0
    for images, anns, chunk_errors in iter_coco_chunks(dt_uri, options):
        errors += chunk_errors
        remap = remap_image_ids(images, gt_images, by_name)
        dt_by = by_image(
            [
                {**a, "image_id": remap[a["image_id"]]}
                for a in anns
                if a["image_id"] in remap and a.get("score", 1.0) >= min_score
            ]
        )
        for image_id in sorted(set(remap.values()) - scored):
            img = gt_images[image_id]
            shape = (img["height"], img["width"])
            truth = _paint(shape, gt_by.get(image_id, []), lambda a: value_of[a["category_id"]])
            predicted = dt_by.get(image_id, [])
            run_truth = _GT_TO_RUN[truth]
            garments.add_maps(run_truth, _paint(shape, predicted, _run_value))
            regions.add_maps(_GT_TO_REGION[truth], _paint(shape, predicted, _region_value))
            absent.add(truth, run_truth, predicted)
            scored.add(image_id)
    return {
        "counts": {"images": len(scored), "error_rows": errors},
        "garment_parse": garments.evaluate(),
        "garment_regions": regions.evaluate()
        | {"miou_regions": mean_or_none([v for k, v in regions.evaluate()["iou"].items() if k != "background"])},
        "absent_garments": absent.evaluate(),
    }


class AbsentGarments:
    """Garments written of a class the photo's ground truth does not have, per photo and per
    class: on the labelled person (the predicted person whose box best matches the labelled
    pixels' extent, IoU >= 0.5) and on every person found (passers-by included). Labels only:
    an accessory candidate (an object under the accessory threshold) is not counted."""

    def __init__(self):
        self.photos = self.found = 0
        self.on_person: Counter = Counter()
        self.on_anyone: Counter = Counter()

    def add(self, truth: np.ndarray, run_truth: np.ndarray, predicted: list[dict]) -> None:
        """One photo: its parse ground truth, the same in the run's classes (_GT_TO_RUN), its predictions."""
        self.photos += 1
        has = {RUN_PARSE_CLASSES[v] for v in np.unique(run_truth) if v not in (0, taxonomy.PARSE_IGNORE)}
        person_pixels = (truth != 0) & (truth != taxonomy.PARSE_IGNORE)
        person = None
        if person_pixels.any():
            box = rle.bbox_xyxy(person_pixels)
            persons = [a for a in predicted if a["category_id"] == taxonomy.PERSON_CATEGORY_ID]
            ious = [box_iou(box, [x, y, x + w, y + h]) for x, y, w, h in (a["bbox"] for a in persons)]
            if ious and max(ious) >= 0.5:
                person = persons[int(np.argmax(ious))]["id"]
                self.found += 1
        for a in filter(is_confident, predicted):
            value = _run_value(a)
            name = RUN_PARSE_CLASSES[value] if value else None
            if name is None or name in has:
                continue
            self.on_anyone[name] += 1
            if person is not None and a.get("parent_person_id") == person:
                self.on_person[name] += 1

    def evaluate(self) -> dict:
        n = max(1, self.photos)
        return {
            "photos": self.photos,
            "labelled_person_found": self.found,
            "per_photo_labelled_person": sum(self.on_person.values()) / n,
            "per_photo_all_persons": sum(self.on_anyone.values()) / n,
            "by_class_labelled_person": {c: self.on_person[c] / n for c in RUN_PARSE_CLASSES[1:]},
            "by_class_all_persons": {c: self.on_anyone[c] / n for c in RUN_PARSE_CLASSES[1:]},
        }
