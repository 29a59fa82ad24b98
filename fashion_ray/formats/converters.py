"""Dataset converters into one canonical training format: a COCO file whose images point at
their source URIs (no copies), categories from taxonomy.COCO_CATEGORIES (Fashionpedia keeps
its own 46, shifted to 1-based), garments and parts linked to their person by
`parent_person_id` where the dataset has persons. Masks are RLE.

    convert_deepfashion2(root)   root/annos/*.json + root/image/*.jpg
    convert_fashionpedia(path)   instances_attributes_*.json (COCO + attributes, 0-based ids)
    convert_pascal_part(root)    root/Annotations_Part/*.mat + root/JPEGImages/*.jpg (24 parts -> 6)
    convert_seed004(root)        root/JPEGImages/*.jpg + root/gt_masks/*.npy (seed 004's 7 classes)
    convert_penn_fudan(root)     root/PNGImages/*.png + root/PedMasks/*_mask.png
    convert_ccp(root)            Clothing Co-Parsing: root/photos/*.jpg + root/annotations/pixel-level/*.mat
    convert_labels(run)          a labelling run: teacher labels for training students

Action labels are AVA-format instead (formats/ava.py): penn_fudan_actions(root) gives AVA
ground truth of Penn-Fudan's walking / standing pedestrians, ava_examples(csv, run) AVA's
labels matched to a run's tracks as training examples for the actions head.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from fashion_ray import masks as rle
from fashion_ray import storage, taxonomy
from fashion_ray.formats.readers import load_coco
from fashion_ray.formats.schema import is_confident

# Pascal-Part person parts -> the 6-part merge (Chen et al. / DeepLab Pascal-Person-Part)
PASCAL_PART_MERGE = {
    "head": "head",
    "leye": "head",
    "reye": "head",
    "lear": "head",
    "rear": "head",
    "lebrow": "head",
    "rebrow": "head",
    "nose": "head",
    "mouth": "head",
    "hair": "head",
    "torso": "torso",
    "neck": "torso",
    "luarm": "upper_arm",
    "ruarm": "upper_arm",
    "llarm": "lower_arm",
    "rlarm": "lower_arm",
    "lhand": "lower_arm",
    "rhand": "lower_arm",
    "luleg": "upper_leg",
    "ruleg": "upper_leg",
    "llleg": "lower_leg",
    "rlleg": "lower_leg",
    "lfoot": "lower_leg",
    "rfoot": "lower_leg",
}
PASCAL_PERSON_CLASS = 15


class _Builder:
    """Accumulates a COCO document with sequential ids."""

    def __init__(self, categories=None):
        self.images, self.annotations = [], []
        self.categories = categories or taxonomy.COCO_CATEGORIES

    def image(self, uri: str, width: int, height: int, **extra) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": uri, "width": int(width), "height": int(height), **extra})
        return image_id

    def mask(self, image_id: int, category_id: int, mask: np.ndarray, **extra) -> int | None:
        box = rle.bbox_xyxy(mask)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        return self._add(
            image_id, category_id, [x0, y0, x1 - x0, y1 - y0], rle.encode(mask), float(mask.sum()), **extra
        )

    def _add(self, image_id, category_id, bbox, segmentation, area, **extra) -> int:
        ann_id = len(self.annotations) + 1
        ann = {
            "id": ann_id,
            "image_id": image_id,
            "category_id": int(category_id),
            "bbox": [float(v) for v in bbox],
            "area": float(area),
            "iscrowd": 0,
            **extra,
        }
        if segmentation is not None:
            ann["segmentation"] = segmentation
        self.annotations.append(ann)
        return ann_id

    def document(self, description: str) -> dict:
        return {
            "info": {"description": description},
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }


def _image_size(uri: str, options=None) -> tuple[int, int]:
    fs, path = storage.filesystem(uri, options)
    with fs.open(path, "rb") as fh:
        return Image.open(fh).size  # header only


def _polygons_to_rle(polygons: list, height: int, width: int) -> dict:
    merged = mask_utils.merge(mask_utils.frPyObjects([p for p in polygons if len(p) >= 6], height, width))
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")}


def _files(root: str, sub: str, suffix: str, options=None) -> list[str]:
    fs, path = storage.filesystem(storage.join(root, sub), options)
    protocol = storage.split_uri(root)[0]
    return [storage.to_uri(protocol, p) for p in sorted(fs.find(path)) if p.lower().endswith(suffix)]


def convert_deepfashion2(root: str, options=None) -> dict:
    """DeepFashion2: one JSON per image with item1..N (category_id 1..13, bbox x1y1x2y2,
    polygons, landmarks [x, y, v]). Area is the mask area (the official converter uses w*h)."""
    out = _Builder()
    for anno_uri in _files(root, "annos", ".json", options):
        stem = posixpath.splitext(posixpath.basename(anno_uri.replace(os.sep, "/")))[0]
        image_uri = storage.join(root, "image", f"{stem}.jpg")
        width, height = _image_size(image_uri, options)
        fs, path = storage.filesystem(anno_uri, options)
        raw = json.loads(fs.cat_file(path))
        image_id = out.image(image_uri, width, height, source=raw.get("source"), pair_id=raw.get("pair_id"))
        for key in sorted((k for k in raw if k.startswith("item")), key=lambda k: int(k[4:])):
            item = raw[key]
            category = taxonomy.DEEPFASHION2[int(item["category_id"]) - 1]
            x1, y1, x2, y2 = item["bounding_box"]
            segmentation = _polygons_to_rle(item["segmentation"], height, width) if item.get("segmentation") else None
            area = rle.area(segmentation) if segmentation else float((x2 - x1) * (y2 - y1))
            out._add(
                image_id,
                taxonomy.COCO_CATEGORY_ID[category],
                [x1, y1, x2 - x1, y2 - y1],
                segmentation,
                area,
                landmarks=item.get("landmarks", []),
                style=item.get("style"),
                occlusion=item.get("occlusion"),
                viewpoint=item.get("viewpoint"),
            )
    return out.document("DeepFashion2 converted by fashion-ray")


def convert_fashionpedia(path: str, image_root: str, options=None) -> dict:
    """Fashionpedia: COCO + attributes; its 0-based category ids become 1-based (0 is
    background in torchvision). Its own 46 categories are kept (the alternative taxonomy)."""
    fs, p = storage.filesystem(path, options)
    raw = json.loads(fs.cat_file(p))
    categories = [{**c, "id": c["id"] + 1} for c in raw["categories"]]
    out = _Builder(categories)
    remap, sizes = {}, {}
    for img in raw["images"]:
        remap[img["id"]] = out.image(storage.join(image_root, img["file_name"]), img["width"], img["height"])
        sizes[img["id"]] = (img["height"], img["width"])
    for a in raw["annotations"]:
        height, width = sizes[a["image_id"]]
        seg = a.get("segmentation")
        if isinstance(seg, list):
            seg = _polygons_to_rle(seg, height, width)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            compressed = mask_utils.frPyObjects(seg, *seg["size"])
            seg = {"size": list(seg["size"]), "counts": compressed["counts"].decode("ascii")}
        out._add(
            remap[a["image_id"]],
            a["category_id"] + 1,
            a["bbox"],
            seg,
            a.get("area", a["bbox"][2] * a["bbox"][3]),
            attribute_ids=list(a.get("attribute_ids", [])),
        )
    doc = out.document("Fashionpedia converted by fashion-ray")
    doc["attributes"] = raw.get("attributes", [])
    return doc


def _mat_records(value):
    """Pascal-Part .mat structs come back as struct arrays or cell arrays: yield each record."""
    arr = np.asarray(value)
    if arr.dtype.names:  # struct array
        yield from arr.ravel()
    elif arr.dtype == object:  # cell array (of structs)
        for item in arr.ravel():
            yield from _mat_records(item)


def _field(record, name: str):
    """A struct field with MATLAB's 1x1 wrappers removed."""
    if isinstance(record, np.ndarray) and record.dtype.names and record.size == 1:
        record = record.ravel()[0]
    value = record[name]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    return value


