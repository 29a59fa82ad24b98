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
import json
import os

import numpy as np
import pyarrow.parquet as pq

from fashion_ray import storage, taxonomy
from fashion_ray.formats import coco as coco_format
from fashion_ray.formats import masks as rle

PERSON_ID = taxonomy.COCO_CATEGORY_ID[taxonomy.PERSON]
DF2_IDS = [taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.DEEPFASHION2]
GARMENT_IDS = set(DF2_IDS) | {taxonomy.COCO_CATEGORY_ID[c] for c in taxonomy.GARMENT_REGIONS}
PART_IDS = {taxonomy.COCO_CATEGORY_ID[p]: k for k, p in enumerate(taxonomy.PARTS, start=1)}  # COCO id -> part value
ANY_GARMENT_ID = 1000  # one category for class-agnostic garment evaluation

STAT_LINES = [  # the 12 lines COCOeval.summarize prints, in its order
    ("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100),
]


# loading --------------------------------------------------------------------------------------

def _read_json(uri: str, options=None):
    fs, path = storage.filesystem(uri, options)
    return json.loads(fs.cat_file(path))


def _merge(docs) -> dict:
    images, anns = {}, []
    for doc in docs:
        for img in doc.get("images", []):
            images[img["id"]] = img
        anns += doc.get("annotations", [])
    return {"images": list(images.values()), "annotations": anns, "categories": taxonomy.COCO_CATEGORIES}


def load_coco(uri: str, options=None) -> tuple[dict, int]:
    """(COCO dict, error rows) from a run/synthetic folder, a folder of COCO shards or a COCO file.

    A run folder is read from its Parquet shards (the source of truth, error rows included),
    one shard at a time.
    """
    fs, path = storage.filesystem(uri, options)
    if fs.isdir(path):
        manifest_uri = storage.join(uri, "manifest.json")
        if fs.exists(storage.filesystem(manifest_uri, options)[1]):
            manifest = _read_json(manifest_uri, options)
            errors, docs = 0, []
            for shard in manifest["shards"]:
                sfs, spath = storage.filesystem(storage.join(uri, shard["parquet"]), options)
                rows = pq.read_table(io.BytesIO(sfs.cat_file(spath))).to_pylist()
                errors += sum(r["status"] == "error" for r in rows)
                docs.append(coco_format.coco_document(rows))
            return _merge(docs), errors
        names = sorted(n for n in fs.find(path) if n.endswith(".json"))
        protocol = storage.split_uri(uri)[0]
        return _merge(_read_json(storage.to_uri(protocol, n), options) for n in names), 0
    doc = _read_json(uri, options)
    if isinstance(doc, list):  # a COCO results file: annotations only
        return {"images": [], "annotations": doc, "categories": taxonomy.COCO_CATEGORIES}, 0
    return _merge([doc]), 0


def align_images(gt: dict, dt: dict) -> dict:
    """Give predictions the ground truth's image ids (by id, else by file name); drop the rest."""
    gt_ids = {img["id"] for img in gt["images"]}
    by_name = {os.path.basename(img["file_name"]): img["id"] for img in gt["images"]}
    remap = {}
    for img in dt["images"]:
        if img["id"] in gt_ids:
            remap[img["id"]] = img["id"]
        elif os.path.basename(img.get("file_name", "")) in by_name:
            remap[img["id"]] = by_name[os.path.basename(img["file_name"])]
    if not dt["images"]:  # a results list: ids as given, and every ground-truth image is scored
        anns = [a for a in dt["annotations"] if a["image_id"] in gt_ids]
        return {"images": list(gt["images"]), "annotations": anns, "categories": dt["categories"]}
    anns = [{**a, "image_id": remap[a["image_id"]]} for a in dt["annotations"] if a["image_id"] in remap]
    covered = set(remap.values())
    return {"images": [i for i in gt["images"] if i["id"] in covered], "annotations": anns, "categories": dt["categories"]}


# COCO AP/AR -----------------------------------------------------------------------------------

def _subset(doc: dict, cat_ids, merge_to: int | None = None, need_mask: bool = False) -> dict:
    anns = []
    for a in doc["annotations"]:
        if a["category_id"] in cat_ids and (not need_mask or "segmentation" in a):
            a = dict(a)
            if merge_to is not None:
                a["category_id"] = merge_to
            anns.append(a)
    categories = [{"id": merge_to, "name": "garment"}] if merge_to is not None else \
        [c for c in taxonomy.COCO_CATEGORIES if c["id"] in cat_ids]
    return {"images": doc["images"], "annotations": anns, "categories": categories}


def coco_table(gt: dict, dt: dict, iou_type: str, cat_ids, merge_to: int | None = None) -> dict:
    """The 12 COCO stats (None where the ground truth has nothing to find) + per-category AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    need_mask = iou_type == "segm"
    gt_sub = _subset(gt, set(cat_ids), merge_to, need_mask)
    dt_sub = _subset(dt, set(cat_ids), merge_to, need_mask)
    for i, a in enumerate(gt_sub["annotations"]):  # COCO() wants unique ids, and iscrowd/area present
        gt_sub["annotations"][i] = {**a, "id": i + 1, "iscrowd": a.get("iscrowd", 0)}
    if not gt_sub["annotations"]:
        return {"stats": [None] * 12, "per_category": {}, "gt": 0, "dt": len(dt_sub["annotations"])}
    if not dt_sub["annotations"]:
        return {"stats": [0.0] * 12, "per_category": {}, "gt": len(gt_sub["annotations"]), "dt": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt_sub)
        coco_gt.createIndex()
        # results in the standard shape: boxes for bbox, masks for segm (so areas are mask areas)
        keep = ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation")
        coco_dt = coco_gt.loadRes([{k: a.get(k, 1.0) for k in keep} for a in dt_sub["annotations"]])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [None if s < 0 else float(s) for s in ev.stats]
    per_category = {}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    names = {c["id"]: c["name"] for c in gt_sub["categories"]}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_category[names.get(cat, str(cat))] = float(p.mean()) if p.size else None
    return {"stats": stats, "per_category": per_category, "gt": len(gt_sub["annotations"]), "dt": len(dt_sub["annotations"])}


# parts IoU ------------------------------------------------------------------------------------

def _part_map(anns: list[dict], height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), np.uint8)
    for a in anns:
        value = PART_IDS.get(a["category_id"])
        if value and "segmentation" in a:
            out[rle.decode(a["segmentation"])] = value
    return out


class PartsEvaluator:
    """Semantic part segmentation quality, seed-004 style (detectron2-like reset/process/evaluate)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        n = len(taxonomy.PARTS) + 1
        self.confusion = np.zeros((n, n), np.int64)  # [ground truth, prediction]
        self.levels = {level: [0, 0] for level in taxonomy.PART_HIERARCHY}  # intersection, union

    def process(self, gt_map: np.ndarray, dt_map: np.ndarray) -> None:
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
            "iou": iou,
            "miou_parts": float(np.mean(parts)) if parts else None,
            "levels": {level: (i / u if u else None) for level, (i, u) in self.levels.items()},
        }


