"""Training samples from a canonical COCO file (jobs/convert.py output; images by URI).

The annotations are indexed in memory; pixels are fetched per batch from wherever the
images live (any fsspec URI), so the image set can be far larger than a node's memory.
Each task sees what its stage sees in the labelling job:

- person: whole images, person boxes;
- clothing: person crops (the stage's own padding), garment boxes + masks in crop pixels;
- parts: person crops resized to input_size, a per-pixel part map (0 = background);
- garments: person crops in the garment parser's square view (models/garments.py), a
  per-pixel parse map (taxonomy.GARMENT_PARSE, 255 = not scored) rebuilt from the person's
  regions by category name (jobs/convert.py --format ccp writes them);
- actions: no pixels: a Parquet file of track windows with AVA labels (formats/ava.py
  EXAMPLE_SCHEMA: jobs/convert.py --format ava, or jobs/make_synthetic.py --kind actions),
  as actions.window_features (mirrored, and frames dropped, at random when training) and a
  multi-hot target.

Sample order is a permutation of (seed, epoch) and augmentation draws from a generator
seeded by (seed, epoch, sample), so a resumed run sees exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fashion_ray import masks as rle
from fashion_ray import media, storage, taxonomy
from fashion_ray.boxes import crop_box
from fashion_ray.formats.converters import framing_cut
from fashion_ray.taxonomy import ACTIONS_STAGE, CLOTHING_STAGE, GARMENTS_TASK, PARTS_STAGE, PERSON_STAGE


@dataclass(frozen=True)
class Sample:
    """One training example: an image, or a person in an image (clothing, parts)."""

    image_id: int
    person_ann: int | None  # the person annotation id for crop tasks


@dataclass
class CocoIndex:
    images: dict[int, dict]
    anns: dict[int, list[dict]]  # image id -> annotations
    categories: list[dict]

    def classes(self, task: str) -> tuple[str, ...]:
        if task == PERSON_STAGE:
            return (taxonomy.PERSON,)
        if task == PARTS_STAGE:
            return taxonomy.PARTS
        if task == GARMENTS_TASK:
            return taxonomy.GARMENT_PARSE
        used = {a["category_id"] for anns in self.anns.values() for a in anns}
        garment = [
            c
            for c in sorted(self.categories, key=lambda c: c["id"])
            if c["id"] != taxonomy.PERSON_CATEGORY_ID
            and c["id"] not in taxonomy.PART_VALUE
            and c["name"] not in taxonomy.GARMENT_REGIONS
            and c["name"] not in taxonomy.ACCESSORIES
        ]
        return tuple(c["name"] for c in garment if c["id"] in used) or taxonomy.DEEPFASHION2

    def samples(self, task: str) -> list[Sample]:
        out = []
        for image_id in sorted(self.images):
            persons = [a for a in self.anns.get(image_id, []) if a["category_id"] == taxonomy.PERSON_CATEGORY_ID]
            if task == PERSON_STAGE or (task == GARMENTS_TASK and "tags" in self.images[image_id]):
                out.append(Sample(image_id, None))  # a tagged photo: the whole photo, its tags, no pixels
                continue
            for p in persons:  # a person counts when it has children of the task's kind
                children = [a for a in self.anns[image_id] if a.get("parent_person_id") == p["id"]]
                if any((a["category_id"] in taxonomy.PART_VALUE) == (task == PARTS_STAGE) for a in children):
                    out.append(Sample(image_id, p["id"]))
        return out


@dataclass
class ActionIndex:
    """Action examples (one Parquet file) under the interface CocoIndex offers the loop."""

    examples: list[dict]

    def __post_init__(self):
        self.by_id = {e["example_id"]: e for e in self.examples}
        self.images = {i: {"split": e["split"]} for i, e in self.by_id.items()}  # what data.split reads

    def classes(self, task: str) -> tuple[str, ...]:
        return tuple(taxonomy.AVA_ACTIONS[k] for k in sorted({a for e in self.examples for a in e["action_ids"]}))

    def samples(self, task: str) -> list[Sample]:
        if task != ACTIONS_STAGE:
            raise ValueError(f"an action examples file trains --task actions, not {task}")
        return [Sample(e["example_id"], None) for e in self.examples]


def load_index(uri: str, options=None) -> CocoIndex | ActionIndex:
    fs, path = storage.filesystem(uri, options)
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            examples = pq.read_table(fh).to_pylist()
        return ActionIndex(examples)
    doc = json.loads(fs.cat_file(path))
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return CocoIndex({im["id"]: im for im in doc["images"]}, anns, doc["categories"])


def split(
    samples: list[Sample], val_fraction: float, images: dict[int, dict] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Held-out images: the dataset's own split where its images say one ("split": "val", as
    the CCP converter writes), else chosen by a hash of the image id; stable across runs,
    workers and resumes."""

    def held_out(s: Sample) -> bool:
        marked = (images or {}).get(s.image_id, {}).get("split")
        if marked:
            return marked == "val"
        return (s.image_id * 2654435761 % 2**32) / 2**32 < val_fraction

    return [s for s in samples if not held_out(s)], [s for s in samples if held_out(s)]


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def _pixels(index: CocoIndex, image_ids: list[int], options) -> dict[int, np.ndarray]:
    uris = [index.images[i]["file_name"] for i in image_ids]
    out = {}
    for image_id, data in zip(image_ids, storage.fetch_many(uris, options)):
        if isinstance(data, Exception):
            raise OSError(f"training image {index.images[image_id]['file_name']}: {data}")
        decoded = media.decode_image(data, max_pixels=64_000_000, max_side=None)
        if decoded.error:
            raise OSError(f"training image {index.images[image_id]['file_name']}: {decoded.error} ({decoded.detail})")
        out[image_id] = decoded.image
    return out


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32)
    out = out * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)  # contrast, brightness
    gray = out.mean(axis=2, keepdims=True)
    out = gray + (out - gray) * rng.uniform(0.7, 1.3)  # saturation
    return out.clip(0, 255).astype(np.uint8)


