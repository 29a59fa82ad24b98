"""Evaluation that reports what the seeds report.

- COCO 12-line AP/AR tables (pycocotools) for person boxes, garment boxes and garment masks
  (DeepFashion2 categories, with per-category AP), and class-agnostic garment boxes/masks
  (any garment category counts: the only fair table for the bootstrap's garment regions);
- per-part IoU, mIoU and the hierarchy levels upper body / lower body / body (seed 004), from
  per-image part maps accumulated in one confusion matrix;
- counts: images, persons matched / missed / extra (IoU >= 0.5, greedy by score), error rows.

Inputs: a labelling run or synthetic set (folder with manifest.json), a folder of COCO
shards, a COCO file, or (predictions only) a COCO results list. Images are matched by id
(the same URI gives the same id) and, failing that, by file name.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections import Counter

import numpy as np

from fashion_ray import storage, taxonomy
from fashion_ray.boxes import box_iou, box_iou_matrix
from fashion_ray.formats import masks as rle
from fashion_ray.formats.readers import iter_coco_chunks, to_our_categories

DF2_IDS = [taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.DEEPFASHION2]
GARMENT_IDS = set(DF2_IDS) | {taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.GARMENT_REGIONS}
ACCESSORY_IDS = [taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.ACCESSORIES]
ANY_GARMENT_ID = 1000  # one category for class-agnostic garment evaluation

STAT_LINES = [  # the 12 lines COCOeval.summarize prints, in its order
    ("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100),
]


# COCO AP/AR -----------------------------------------------------------------------------------

TASKS = {  # name -> (iou type, categories, merged category for class-agnostic tables)
    "person_bbox": ("bbox", [taxonomy.PERSON_CATEGORY_ID], None),
    "garment_bbox": ("bbox", DF2_IDS, None),
    "garment_segm": ("segm", DF2_IDS, None),
    "any_garment_bbox": ("bbox", sorted(GARMENT_IDS), ANY_GARMENT_ID),
    "any_garment_segm": ("segm", sorted(GARMENT_IDS), ANY_GARMENT_ID),
    "accessory_bbox": ("bbox", ACCESSORY_IDS, None),
}
WORST_KEPT = 40  # misses and false positives kept per table for the HTML page


def _coco(images: list[dict], anns: list[dict], categories: list[dict], iou_type: str):
    """A pycocotools COCO object built in memory; areas as loadRes would compute them."""
    from pycocotools.coco import COCO

    ready = []
    for k, a in enumerate(anns, start=1):
        a = {**a, "id": k, "iscrowd": a.get("iscrowd", 0)}
        if iou_type == "bbox":
            a.pop("segmentation", None)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else float(rle.area(a["segmentation"])))
        ready.append(a)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": ready, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoTable:
    """COCO AP/AR for one task, computed bucket by bucket and accumulated once.

    COCOeval.evaluate works per image; its per-(category, area, image) results from every
    bucket are laid out in the order accumulate() expects, so the tables equal one COCOeval
    over the whole set while only one bucket of masks is in memory at a time.
    """

    def __init__(self, iou_type: str, cat_ids, merge_to: int | None = None):
        self.iou_type, self.cat_ids, self.merge_to = iou_type, list(cat_ids), merge_to
        self.reset()

    def reset(self) -> None:
        self.results: dict[tuple, dict] = {}
        self.img_ids: list[int] = []
        self.gt_count = self.dt_count = 0
        self.misses: list[dict] = []  # unmatched ground truth at IoU 0.5, largest first
        self.false_positives: list[dict] = []  # unmatched predictions at IoU 0.5, highest score first

    def _select(self, anns: list[dict], is_dt: bool) -> list[dict]:
        keep = set(self.cat_ids)
        out = []
        for a in anns:
            if a["category_id"] not in keep or (self.iou_type == "segm" and "segmentation" not in a):
                continue
            a = dict(a)
            if self.merge_to is not None:
                a["category_id"] = self.merge_to
            if is_dt:  # results in the standard shape: boxes for bbox, masks for segm
                a = {k: a[k] for k in ("image_id", "category_id", "bbox" if self.iou_type == "bbox" else "segmentation")} | {
                    "score": a.get("score", 1.0)}
            out.append(a)
        return out

    def _categories(self) -> list[dict]:
        if self.merge_to is not None:
            return [{"id": self.merge_to, "name": "garment"}]
        return [c for c in taxonomy.COCO_CATEGORIES if c["id"] in set(self.cat_ids)]

    def process(self, images: list[dict], gt_anns: list[dict], dt_anns: list[dict]) -> None:
        from pycocotools.cocoeval import COCOeval

        gt, dt = self._select(gt_anns, False), self._select(dt_anns, True)
        self.gt_count += len(gt)
        self.dt_count += len(dt)
        img_ids = sorted(i["id"] for i in images)
        self.img_ids += img_ids
        if not gt and not dt:
            return
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt, coco_dt = (_coco(images, gt, self._categories(), self.iou_type),
                                _coco(images, dt, self._categories(), self.iou_type))
            ev = COCOeval(coco_gt, coco_dt, self.iou_type)
            ev.params.imgIds = img_ids
            ev.params.catIds = self._cat_list()
            ev.evaluate()
        n_img, n_area = len(img_ids), len(ev.params.areaRng)
        for k, cat in enumerate(ev.params.catIds):
            for a in range(n_area):
                for i, img in enumerate(img_ids):
                    entry = ev.evalImgs[k * n_area * n_img + a * n_img + i]
                    if entry is not None:
                        self.results[(cat, a, img)] = entry
                        if a == 0:
                            self._keep_worst(entry, coco_gt, coco_dt)

    def _keep_worst(self, entry: dict, coco_gt, coco_dt) -> None:
        """The image's misses and false positives at IoU 0.5 (all areas), for the HTML page."""
        def record(ann, kind):
            from pycocotools import mask as mask_utils

            box = ann["bbox"] if "bbox" in ann else [float(v) for v in mask_utils.toBbox(ann["segmentation"])]
            return {"image_id": ann["image_id"], "category": self._name(ann["category_id"]), "box": box,
                    "score": ann.get("score"), "area": ann.get("area", 0.0), "kind": kind}

        for g, matched, ignored in zip(entry["gtIds"], entry["gtMatches"][0], entry["gtIgnore"]):
            if not matched and not ignored:
                self.misses.append(record(coco_gt.anns[g], "miss"))
        for d, matched, ignored in zip(entry["dtIds"], entry["dtMatches"][0], entry["dtIgnore"][0]):
            if not matched and not ignored:
                self.false_positives.append(record(coco_dt.anns[d], "false positive"))
        self.misses = sorted(self.misses, key=lambda r: -r["area"])[:WORST_KEPT]
        self.false_positives = sorted(self.false_positives, key=lambda r: -(r["score"] or 0))[:WORST_KEPT]

    def _name(self, cat: int) -> str:
        return {c["id"]: c["name"] for c in self._categories()}.get(cat, str(cat))

    def _cat_list(self) -> list[int]:
        return [self.merge_to] if self.merge_to is not None else self.cat_ids

    def evaluate(self) -> dict:
        from pycocotools.cocoeval import COCOeval

        if not self.gt_count:
            return {"stats": [None] * 12, "per_category": {}, "gt": 0, "dt": self.dt_count}
        ev = COCOeval(iouType=self.iou_type)
        ev.params.imgIds = sorted(set(self.img_ids))
        ev.params.catIds = self._cat_list()
        ev._paramsEval = copy.deepcopy(ev.params)
        n_area = len(ev.params.areaRng)
        ev.evalImgs = [self.results.get((cat, a, img)) for cat in ev.params.catIds for a in range(n_area)
                       for img in ev.params.imgIds]
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
            ev.summarize()
        names = {c["id"]: c["name"] for c in self._categories()}
        per_category, curves = {}, {}
        for k, cat in enumerate(ev.params.catIds):
            p = ev.eval["precision"][:, :, k, 0, -1]  # [T, R, K, A, M]: all areas, most detections
            if (p > -1).any():
                per_category[names[cat]] = float(p[p > -1].mean())
                # precision at 101 recall points, IoU 0.5 and 0.75 (-1: recall not reached)
                curves[names[cat]] = {"0.50": [float(v) for v in p[0]], "0.75": [float(v) for v in p[5]]}
        return {"stats": [None if v < 0 else float(v) for v in ev.stats], "per_category": per_category,
                "gt": self.gt_count, "dt": self.dt_count, "pr_curves": curves,
                "worst": self.misses + self.false_positives}