def person_counts(gt: dict, dt: dict, threshold: float = 0.5) -> dict:
    """Greedy one-to-one matching of person boxes per image, highest score first."""
    from pycocotools import mask as mask_utils

    by_image: dict[int, tuple[list, list]] = {img["id"]: ([], []) for img in gt["images"]}
    for a in gt["annotations"]:
        if a["category_id"] == PERSON_ID and a["image_id"] in by_image:
            by_image[a["image_id"]][0].append(a)
    for a in dt["annotations"]:
        if a["category_id"] == PERSON_ID and a["image_id"] in by_image:
            by_image[a["image_id"]][1].append(a)
    matched = missed = extra = 0
    for g, d in by_image.values():
        d = sorted(d, key=lambda a: -a.get("score", 1.0))
        if g and d:
            ious = mask_utils.iou([a["bbox"] for a in d], [a["bbox"] for a in g], [0] * len(g))
            used = set()
            for i in range(len(d)):
                j = max((j for j in range(len(g)) if j not in used), key=lambda j: ious[i, j], default=None)
                if j is not None and ious[i, j] >= threshold:
                    used.add(j)
            matched += len(used)
            missed += len(g) - len(used)
            extra += len(d) - len(used)
        else:
            missed += len(g)
            extra += len(d)
    return {"persons_gt": matched + missed, "persons_matched": matched, "persons_missed": missed, "persons_extra": extra}