def _resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def load_batch(
    index: CocoIndex,
    task: str,
    samples: list[Sample],
    *,
    input_size: int,
    train: bool,
    seed: int,
    epoch: int,
    classes: tuple[str, ...],
    options=None,
    view: tuple[int, int] | None = None,
) -> list[tuple[np.ndarray, dict]]:
    """(HxWx3 uint8 image, target) per sample; target holds boxes/labels/masks or a part map
    (garments: a parse map in a `view` = (height, width) input, default square input_size, and
    presence; actions: (window features, {"labels": multi-hot over classes}))."""
    if task == ACTIONS_STAGE:
        return _action_samples(index, samples, train=train, seed=seed, epoch=epoch, classes=classes)
    pixels = _pixels(index, sorted({s.image_id for s in samples}), options)
    label_of = {taxonomy.COCO_CATEGORY_ID.get(name, -1): k + 1 for k, name in enumerate(classes)}
    label_of.update({c["id"]: classes.index(c["name"]) + 1 for c in index.categories if c["name"] in classes})
    out = []
    for s in samples:
        rng = np.random.default_rng([seed, epoch, s.image_id, s.person_ann or 0])
        image = pixels[s.image_id]
        anns = index.anns.get(s.image_id, [])
        h, w = image.shape[:2]
        x0 = y0 = 0
        if s.person_ann is not None:
            person = next(a for a in anns if a["id"] == s.person_ann)
            bx, by, bw, bh = person["bbox"]
            x0, y0, x1, y1 = crop_box((bx, by, bx + bw, by + bh), w, h)
            image = image[y0:y1, x0:x1]
            anns = [a for a in anns if a.get("parent_person_id") == s.person_ann]
        ch, cw = image.shape[:2]
        if task == GARMENTS_TASK:
            out.append(
                _garment_sample(
                    image,
                    anns,
                    (x0, y0),
                    index,
                    train,
                    rng,
                    view or (input_size, input_size),
                    index.images[s.image_id].get("tags"),
                )
            )
            continue
        if task == PARTS_STAGE:
            part_map = np.zeros((ch, cw), np.uint8)
            for a in anns:
                if a["category_id"] in taxonomy.PART_VALUE and "segmentation" in a:
                    part_map[rle.decode(a["segmentation"])[y0 : y0 + ch, x0 : x0 + cw]] = taxonomy.PART_VALUE[
                        a["category_id"]
                    ]
            image, part_map = (
                _resize(image, (input_size, input_size)),
                _resize(part_map, (input_size, input_size), True),
            )
            if train and rng.random() < 0.5:  # a flip keeps the part names: they carry no side here
                image, part_map = image[:, ::-1], part_map[:, ::-1]
            out.append((_photometric(image, rng) if train else image, {"parts": np.ascontiguousarray(part_map)}))
            continue
        keep = [a for a in anns if a["category_id"] in label_of and a["bbox"][2] > 1 and a["bbox"][3] > 1]
        boxes = np.array(
            [
                [
                    a["bbox"][0] - x0,
                    a["bbox"][1] - y0,
                    a["bbox"][0] + a["bbox"][2] - x0,
                    a["bbox"][1] + a["bbox"][3] - y0,
                ]
                for a in keep
            ],
            np.float32,
        ).reshape(-1, 4)
        boxes = boxes.clip(0, [cw, ch, cw, ch])
        target = {"boxes": boxes, "labels": np.array([label_of[a["category_id"]] for a in keep], np.int64)}
        if task == CLOTHING_STAGE:
            target["masks"] = (
                np.stack([rle.decode(a["segmentation"])[y0 : y0 + ch, x0 : x0 + cw] for a in keep]).astype(np.uint8)
                if keep
                else np.zeros((0, ch, cw), np.uint8)
            )
        scale = input_size / max(ch, cw) * (rng.uniform(0.8, 1.2) if train else 1.0)  # scale jitter
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        image = _resize(image, size)
        target["boxes"] = target["boxes"] * np.array([size[0] / cw, size[1] / ch] * 2, np.float32)
        if "masks" in target:
            target["masks"] = (
                np.stack([_resize(m, size, True) for m in target["masks"]])
                if len(keep)
                else np.zeros((0, size[1], size[0]), np.uint8)
            )
        if train and rng.random() < 0.5:
            image = image[:, ::-1]
            b = target["boxes"].copy()
            target["boxes"][:, 0], target["boxes"][:, 2] = size[0] - b[:, 2], size[0] - b[:, 0]
            if "masks" in target:
                target["masks"] = target["masks"][:, :, ::-1]
        out.append(
            (
                np.ascontiguousarray(_photometric(image, rng) if train else image),
                {k: np.ascontiguousarray(v) for k, v in target.items()},
            )
        )
    return out