def _mat_scalar(value):
    return np.asarray(value).ravel()[0]


def convert_pascal_part(root: str, options=None) -> dict:
    """Pascal-Part: person objects (class_ind 15) with 24 part masks merged into the 6 parts."""
    from scipy.io import loadmat

    out = _Builder()
    for mat_uri in _files(root, "Annotations_Part", ".mat", options):
        fs, path = storage.filesystem(mat_uri, options)
        anno = loadmat(io.BytesIO(fs.cat_file(path)))["anno"][0, 0]
        name = str(_mat_scalar(_field(anno, "imname")))
        image_id = None
        for obj in _mat_records(_field(anno, "objects")):
            if int(_mat_scalar(_field(obj, "class_ind"))) != PASCAL_PERSON_CLASS:
                continue
            person_mask = np.asarray(_field(obj, "mask")).astype(bool)
            if image_id is None:
                image_id = out.image(
                    storage.join(root, "JPEGImages", f"{name}.jpg"), person_mask.shape[1], person_mask.shape[0]
                )
            person_id = out.mask(image_id, taxonomy.PERSON_CATEGORY_ID, person_mask)
            merged: dict[str, np.ndarray] = {}
            for part in _mat_records(_field(obj, "parts")):
                target = PASCAL_PART_MERGE.get(str(_mat_scalar(_field(part, "part_name"))))
                if target:
                    merged[target] = merged.get(target, np.zeros_like(person_mask)) | np.asarray(
                        _field(part, "mask")
                    ).astype(bool)
            for part_name in taxonomy.PARTS:  # fixed order: ids do not depend on file order
                if part_name in merged:
                    out.mask(
                        image_id, taxonomy.COCO_CATEGORY_ID[part_name], merged[part_name], parent_person_id=person_id
                    )
    return out.document("Pascal-Part persons converted by fashion-ray (6-part merge)")