# parts IoU ------------------------------------------------------------------------------------

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
        gt_by, dt_by = _by_image(gt_anns), _by_image(dt_anns)
        for img in images:
            h, w = img["height"], img["width"]
            self.add_maps(_part_map(gt_by.get(img["id"], []), h, w), _part_map(dt_by.get(img["id"], []), h, w))

    def add_maps(self, gt_map: np.ndarray, dt_map: np.ndarray) -> None:
        """One image's part maps (values 0..6); training scores its segmenter's output this way."""
        n = len(taxonomy.PARTS) + 1
        self.confusion += np.bincount(gt_map.astype(np.int64).ravel() * n + dt_map.ravel(), minlength=n * n).reshape(n, n)
        gt_levels, dt_levels = taxonomy.part_hierarchy_masks(gt_map), taxonomy.part_hierarchy_masks(dt_map)
        for level in self.levels:
            self.levels[level][0] += int((gt_levels[level] & dt_levels[level]).sum())
            self.levels[level][1] += int((gt_levels[level] | dt_levels[level]).sum())

    def evaluate(self) -> dict:
        tp = np.diag(self.confusion).astype(float)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = {name: (float(tp[k] / union[k]) if union[k] else None)
               for k, name in enumerate(("background", *taxonomy.PARTS))}
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
        return {"iou": iou, "miou_garments": float(np.mean(garments)) if garments else None,
                "pixel_accuracy": float(tp.sum() / max(1, self.confusion.sum()))}