# framings a person arrives in, besides whole: (name, share of samples, where the frame cuts the
# person, as a fraction of their height from the top of the head: converters.framing_cut)
FRAMINGS = (("waist_up", 0.25, (0.45, 0.62)), ("head_and_shoulders", 0.15, (0.2, 0.33)))
MIN_PRESENT_PIXELS = 20  # a class with fewer pixels in the view is not counted as worn there


def presence_of(parse: np.ndarray, classes_count: int) -> np.ndarray:
    """Which parse classes a view holds (1/0; background not scored: -1)."""
    counts = np.bincount(parse[parse != taxonomy.PARSE_IGNORE].ravel(), minlength=classes_count)[:classes_count]
    out = (counts >= MIN_PRESENT_PIXELS).astype(np.float32)
    out[0] = -1.0
    return out


def presence_prior(index: CocoIndex, samples: list[Sample]) -> np.ndarray:
    """Per parse class, the share of the samples that hold it, read from the annotations (no
    pixels decoded), kept within [0.01, 0.99]: the presence head starts at logit(share). From a
    zero bias each class starts at 0.5, the gate, and a short run leaves the classes the
    features do not separate (a top every photo has, a hat none has) close to it."""
    n = len(taxonomy.GARMENT_PARSE)
    value_of = taxonomy.parse_value_of(index.categories)
    counts = np.zeros(n)
    for s in samples:
        tags = index.images[s.image_id].get("tags")
        if tags is not None:
            counts += presence_of_tags(tags, n) == 1
            continue
        present = {
            value_of[a["category_id"]]
            for a in index.anns.get(s.image_id, [])
            if a.get("parent_person_id") == s.person_ann and a["category_id"] in value_of
        }
        counts[sorted(present - {0, taxonomy.PARSE_IGNORE})] += 1
    return np.clip(counts / max(1, len(samples)), 0.01, 0.99)