def convert_seed004(root: str, options=None) -> dict:
    """Seed 004's "Pascal-part" layout: gt_masks/*.npy with 0 bg, 1 low_hand, 2 torso,
    3 low_leg, 4 head, 5 up_leg, 6 up_hand, remapped explicitly (taxonomy.SEED004_TO_PARTS).
    There are no instances: the union of parts is one person per image."""
    out = _Builder()
    lut = np.zeros(256, np.uint8)
    for theirs, ours in taxonomy.SEED004_TO_PARTS.items():
        lut[theirs] = ours
    for npy_uri in _files(root, "gt_masks", ".npy", options):
        fs, path = storage.filesystem(npy_uri, options)
        parts = lut[np.load(io.BytesIO(fs.cat_file(path))).astype(np.uint8)]
        stem = posixpath.splitext(posixpath.basename(npy_uri.replace(os.sep, "/")))[0]
        image_id = out.image(storage.join(root, "JPEGImages", f"{stem}.jpg"), parts.shape[1], parts.shape[0])
        person_id = out.mask(image_id, taxonomy.PERSON_CATEGORY_ID, parts > 0)
        for value, name in enumerate(taxonomy.PARTS, start=1):
            out.mask(image_id, taxonomy.COCO_CATEGORY_ID[name], parts == value, parent_person_id=person_id)
    return out.document("seed 004 Pascal-part converted by fashion-ray")


def convert_penn_fudan(root: str, options=None) -> dict:
    """Penn-Fudan: PedMasks/<name>_mask.png holds 0 background and 1..N pedestrian ids."""
    out = _Builder()
    for mask_uri in _files(root, "PedMasks", "_mask.png", options):
        fs, path = storage.filesystem(mask_uri, options)
        ids = np.asarray(Image.open(io.BytesIO(fs.cat_file(path))))
        stem = posixpath.basename(mask_uri.replace(os.sep, "/"))[: -len("_mask.png")]
        image_id = out.image(storage.join(root, "PNGImages", f"{stem}.png"), ids.shape[1], ids.shape[0])
        for instance in sorted(int(v) for v in np.unique(ids) if v != 0):
            out.mask(image_id, taxonomy.PERSON_CATEGORY_ID, ids == instance)
    return out.document("Penn-Fudan pedestrians converted by fashion-ray")


# The garment parser's classes as categories of a training file (the parse map is rebuilt from
# them by name: training/data.py); "ignore" holds the pixels of labels dropped on purpose.
PARSE_CATEGORIES = (
    [{"id": taxonomy.PERSON_CATEGORY_ID, "name": taxonomy.PERSON, "supercategory": "person"}]
    + [
        {"id": 100 + value, "name": name, "supercategory": taxonomy.PARSE_SUPERCATEGORY}
        for value, name in enumerate(taxonomy.GARMENT_PARSE)
        if value > 0
    ]
    + [{"id": 100 + taxonomy.PARSE_IGNORE, "name": "ignore", "supercategory": taxonomy.PARSE_SUPERCATEGORY}]
)
CCP_VAL_EVERY = 5  # photos whose number is a multiple of 5 are the fixed validation split