def evaluate(gt: dict, dt: dict, errors: int = 0) -> dict:
    """All tables for predictions `dt` against ground truth `gt` (both COCO dicts, aligned)."""
    dt = align_images(gt, dt)
    evaluated = {img["id"] for img in dt["images"]}
    # only images the predictions cover are scored (a partial run is not penalised for the rest)
    gt = {**gt, "images": [i for i in gt["images"] if i["id"] in evaluated],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in evaluated]}
    parts = PartsEvaluator()
    gt_parts, dt_parts = {}, {}
    for a in gt["annotations"]:
        gt_parts.setdefault(a["image_id"], []).append(a)
    for a in dt["annotations"]:
        dt_parts.setdefault(a["image_id"], []).append(a)
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        parts.process(_part_map(gt_parts.get(img["id"], []), h, w), _part_map(dt_parts.get(img["id"], []), h, w))
    return {
        "counts": {"images": len(gt["images"]), "error_rows": errors, **person_counts(gt, dt)},
        "person_bbox": coco_table(gt, dt, "bbox", [PERSON_ID]),
        "garment_bbox": coco_table(gt, dt, "bbox", DF2_IDS),
        "garment_segm": coco_table(gt, dt, "segm", DF2_IDS),
        "any_garment_bbox": coco_table(gt, dt, "bbox", GARMENT_IDS, merge_to=ANY_GARMENT_ID),
        "any_garment_segm": coco_table(gt, dt, "segm", GARMENT_IDS, merge_to=ANY_GARMENT_ID),
        "parts": parts.evaluate(),
    }


# report ---------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def to_markdown(report: dict) -> str:
    c = report["counts"]
    out = [f"# Evaluation\n\nimages {c['images']}, error rows {c['error_rows']}; persons: {c['persons_gt']} in ground truth, "
           f"{c['persons_matched']} matched (IoU >= 0.5), {c['persons_missed']} missed, {c['persons_extra']} extra\n"]
    tables = [("Person boxes", "person_bbox"), ("Garment boxes (DeepFashion2 classes)", "garment_bbox"),
              ("Garment masks (DeepFashion2 classes)", "garment_segm"), ("Garment boxes (class-agnostic)", "any_garment_bbox"),
              ("Garment masks (class-agnostic)", "any_garment_segm")]
    for title, key in tables:
        t = report[key]
        out.append(f"## {title}\n\n{t['gt']} ground-truth, {t['dt']} predicted\n")
        out.append("| metric | IoU | area | maxDets | value |\n|:--:|:--:|:--:|:--:|:--:|")
        out += [f"| {m} | {iou} | {area} | {md} | {_fmt(v)} |" for (m, iou, area, md), v in zip(STAT_LINES, t["stats"])]
        if t["per_category"] and len(t["per_category"]) > 1:
            out.append("\n| category | AP |\n|:--|:--:|")
            out += [f"| {k} | {_fmt(v)} |" for k, v in t["per_category"].items()]
        out.append("")
    p = report["parts"]
    names = ["background", *taxonomy.PARTS]
    out.append("## Body parts (IoU)\n")
    out.append("| " + " | ".join(names + ["mIoU (parts)", "upper body", "lower body", "body"]) + " |")
    out.append("|" + "---|" * (len(names) + 4))
    out.append("| " + " | ".join([_fmt(p["iou"][n]) for n in names] + [_fmt(p["miou_parts"])] +
                                [_fmt(p["levels"][lv]) for lv in ("upper_body", "lower_body", "body")]) + " |")
    return "\n".join(out) + "\n"