def presence_of_tags(tags: list[str], classes_count: int) -> np.ndarray:
    """Image-level tags (parse class names) as a presence target: every class known, present or not."""
    out = np.zeros(classes_count, np.float32)
    out[[taxonomy.GARMENT_PARSE.index(t) for t in tags if t in taxonomy.GARMENT_PARSE]] = 1.0
    out[0] = -1.0
    return out


def _degrade(view: np.ndarray, rng) -> np.ndarray:
    """Grey scale and the blur of a small, upscaled person, now and then."""
    if rng.random() < 0.15:
        view = np.repeat(view.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    if rng.random() < 0.2:
        h, w = view.shape[:2]
        f = rng.uniform(0.25, 0.6)
        view = _resize(_resize(view, (max(8, int(w * f)), max(8, int(h * f)))), (w, h))
    return view


def _garment_sample(
    crop: np.ndarray,
    anns: list[dict],
    offset,
    index: CocoIndex,
    train: bool,
    rng,
    view_hw: tuple[int, int],
    tags: list[str] | None = None,
) -> tuple:
    """The crop's view (jittered in scale, position and framing when training), its parse map
    and presence; a tagged photo (no pixel labels) gets a map of PARSE_IGNORE and its tags."""
    from fashion_ray.models.garments import view_of, warp_to_view

    value_of = taxonomy.parse_value_of(index.categories)
    ch, cw = crop.shape[:2]
    parse = np.full((ch, cw), taxonomy.PARSE_IGNORE if tags is not None else 0, np.uint8)
    for a in anns:
        if a["category_id"] in value_of and "segmentation" in a:
            parse[rle.decode(a["segmentation"])[offset[1] : offset[1] + ch, offset[0] : offset[0] + cw]] = value_of[
                a["category_id"]
            ]
    if train and tags is None:
        draw = rng.random()
        for _, share, (low, high) in FRAMINGS:
            if draw < share:
                cut = framing_cut(parse, rng.uniform(low, high))
                crop, parse = crop[:cut], parse[:cut]
                break
            draw -= share
    ch, cw = crop.shape[:2]
    zoom, shift = 1.0, (0.0, 0.0)
    if train:  # the person detector's box is never exact: scale and shift the view
        zoom, shift = 1 / rng.uniform(0.9, 1.15), (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    view = view_of(ch, cw, *view_hw, zoom=zoom, shift=shift)
    fill = taxonomy.PARSE_IGNORE if tags is not None else 0
    image, target = warp_to_view(crop, view), warp_to_view(parse, view, nearest=True, fill=fill)
    if train and rng.random() < 0.5:  # parse classes carry no side
        image, target = image[:, ::-1], target[:, ::-1]
    if train:
        image = _degrade(_photometric(image, rng), rng)
    n = len(taxonomy.GARMENT_PARSE)
    presence = presence_of_tags(tags, n) if tags is not None else presence_of(target, n)
    return np.ascontiguousarray(image), {"parse": np.ascontiguousarray(target), "presence": presence}


def _action_samples(
    index: ActionIndex, samples: list[Sample], *, train: bool, seed: int, epoch: int, classes: tuple[str, ...]
) -> list[tuple[np.ndarray, dict]]:
    from fashion_ray.actions import window_features
    from fashion_ray.training.action_examples import example_track

    column = {taxonomy.AVA_ACTION_ID[name]: k for k, name in enumerate(classes)}
    out = []
    for s in samples:
        example = index.by_id[s.image_id]
        rng = np.random.default_rng([seed, epoch, s.image_id])
        track, at = example_track(example)
        target = np.zeros(len(classes), np.float32)
        target[[column[a] for a in example["action_ids"] if a in column]] = 1.0
        features = window_features(track, at, mirror=train and rng.random() < 0.5)
        if train:
            features = _drop_slots(features, rng)
        out.append((features, {"labels": target}))
    return out


def _drop_slots(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames a track may lack at labelling time: a third of the time only the keyframe (a
    photo), a third some of the others (a missed detection, the clip's ends)."""
    from fashion_ray.actions import WINDOW_OFFSETS_S

    slots = features.reshape(len(WINDOW_OFFSETS_S), -1).copy()
    centre = WINDOW_OFFSETS_S.index(0.0)
    draw = rng.random()
    for k in range(len(slots)):
        if k != centre and (draw < 1 / 3 or (draw < 2 / 3 and rng.random() < 0.5)):
            slots[k] = 0.0
    return slots.ravel()