def ccp_split(stem: str) -> str:
    return "val" if int(stem) % CCP_VAL_EVERY == 0 else "train"


# how the framing crops of jobs/convert.py --format ccp --framing cut a labelled person: the
# frame's bottom edge at this fraction of their height from the top of the head
FRAMING_CUT = {"waist_up": 0.5, "head_and_shoulders": 0.28}


def framing_cut(parse: np.ndarray, fraction: float) -> int:
    """The row a frame cutting the labelled person (any non-background, scored pixel) at
    `fraction` of their height ends at (a waist-up photo: about half)."""
    rows = np.nonzero(((parse != 0) & (parse != taxonomy.PARSE_IGNORE)).any(1))[0]
    if not len(rows):
        return len(parse)
    return max(1, min(len(parse), int(round(rows[0] + fraction * (rows[-1] + 1 - rows[0])))))


def convert_ccp(
    root: str,
    options=None,
    split: str | None = None,
    tags: str | None = None,
    framing: str | None = None,
    crops: str | None = None,
    max_tagged: int | None = None,
) -> dict:
    """Clothing Co-Parsing: one `groundtruth` label map per photo (0 = null, 1..58 in
    label_list.mat's order), remapped by taxonomy.CCP_TO_PARSE. Each photo has one person (the
    union of labelled pixels) and one region per parse class as its children. Every image says
    its split (`ccp_split`); `split` keeps only that one (the validation photos for evaluation).

    `tags`: CCP's image-level tag folder (tags.json + photos/): those photos are added as
    training images with `tags` (parse class names) and no annotations, for the parser's
    presence head (`max_tagged`: that many, spread evenly over the names, so pixel-labelled
    photos stay most of a batch). `framing` (FRAMING_CUT) with `crops` (a folder URI): every photo cut below
    the person's waist or shoulders, as a photo framed that way; the cut photos are written
    to `crops` and the regions cut with them."""
    from scipy.io import loadmat

    if framing and not crops:
        raise ValueError("--framing writes cut photos: give --crops FOLDER")
    fs, path = storage.filesystem(storage.join(root, "label_list.mat"), options)
    names = [
        str(np.asarray(v).ravel()[0]) if np.asarray(v).size else "null"
        for v in loadmat(io.BytesIO(fs.cat_file(path)))["label_list"].ravel()
    ]
    unknown = sorted(set(names) - set(taxonomy.CCP_TO_PARSE))
    if unknown:
        raise ValueError(f"CCP labels with no entry in taxonomy.CCP_TO_PARSE: {unknown}")
    lut = np.array(
        [
            taxonomy.PARSE_IGNORE
            if taxonomy.CCP_TO_PARSE[n] is None
            else taxonomy.GARMENT_PARSE.index(taxonomy.CCP_TO_PARSE[n])
            for n in names
        ]
        + [taxonomy.PARSE_IGNORE] * (256 - len(names)),
        np.uint8,
    )
    out = _Builder(PARSE_CATEGORIES)
    for mat_uri in _files(root, "annotations/pixel-level", ".mat", options):
        stem = posixpath.splitext(posixpath.basename(mat_uri.replace(os.sep, "/")))[0]
        if split and ccp_split(stem) != split:
            continue
        fs, path = storage.filesystem(mat_uri, options)
        labels = np.asarray(loadmat(io.BytesIO(fs.cat_file(path)))["groundtruth"])
        parse = lut[labels.astype(np.uint8)]
        photo = storage.join(root, "photos", f"{stem}.jpg")
        if framing:
            cut = framing_cut(parse, FRAMING_CUT[framing])
            labels, parse = labels[:cut], parse[:cut]
            photo = _write_cut_photo(photo, cut, storage.join(crops, f"{stem}.jpg"), options)
        image_id = out.image(photo, labels.shape[1], labels.shape[0], split=ccp_split(stem))
        person_id = out.mask(image_id, taxonomy.PERSON_CATEGORY_ID, labels > 0)
        for value in sorted(int(v) for v in np.unique(parse) if v != 0):
            out.mask(image_id, 100 + value, parse == value, parent_person_id=person_id)
    if tags and split != "val":
        _add_tagged_photos(out, tags, options, max_tagged)
    return out.document("Clothing Co-Parsing (Yang et al., CVPR 2014) converted by fashion-ray (taxonomy.CCP_TO_PARSE)")


