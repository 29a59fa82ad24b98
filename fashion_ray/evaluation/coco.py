"""COCO AP/AR tables (pycocotools): person boxes, garment boxes and masks (DeepFashion2
categories, per-category AP), class-agnostic garment boxes/masks (any garment category counts:
the only fair table for the bootstrap's garment regions), accessories; and person counts
(matched / missed / extra at IoU >= 0.5, greedy by score). Each scorer has detectron2's
evaluator shape: reset / process(images, gt, dt) / evaluate."""

from __future__ import annotations

import contextlib
import copy
import io

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.evaluation.common import by_image
from fashion_ray.formats.schema import is_confident

DF2_IDS = [taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.DEEPFASHION2]


GARMENT_IDS = set(DF2_IDS) | {taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.GARMENT_REGIONS}


ACCESSORY_IDS = [taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.ACCESSORIES]


ANY_GARMENT_ID = 1000  # one category for class-agnostic garment evaluation


STAT_LINES = [  # the 12 lines COCOeval.summarize prints, in its order
    ("AP", "0.50:0.95", "all", 100),
    ("AP", "0.50", "all", 100),
    ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100),
    ("AP", "0.50:0.95", "medium", 100),
    ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1),
    ("AR", "0.50:0.95", "all", 10),
    ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100),
    ("AR", "0.50:0.95", "medium", 100),
    ("AR", "0.50:0.95", "large", 100),
]


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
                a = {
                    k: a[k] for k in ("image_id", "category_id", "bbox" if self.iou_type == "bbox" else "segmentation")
                } | {"score": a.get("score", 1.0)}
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
            coco_gt, coco_dt = (
                _coco(images, gt, self._categories(), self.iou_type),
                _coco(images, dt, self._categories(), self.iou_type),
            )
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
            return {
                "image_id": ann["image_id"],
                "category": self._name(ann["category_id"]),
                "box": box,
                "score": ann.get("score"),
                "area": ann.get("area", 0.0),
                "kind": kind,
            }

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
        ev.evalImgs = [
            self.results.get((cat, a, img))
            for cat in ev.params.catIds
            for a in range(n_area)
            for img in ev.params.imgIds
        ]
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
        return {
            "stats": [None if v < 0 else float(v) for v in ev.stats],
            "per_category": per_category,
            "gt": self.gt_count,
            "dt": self.dt_count,
            "pr_curves": curves,
            "worst": self.misses + self.false_positives,
        }


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
    """Confident persons in ground truth matched (IoU >= 0.5, greedy by score), missed and
    extra; images seen; and matched / extra of every person at each of SCORE_THRESHOLDS, to
    choose a bundle's threshold by."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.counts = {"images": 0, "persons_gt": 0, "persons_matched": 0, "persons_missed": 0, "persons_extra": 0}
        self.at_score = {t: [0, 0] for t in SCORE_THRESHOLDS}  # threshold -> [matched, extra]

    def process(self, images: list[dict], gt_anns: list[dict], dt_anns: list[dict]) -> None:
        gt_by, dt_by = by_image(gt_anns), by_image(dt_anns)
        for img in images:
            gt, dt = gt_by.get(img["id"], []), dt_by.get(img["id"], [])
            # the labels as written: candidates under the person threshold count in AP, not here
            matched, missed, extra = _person_matches(gt, [a for a in dt if is_confident(a)])
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
        return dict(self.counts) | {
            "at_score": {f"{t:.1f}": {"matched": m, "extra": e} for t, (m, e) in self.at_score.items()}
        }