def _person_matches(gt_anns: list[dict], dt_anns: list[dict], threshold: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching of one image's person boxes, highest score first."""
    from pycocotools import mask as mask_utils

    person = taxonomy.PERSON_CATEGORY_ID
    g = [a for a in gt_anns if a["category_id"] == person and not a.get("iscrowd")]  # a crowd region is no one person
    d = sorted((a for a in dt_anns if a["category_id"] == person), key=lambda a: -a.get("score", 1.0))
    if not g or not d:
        return 0, len(g), len(d)
    ious = mask_utils.iou([a["bbox"] for a in d], [a["bbox"] for a in g], [0] * len(g))
    used: set[int] = set()
    for i in range(len(d)):
        j = max((j for j in range(len(g)) if j not in used), key=lambda j: ious[i, j], default=None)
        if j is not None and ious[i, j] >= threshold:
            used.add(j)
    return len(used), len(g) - len(used), len(d) - len(used)


SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # person score cut-offs the counts are also given at


class PersonCounts:
    """Persons in ground truth matched (IoU >= 0.5, greedy by score), missed and extra; images
    seen; and matched / extra at each of SCORE_THRESHOLDS, to choose a bundle's threshold by."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.counts = {"images": 0, "persons_gt": 0, "persons_matched": 0, "persons_missed": 0, "persons_extra": 0}
        self.at_score = {t: [0, 0] for t in SCORE_THRESHOLDS}  # threshold -> [matched, extra]

    def process(self, images: list[dict], gt_anns: list[dict], dt_anns: list[dict]) -> None:
        gt_by, dt_by = _by_image(gt_anns), _by_image(dt_anns)
        for img in images:
            gt, dt = gt_by.get(img["id"], []), dt_by.get(img["id"], [])
            matched, missed, extra = _person_matches(gt, dt)
            self.counts["persons_matched"] += matched
            self.counts["persons_missed"] += missed
            self.counts["persons_extra"] += extra
            self.counts["persons_gt"] += matched + missed
            for t, tally in self.at_score.items():
                matched, _, extra = _person_matches(gt, [a for a in dt if a.get("score", 1.0) >= t])
                tally[0] += matched
                tally[1] += extra
        self.counts["images"] += len(images)

    def evaluate(self) -> dict:
        return dict(self.counts) | {"at_score": {f"{t:.1f}": {"matched": m, "extra": e} for t, (m, e) in self.at_score.items()}}


def _by_image(anns: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in anns:
        out.setdefault(a["image_id"], []).append(a)
    return out


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


def _remap_ids(dt_images: list[dict], gt_ids, by_name: dict[str, int]) -> dict[int, int]:
    """Prediction image id -> ground-truth image id: same id, else same file name. A results
    list (no images) is taken as covering every ground-truth image."""
    if not dt_images:
        return {i: i for i in gt_ids}
    remap = {}
    for img in dt_images:
        target = img["id"] if img["id"] in gt_ids else by_name.get(os.path.basename(img.get("file_name", "")))
        if target is not None:
            remap[img["id"]] = target
    return remap


def evaluate(gt: dict, dt: dict, errors: int = 0) -> dict:
    """All tables for predictions `dt` against ground truth `gt` (COCO dicts held in memory;
    gt's categories are matched to ours by name).

    Only images the predictions cover are scored: a partial run is not penalised for the rest.
    """
    skipped: Counter = Counter()
    gt_anns = to_our_categories(gt, skipped)
    gt_images = {img["id"]: img for img in gt["images"]}
    remap = _remap_ids(dt["images"], gt_images, {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]})
    covered = set(remap.values())
    ev = Evaluator()
    ev.process([gt_images[i] for i in sorted(covered)], [a for a in gt_anns if a["image_id"] in covered],
               [{**a, "image_id": remap[a["image_id"]]} for a in dt["annotations"] if a["image_id"] in remap])
    ev.error_rows = errors
    return ev.evaluate() | {"skipped_ground_truth": dict(skipped.most_common())}


def evaluate_uris(gt_uri: str, dt_uri: str, options=None, images_per_bucket: int = 2000, min_score: float = 0.0) -> dict:
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
            remap = _remap_ids(images, gt_images, by_name)
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


# garment parsing against semantic ground truth (CCP) ------------------------------------------

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
_GT_TO_RUN = _lut({v: (0 if c in taxonomy.NOT_GARMENTS else RUN_PARSE_CLASSES.index(c)) for v, c in enumerate(taxonomy.GARMENT_PARSE)})
_GT_TO_REGION = _lut({v: (0 if c in taxonomy.NOT_GARMENTS else REGION_CLASSES.index(taxonomy.REGION_OF_PARSE[c])
                          if c in taxonomy.REGION_OF_PARSE else None) for v, c in enumerate(taxonomy.GARMENT_PARSE)})
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
        raise ValueError(f"{gt_uri} has no garment parse categories (expected {', '.join(taxonomy.GARMENT_PARSE[1:])}: "
                         "jobs/convert.py --format ccp writes them)")
    gt_images = {img["id"]: img for img in gt["images"]}
    gt_by = _by_image([a for a in gt["annotations"] if a["category_id"] in value_of])
    by_name = {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]}
    garments, regions = ParseEvaluator(RUN_PARSE_CLASSES), ParseEvaluator(REGION_CLASSES)
    absent = AbsentGarments()
    scored, errors = set(), 0
    for images, anns, chunk_errors in iter_coco_chunks(dt_uri, options):
        errors += chunk_errors
        remap = _remap_ids(images, gt_images, by_name)
        dt_by = _by_image([{**a, "image_id": remap[a["image_id"]]} for a in anns
                           if a["image_id"] in remap and a.get("score", 1.0) >= min_score])
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
    return {"counts": {"images": len(scored), "error_rows": errors},
            "garment_parse": garments.evaluate(), "garment_regions": regions.evaluate() | {
                "miou_regions": _mean([v for k, v in regions.evaluate()["iou"].items() if k != "background"])},
            "absent_garments": absent.evaluate()}


class AbsentGarments:
    """Garments written of a class the photo's ground truth does not have, per photo and per
    class: on the labelled person (the predicted person whose box best matches the labelled
    pixels' extent, IoU >= 0.5) and on every person found (passers-by included)."""

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
        for a in predicted:
            value = _run_value(a)
            name = RUN_PARSE_CLASSES[value] if value else None
            if name is None or name in has:
                continue
            self.on_anyone[name] += 1
            if person is not None and a.get("parent_person_id") == person:
                self.on_person[name] += 1

    def evaluate(self) -> dict:
        n = max(1, self.photos)
        return {"photos": self.photos, "labelled_person_found": self.found,
                "per_photo_labelled_person": sum(self.on_person.values()) / n,
                "per_photo_all_persons": sum(self.on_anyone.values()) / n,
                "by_class_labelled_person": {c: self.on_person[c] / n for c in RUN_PARSE_CLASSES[1:]},
                "by_class_all_persons": {c: self.on_anyone[c] / n for c in RUN_PARSE_CLASSES[1:]}}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def parse_to_markdown(report: dict) -> str:
    """Seed 004's layout: one row per table, a column per class, the mean last."""
    out = [f"# Garment parsing (per-class IoU)\n\nimages {report['counts']['images']}, error rows {report['counts']['error_rows']}\n"]
    for title, key, mean in (("Garment classes", "garment_parse", "miou_garments"),
                             ("Pose regions (classes merged)", "garment_regions", "miou_regions")):
        iou = report[key]["iou"]
        names = list(iou)
        out.append(f"## {title}\n\n| | " + " | ".join(names) + " | mIoU |\n|:--|" + ":--:|" * (len(names) + 1))
        out.append("| IoU | " + " | ".join(_fmt(iou[n]) for n in names) + f" | {_fmt(report[key][mean])} |\n")
    absent = report.get("absent_garments")
    if absent:
        names = list(absent["by_class_labelled_person"])
        out.append(f"## Garments of a class the photo does not have, per photo\n\nlabelled person found on "
                   f"{absent['labelled_person_found']} of {absent['photos']} photos\n\n| | " + " | ".join(names) +
                   " | all |\n|:--|" + ":--:|" * (len(names) + 1))
        for label, key, total in (("labelled person", "by_class_labelled_person", "per_photo_labelled_person"),
                                  ("every person", "by_class_all_persons", "per_photo_all_persons")):
            out.append(f"| {label} | " + " | ".join(f"{absent[key][n]:.2f}" for n in names) + f" | {absent[total]:.2f} |")
        out.append("")
    return "\n".join(out)


# report ---------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


SEED004_COLUMNS = [("Background", "background"), ("Low hand", "lower_arm"), ("Torso", "torso"), ("Low leg", "lower_leg"),
                   ("Head", "head"), ("Up leg", "upper_leg"), ("Up hand", "upper_arm")]
TABLES = [("Person boxes", "person_bbox"), ("Garment boxes (DeepFashion2 classes)", "garment_bbox"),
          ("Garment masks (DeepFashion2 classes)", "garment_segm"), ("Garment boxes (class-agnostic)", "any_garment_bbox"),
          ("Garment masks (class-agnostic)", "any_garment_segm"), ("Accessory boxes", "accessory_bbox")]


def to_markdown(report: dict) -> str:
    """The report as Markdown: only the tables the ground truth has labels for."""
    c = report["counts"]
    out = [f"# Evaluation\n\nimages {c['images']}, error rows {c['error_rows']}; persons: {c['persons_gt']} in ground truth, "
           f"{c['persons_matched']} matched (IoU >= 0.5), {c['persons_missed']} missed, {c['persons_extra']} extra\n"]
    unscored = [title for title, key in TABLES if not report[key]["gt"]] + ([] if report["parts"]["gt"] else ["Body parts"])
    if c["persons_gt"]:
        out.append("| person score >= | " + " | ".join(c["at_score"]) + " |\n|:--|" + ":--:|" * len(c["at_score"]))
        out.append("| matched / extra | " + " | ".join(f"{v['matched']} / {v['extra']}" for v in c["at_score"].values()) + " |\n")
    if unscored:
        out.append(f"Not scored (no ground truth of their categories): {', '.join(unscored)}.\n")
    skipped = report.get("skipped_ground_truth") or {}
    if skipped:
        out.append(f"Ground truth of categories fashion-ray does not label, skipped: "
                   f"{', '.join(f'{name} {n}' for name, n in skipped.items())}.\n")
    for title, key in TABLES:
        t = report[key]
        if not t["gt"]:
            continue
        out.append(f"## {title}\n\n{t['gt']} ground-truth, {t['dt']} predicted\n")
        out.append("| metric | IoU | area | maxDets | value |\n|:--:|:--:|:--:|:--:|:--:|")
        out += [f"| {m} | {iou} | {area} | {md} | {_fmt(v)} |" for (m, iou, area, md), v in zip(STAT_LINES, t["stats"])]
        if t["per_category"] and len(t["per_category"]) > 1:
            out.append("\n| category | AP |\n|:--|:--:|")
            out += [f"| {k} | {_fmt(v)} |" for k, v in t["per_category"].items()]
        out.append("")
    p = report["parts"]
    if p["gt"]:
        # seed 004's columns, in its order and with its names
        out.append("## Body parts (IoU)\n")
        out.append("| " + " | ".join([title for title, _ in SEED004_COLUMNS] + ["Upper body", "Lower body", "Body", "mIoU (parts)"]) + " |")
        out.append("|" + "---|" * (len(SEED004_COLUMNS) + 4))
        out.append("| " + " | ".join([_fmt(p["iou"][n]) for _, n in SEED004_COLUMNS] +
                                    [_fmt(p["levels"][lv]) for lv in ("upper_body", "lower_body", "body")] +
                                    [_fmt(p["miou_parts"])]) + " |")
    return "\n".join(out) + "\n"


# --- AVA actions: frame-mAP at IoU 0.5 -------------------------------------------------------


def average_precision(scores: np.ndarray, true_positive: np.ndarray, positives: int) -> float:
    """Pascal VOC's AP (as AVA's official evaluation computes it): precision made
    non-increasing, summed over the recall steps."""
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(true_positive[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / positives
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def ava_frame_map(ground_truth: list[tuple], detections: list[tuple], classes=None, iou: float = 0.5,
                  threshold: float = 0.5) -> dict:
    """AVA's frame-mAP: per action class, detections (video_id, timestamp, x0, y0, x1, y1,
    action_id, score) are matched in each keyframe (video_id, timestamp) to ground-truth boxes
    of that class (video_id, timestamp, x0, y0, x1, y1, action_id), highest score first, each
    to the box it overlaps most (IoU >= iou), a box matched once; AP per class as Pascal VOC,
    the mean over the classes with ground truth (`classes`: the classes evaluated, default
    every class in the ground truth). Beside AP, each class's precision and recall of the
    detections scored >= threshold (what a user filtering on the score gets)."""
    def key(row):
        return str(row[0]), round(float(row[1]), 3)

    wanted = set(classes) if classes is not None else {int(r[6]) for r in ground_truth}
    per_class, details = {}, {}
    for cls in sorted(wanted):
        gt: dict[tuple, list] = {}
        for r in ground_truth:
            if int(r[6]) == cls:
                gt.setdefault(key(r), []).append([float(v) for v in r[2:6]])
        dets: dict[tuple, list] = {}
        for r in detections:
            if int(r[6]) == cls:
                dets.setdefault(key(r), []).append((float(r[7]), [float(v) for v in r[2:6]]))
        positives = sum(len(v) for v in gt.values())
        scores, hits = [], []
        for frame, found in dets.items():
            found.sort(key=lambda d: -d[0])
            boxes = np.asarray(gt.get(frame, []), np.float64).reshape(-1, 4)
            taken = np.zeros(len(boxes), bool)
            overlaps = box_iou_matrix(np.asarray([b for _, b in found]), boxes) if len(boxes) else None
            for k, (score, _) in enumerate(found):
                scores.append(score)
                best = int(np.argmax(overlaps[k])) if overlaps is not None else -1
                hit = best >= 0 and overlaps[k, best] >= iou and not taken[best]
                if hit:
                    taken[best] = True
                hits.append(hit)
        if positives:
            scores_arr, hits_arr = np.asarray(scores, np.float64), np.asarray(hits, bool)
            per_class[cls] = average_precision(scores_arr, hits_arr, positives)
            kept = scores_arr >= threshold
            details[cls] = {"ap": per_class[cls], "positives": positives, "detections": int(kept.sum()),
                            "precision": float(hits_arr[kept].mean()) if kept.any() else None,
                            "recall": float(hits_arr[kept].sum() / positives)}
    values = [v for v in per_class.values() if not math.isnan(v)]
    return {"frame_mAP": float(np.mean(values)) if values else float("nan"), "per_class_AP": per_class,
            "per_class": details, "iou": iou, "threshold": threshold}


def snap_to_keyframes(ground_truth: list, detections: list, tolerance_s: float = 0.25) -> list[tuple]:
    """Detections (AvaLine) with their timestamp moved to the nearest ground-truth keyframe of
    their video within tolerance_s: sampled frames sit at true presentation times (2.002 s in
    a 29.97 fps video), AVA's keyframes at whole seconds. Others keep their own time."""
    keyframes: dict[str, np.ndarray] = {}
    for line in ground_truth:
        keyframes.setdefault(line.video_id, set()).add(line.timestamp)
    keyframes = {v: np.array(sorted(t)) for v, t in keyframes.items()}
    out = []
    for d in detections:
        t = d.timestamp
        times = keyframes.get(d.video_id)
        if times is not None and len(times):
            nearest = times[int(np.argmin(np.abs(times - t)))]
            t = float(nearest) if abs(nearest - t) <= tolerance_s else t
        out.append((d.video_id, t, *d.box, d.action_id, d.value))
    return out


def evaluate_actions(ground_truth: list, detections: list, *, classes=None, threshold: float = 0.5,
                     tolerance_s: float = 0.25) -> dict:
    """Frame-mAP and per-action precision / recall of AVA detections (formats.ava.AvaLine)
    against AVA ground truth, and the single-label accuracy over the classes scored; keyed by
    AVA name in the report."""
    gt = [(g.video_id, g.timestamp, *g.box, g.action_id) for g in ground_truth]
    snapped = snap_to_keyframes(ground_truth, detections, tolerance_s)
    report = ava_frame_map(gt, snapped, classes=classes, threshold=threshold)
    return {"frame_mAP": report["frame_mAP"], "iou": report["iou"], "threshold": threshold,
            "keyframes": len({(g.video_id, g.timestamp) for g in ground_truth}),
            "per_class": {taxonomy.AVA_ACTIONS.get(k, str(k)): {"id": k, **v} for k, v in report["per_class"].items()},
            "single_label": single_label_accuracy(ground_truth, snapped, classes if classes is not None
                                                  else {g.action_id for g in ground_truth})}


def read_ava_uris(uri: str, options=None) -> list:
    """AVA lines from a CSV file, or a labelling run's persons' actions (photos too: a photo
    is video_id = its file name without extension, at timestamp 0, as the Penn-Fudan
    conversion writes its ground truth)."""
    from fashion_ray.formats import ava
    from fashion_ray.formats.shards import iter_shard_rows, read_manifest

    if uri.endswith(".csv"):
        fs, path = storage.filesystem(uri, options)
        return ava.read_csv(fs.cat_file(path), uri)
    lines = []
    for rows in iter_shard_rows(uri, read_manifest(uri, options), options):
        for row in rows:
            if row["status"] != "ok":
                continue
            w, h, t = row["width"], row["height"], row["timestamp_s"] or 0.0
            for p in row["persons"]:
                box = (p["box"][0] / w, p["box"][1] / h, p["box"][2] / w, p["box"][3] / h)
                lines += [ava.AvaLine(ava.video_id_of(row["uri"]), t, box, a["action_id"], a["score"]) for a in p["actions"]]
    return lines


def single_label_accuracy(ground_truth: list, detections: list[tuple], classes, iou: float = 0.5) -> dict:
    """Of the labelled persons with exactly one action among `classes` that a detected person
    matches (IoU >= iou), the share whose highest-scored action among `classes` is that one
    (Penn-Fudan's walking / standing). A matched person without any of them counts as wrong."""
    classes = set(classes)
    people: dict[tuple, dict] = {}
    for g in ground_truth:
        people.setdefault((g.video_id, g.timestamp, g.value, g.box), set()).add(g.action_id)
    detected: dict[tuple, dict] = {}
    for d in detections:
        detected.setdefault((d[0], round(float(d[1]), 3)), {}).setdefault(tuple(d[2:6]), {})[int(d[6])] = float(d[7])
    matched = correct = 0
    confusion: Counter = Counter()
    for (video_id, t, _, box), labels in people.items():
        labels &= classes
        if len(labels) != 1:
            continue
        candidates = detected.get((video_id, round(t, 3)), {})
        overlaps = box_iou_matrix(np.asarray([box]), np.asarray(list(candidates), np.float64).reshape(-1, 4))[0] if candidates else []
        if not len(overlaps) or overlaps.max() < iou:
            continue
        scores = list(candidates.values())[int(np.argmax(overlaps))]
        scored = {k: v for k, v in scores.items() if k in classes}
        said = max(scored, key=scored.get) if scored else None
        truth = next(iter(labels))
        matched += 1
        correct += said == truth
        confusion[(taxonomy.AVA_ACTIONS[truth], taxonomy.AVA_ACTIONS.get(said, "none"))] += 1
    return {"matched_persons": matched, "accuracy": round(correct / matched, 4) if matched else None,
            "confusion": {f"{t} -> {s}": n for (t, s), n in sorted(confusion.items())}}


def evaluate_actions_uris(gt_uri: str, pred_uri: str, options=None, min_score: float = 0.0,
                          threshold: float = 0.5) -> dict:
    """`jobs/evaluate.py --mode actions`: a run's persons' actions (or an AVA CSV) against an
    AVA CSV, on the videos (photos) the ground truth covers. Classes scored: those in the
    ground truth that AVA's official evaluation lists (taxonomy.AVA_EVALUATED) or that our
    labellers write."""
    from fashion_ray.actions import RULE_ACTIONS

    ground_truth = read_ava_uris(gt_uri, options)
    if not ground_truth:
        raise ValueError(f"{gt_uri}: no AVA lines with an action id")
    videos = {g.video_id for g in ground_truth}  # a run may hold more videos than the ground truth covers
    detections = [d for d in read_ava_uris(pred_uri, options) if d.value >= min_score and d.video_id in videos]
    present = {g.action_id for g in ground_truth}
    classes = sorted(present & (set(taxonomy.AVA_EVALUATED) | set(RULE_ACTIONS)))
    report = evaluate_actions(ground_truth, detections, classes=classes, threshold=threshold)
    return {"ground_truth": gt_uri, "predictions": pred_uri, "min_score": min_score, **report,
            "not_labelled": sorted(taxonomy.AVA_ACTIONS[k] for k in present - set(classes) if k in taxonomy.AVA_ACTIONS)}


def actions_to_markdown(report: dict) -> str:
    out = [f"AVA frame-mAP at IoU {report['iou']}: **{_fmt(report['frame_mAP'])}** over {len(report['per_class'])} "
           f"actions, {report['keyframes']} keyframes; precision / recall of detections scored >= {report['threshold']}", "",
           "| action | AVA id | ground truth | AP | detections | precision | recall |", "|---|---|---|---|---|---|---|"]
    for name, c in report["per_class"].items():
        out.append(f"| {name} | {c['id']} | {c['positives']} | {_fmt(c['ap'])} | {c['detections']} | {_fmt(c['precision'])} "
                   f"| {_fmt(c['recall'])} |")
    single = report.get("single_label")
    if single and single["matched_persons"]:
        out += ["", f"Persons with one labelled action, matched to a detected person: {single['matched_persons']}; "
                    f"the top-scored of the scored actions is that one for **{_fmt(single['accuracy'])}** of them "
                    f"({', '.join(f'{k}: {v}' for k, v in single['confusion'].items())})."]
    return "\n".join(out) + "\n"