def _write_cut_photo(uri: str, rows: int, out_uri: str, options) -> str:
    fs, path = storage.filesystem(uri, options)
    image = Image.open(io.BytesIO(fs.cat_file(path))).convert("RGB")
    buffer = io.BytesIO()
    image.crop((0, 0, image.width, rows)).save(buffer, "JPEG", quality=95)
    storage.write_bytes_atomic(out_uri, buffer.getvalue(), options)
    return out_uri


def _add_tagged_photos(out: "_Builder", root: str, options, limit: int | None = None) -> None:
    """CCP's image-level tags as training images: parse class names in `tags`, no annotations."""
    fs, path = storage.filesystem(storage.join(root, "tags.json"), options)
    doc = json.loads(fs.cat_file(path))
    items = sorted(doc["tags"].items())
    if limit is not None and limit < len(items):
        items = [items[int(k * len(items) / limit)] for k in range(limit)]
    for name, labels in items:
        unknown = sorted(set(labels) - set(taxonomy.CCP_TO_PARSE))
        if unknown:
            raise ValueError(f"CCP tags with no entry in taxonomy.CCP_TO_PARSE: {unknown}")
        uri = storage.join(root, name)
        fs, path = storage.filesystem(uri, options)
        with fs.open(path, "rb") as fh:
            width, height = Image.open(fh).size
        out.image(
            uri,
            width,
            height,
            split="train",
            tags=sorted({taxonomy.CCP_TO_PARSE[t] for t in labels if taxonomy.CCP_TO_PARSE[t]} - {"background"}),
        )


def convert_labels(run_uri: str, options=None) -> dict:
    """A labelling run's labels (the teacher's) as a training set; error rows and the person
    candidates under the threshold (not labels: a student must not learn them) are left out."""
    doc, _ = load_coco(run_uri, options)
    doc["annotations"] = [a for a in doc["annotations"] if is_confident(a)]
    return {"info": {"description": f"fashion-ray labels from {run_uri}"}, **doc}


def write_coco(doc: dict, uri: str, options=None) -> None:
    storage.write_bytes_atomic(uri, json.dumps(doc).encode(), options)


# --- action ground truth and examples (AVA format) ---------------------------------------------

PENN_FUDAN_ACTIONS = {"PASpersonWalking": "walk", "PASpersonStanding": "stand"}
_PF_SIZE = re.compile(r"Image size \(X x Y x C\) : (\d+) x (\d+)")
_PF_BOX = re.compile(
    r'Bounding box for object (\d+) "(\w+)" \(Xmin, Ymin\) - \(Xmax, Ymax\) : \((\d+), (\d+)\) - \((\d+), (\d+)\)'
)


def penn_fudan_pedestrians(text: str) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(number, "walk" | "stand", PASCAL box) of each labelled pedestrian in one Penn-Fudan annotation."""
    return [
        (int(number), PENN_FUDAN_ACTIONS[label], tuple(int(v) for v in box))
        for number, label, *box in _PF_BOX.findall(text)
        if label in PENN_FUDAN_ACTIONS
    ]


def penn_fudan_actions(root: str, options=None) -> list[list]:
    """Penn-Fudan's walking / standing labels as AVA ground-truth lines, one per pedestrian:
    video_id = the photo's name without extension, timestamp 0, its box normalised, the AVA
    id of walk or stand, the pedestrian's number as person id (jobs/evaluate.py --mode actions)."""
    lines = []
    for uri in _files(root, "Annotation", ".txt", options):
        fs, path = storage.filesystem(uri, options)
        text = fs.cat_file(path).decode("latin-1")
        size = _PF_SIZE.search(text)
        if not size:
            raise ValueError(f"{uri}: no 'Image size' line: not a Penn-Fudan annotation")
        w, h = int(size.group(1)), int(size.group(2))
        stem = posixpath.splitext(posixpath.basename(uri.replace(os.sep, "/")))[0]
        for number, action, (x0, y0, x1, y1) in penn_fudan_pedestrians(text):
            # PASCAL boxes are 1-based inclusive pixel indices
            box = ((x0 - 1) / w, (y0 - 1) / h, x1 / w, y1 / h)
            lines.append([stem, 0, *(f"{v:.4f}" for v in box), taxonomy.AVA_ACTION_ID[action], number])
    return lines
