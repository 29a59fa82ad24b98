"""COCO JSON shards from label rows (the Arrow-schema dicts of formats/schema.py).

Category ids are taxonomy.COCO_CATEGORIES. Image ids are the rows' stable ids. Annotation
ids are stable too (hash of image id, kind and index) so shards from different runs and
workers never collide. Garment and part annotations carry `parent_person_id`, the id of
their person annotation. Masks are RLE with string counts; every annotation has a score.
Error rows are not COCO images (they are in Parquet with their reason).

`attributes` is an object of name -> scalar, the shape FiftyOne and CVAT read (schema 2;
schema 1 wrote a list of "name:value" strings, which FiftyOne's importer rejects). It
repeats the links that tools would otherwise drop: parent_person_id, track_id and side
are both top-level keys (pycocotools, FiftyOne) and attributes (CVAT keeps only those). A
person's actions are `actions` ([{id, name, score}], AVA ids) and attributes AVA name -> score.
A person's `confident` (top level and attribute) is false for a candidate under the person
threshold: a box and a score, for users who filter by score (AP counts them, labels do not).
An accessory no person holds (the row's `objects`) is an annotation of its own category with
no parent, with `confident` as a person's (false: a candidate under the accessory threshold).
"""

from __future__ import annotations

import hashlib

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.boxes import xywh
from fashion_ray.formats.schema import attribute_map, is_confident
from fashion_ray.storage import stable_id


def annotation_id(image_id: int, *path) -> int:
    key = ":".join(str(p) for p in (image_id, *path))
    return int(hashlib.sha1(key.encode()).hexdigest()[:13], 16)


def _ann(ann_id, image_id, category_id, box, mask, score, **extra) -> dict:
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": xywh(box),
        "score": float(score),
        "iscrowd": 0,
        **extra,
    }
    if mask is not None:
        ann["segmentation"] = {"size": list(mask["size"]), "counts": mask["counts"]}
        ann["area"] = float(rle.area(mask))
    else:
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return ann


def attribute_object(attributes, **links) -> dict:
    """A garment's attributes (schema.attribute_map: a map, or "sleeve:long" cues) and links as
    {"sleeve": "long", "track_id": 3}; None links are left out."""
    return attribute_map(attributes) | {k: v for k, v in links.items() if v is not None}


def image_record(row: dict) -> dict:
    record = {"id": row["id"], "file_name": row["uri"], "width": row["width"], "height": row["height"]}
    if row.get("frame_index") is not None:  # a video frame: which video, which frame, when
        record.update(video_id=stable_id(row["uri"]), frame_index=row["frame_index"], timestamp_s=row["timestamp_s"])
    return record


def annotations(row: dict, candidates: bool = True) -> list[dict]:
    """A row's COCO annotations; `candidates=False` leaves the candidate persons and objects
    out (labels to train on or to correct, as the YOLO and Label Studio exports write)."""
    out = []
    image_id = row["id"]
    for person in row["persons"] or []:
        confident = is_confident(person)
        if not (candidates or confident):
            continue
        pid = annotation_id(image_id, "person", person["person_id"])
        track = {} if person.get("track_id") is None else {"track_id": person["track_id"]}
        extra = dict(track, confident=confident)
        if person.get("keypoints"):
            kp = person["keypoints"]
            extra |= {"keypoints": kp, "num_keypoints": int(sum(1 for v in kp[2::3] if v > 0))}
        # actions as AVA name -> score (a person's are multi-label); the list with ids is top level
        acts = person.get("actions") or []
        if acts:
            extra["actions"] = [
                {"id": a["action_id"], "name": a["action"], "score": round(a["score"], 4)} for a in acts
            ]
        out.append(
            _ann(
                pid,
                image_id,
                taxonomy.PERSON_CATEGORY_ID,
                person["box"],
                person.get("mask"),
                person["score"],
                attributes=attribute_object([], confident=confident, **track)
                | {a["action"]: round(a["score"], 4) for a in acts},
                **extra,
            )
        )
        for g in person.get("garments") or []:
            out.append(
                _ann(
                    annotation_id(image_id, "garment", person["person_id"], g["garment_id"]),
                    image_id,
                    g["category_id"],
                    g["box"],
                    g.get("mask"),
                    g["score"],
                    parent_person_id=pid,
                    attributes=attribute_object(g.get("attributes"), parent_person_id=pid, **track),
                    **track,
                )
            )
        for k, part in enumerate(person.get("parts") or []):
            out.append(
                _ann(
                    annotation_id(image_id, "part", person["person_id"], k),
                    image_id,
                    taxonomy.COCO_CATEGORY_ID[part["part"]],
                    part["box"],
                    part["mask"],
                    1.0,
                    parent_person_id=pid,
                    side=part.get("side"),
                    attributes=attribute_object([], parent_person_id=pid, side=part.get("side"), **track),
                    **track,
                )
            )
    for obj in row.get("objects") or []:
        confident = is_confident(obj)
        if candidates or confident:
            out.append(
                _ann(
                    annotation_id(image_id, "object", obj["object_id"]),
                    image_id,
                    obj["category_id"],
                    obj["box"],
                    None,
                    obj["score"],
                    confident=confident,
                    attributes={"confident": confident},
                )
            )
    return out


def coco_document(rows: list[dict], info: dict | None = None) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "info": info or {},
        "images": [image_record(r) for r in ok],
        "annotations": [a for r in ok for a in annotations(r)],
        "categories": taxonomy.COCO_CATEGORIES,
    }
