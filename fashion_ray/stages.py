"""Ray Data stages: callable classes, model loaded once per actor in __init__, work in __call__.

Rows flow as numpy batches with these columns (see pipeline.load_media):
    id, uri, size, etag, mtime, source, frame_index, timestamp_s, status, error, error_detail,
    width, height, scale, image (HxWx3 uint8 at working resolution),
    regions (JSON list of candidate person boxes, e.g. moving things in video frames),
    ran_on ("step@node;..." : where each step handled the row, placement.py),
    persons (a `Persons` object: label dicts in working coordinates),
    jpeg (only with --jpeg-decode person: a plain JPEG's file, which PersonStage decodes;
          its image is a 1x1 placeholder until then; b"" for rows decoded by the tasks)

Stages only add to `persons`: person boxes, keypoints and accessories (those no person holds
are the row's `objects`, on the same Persons object); garments; parts;
actions (which read keypoints and accessories, not pixels). A candidate person (under the
person threshold, `confident` false) is a box and a score: the later stages skip it. A row whose status is "error" passes through untouched, and
an image with no person costs the clothing and parts stages nothing. A model failure on
one image becomes an error row ("model_error") instead of failing the block.
Resources (actors, CPUs, GPUs, batch size) are not chosen here: see pipeline.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from fashion_ray import actions, media, taxonomy
from fashion_ray import masks as rle
from fashion_ray.boxes import box_iou, crop_box, owner
from fashion_ray.config import Device
from fashion_ray.formats.schema import is_confident
from fashion_ray.models import build_stage_predictor, load_bundle
from fashion_ray.placement import add_ran_on
from fashion_ray.video import appearance

# the score share a clothing model's bag or tie keeps where the person detector found none
# there: on COCO128 the garment parser's own bags (trained on street photos) were 78 of 114
# and nearly all wrong, ranked over the detector's (bag AP 0.097 -> 0.025); at 0.3 they rank
# under its confident accessories (0.35) and bag AP is 0.123 (docs/evaluation.md)
UNCONFIRMED_ACCESSORY = 0.3

log = logging.getLogger(__name__)


@dataclass
class Persons:
    """A row's persons between stages, and the accessories no person holds (`objects`). A Python
    object, so Ray carries it pickled: no stage re-parses JSON, and Arrow need not infer a
    schema for labels that later stages fill in."""

    items: list[dict] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)


def persons_column(values: list[list[dict]], objects: list[list[dict]] | None = None) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    # filled in place: np.array would nest the lists
    column[:] = [Persons(v, list(o)) for v, o in zip(values, objects or [[] for _ in values])]
    return column


class _Stage:
    stage_name = ""
    needs_image = True  # the pixels must reach this stage (pipeline.py drops them after the last that does)

    def __init__(
        self,
        bundle_uri: str,
        device: Device,
        batch_size: int,
        storage_options=None,
        emit_image: bool = True,
        score_threshold: float | None = None,
    ):
        self.device = device
        self.bundle = load_bundle(bundle_uri, storage_options)
        if score_threshold is not None:  # the job's --score-threshold instead of the bundle's
            spec = dataclasses.replace(self.bundle.stages[self.stage_name], score_threshold=score_threshold)
            self.bundle = dataclasses.replace(self.bundle, stages={**self.bundle.stages, self.stage_name: spec})
        self.predictor = build_stage_predictor(self.bundle, self.stage_name, device, storage_options)
        self.batch_size = max(1, batch_size)
        self.emit_image = emit_image

    def _predict(self, images: list[np.ndarray], context: list[dict]) -> list[dict | Exception]:
        """Predict in model-sized chunks; if a chunk fails, retry image by image to isolate it."""
        out: list = []
        for start in range(0, len(images), self.batch_size):
            chunk, ctx = images[start : start + self.batch_size], context[start : start + self.batch_size]
            try:
                out.extend(self.predictor.predict(chunk, ctx))
            except Exception:
                for img, c in zip(chunk, ctx):
                    try:
                        out.extend(self.predictor.predict([img], [c]))
                    except Exception as exc:  # one bad image must not fail its neighbours
                        log.warning("%s model failed on an image: %s", self.stage_name, exc)
                        out.append(exc)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = list(batch["persons"])
        persons = [p.items for p in labels]
        self.label(batch, persons)  # the person stage also sets labels[i].objects
        objects = [p.objects if status == "ok" else [] for p, status in zip(labels, batch["status"])]
        batch["persons"] = persons_column(persons, objects)
        if "ran_on" in batch:
            batch["ran_on"] = np.array(add_ran_on(batch["ran_on"], self.stage_name), dtype=object)
        if not self.emit_image:
            batch.pop("image", None)
        return batch

    @staticmethod
    def _fail(batch, i: int, exc: Exception, persons: list, stage: str) -> None:
        batch["status"][i] = "error"
        batch["error"][i] = "model_error"
        batch["error_detail"][i] = f"{stage}: {type(exc).__name__}: {exc}"[:300]
        persons[i] = []


class PersonStage(_Stage):
    """Person detection on whole images: boxes, scores, masks and keypoints where the model has them.

    With jpeg_max_side set (the job's --jpeg-decode person), rows that carry a JPEG file
    instead of pixels (pipeline.load_media) are decoded here, in one batch on the stage's
    device: nvJPEG on a GPU, so the CPU tasks only fetch.
    """

    stage_name = "person"

    def __init__(self, *args, jpeg_max_side: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.jpeg_max_side = jpeg_max_side

    def _decode_jpegs(self, batch) -> None:
        payloads = batch.pop("jpeg")
        rows = [i for i, data in enumerate(payloads) if data]
        if not rows:
            return
        sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in rows]
        images = np.empty(len(batch["id"]), dtype=object)  # whatever shape Ray Data gave the column
        images[:] = list(batch["image"])
        decoded = media.decode_jpegs([payloads[i] for i in rows], sizes, self.jpeg_max_side, self.device.name)
        for i, (width, height), image in zip(rows, sizes, decoded):
            if image is None:  # the CPU decoder gives the pixels or the reason
                fallback = media.decode_image(payloads[i], max_pixels=width * height, max_side=self.jpeg_max_side)
                image = fallback.image if fallback.image is not None else images[i]
                if fallback.error:
                    batch["status"][i], batch["error"][i], batch["error_detail"][i] = (
                        "error",
                        fallback.error,
                        fallback.detail,
                    )
            images[i] = image
        batch["image"] = images

    def label(self, batch, persons) -> None:
        if "jpeg" in batch:
            self._decode_jpegs(batch)
        threshold = self.bundle.stages[self.stage_name].score_threshold
        rows = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        # video frames carry moving regions (video/motion.py) as extra candidates
        regions = batch["regions"] if "regions" in batch else [None] * len(batch["status"])
        results = self._predict(
            [batch["image"][i] for i in rows], [{"regions": json.loads(regions[i] or "[]")} for i in rows]
        )
        for i, det in zip(rows, results):
            if isinstance(det, Exception):
                self._fail(batch, i, det, persons, self.stage_name)
                continue
            found = []
            for j, label in enumerate(det["labels"]):
                if label != taxonomy.PERSON:
                    continue
                score = float(det["scores"][j])
                person = {
                    "person_id": len(found),
                    "score": score,
                    # a candidate (under the threshold) is a box and a score: the later stages skip it
                    "confident": score >= threshold,
                    "box": [float(v) for v in det["boxes"][j]],
                    "mask": None,
                    "keypoints": None,
                    "garments": [],
                    "parts": [],
                }
                mask = det["masks"][j] if det.get("masks") is not None else None
                if mask is not None and not mask.any():
                    mask = None  # a person the model gave no pixels (a crowd past the pose budget)
                if mask is not None:
                    person["mask"] = rle.encode(mask)
                if person["confident"]:  # what the tracker matches on: candidates are never tracked
                    person["appearance"] = appearance.describe(batch["image"][i], person["box"], mask)
                if det.get("keypoints") is not None and det["keypoints"][j] is not None:
                    person["keypoints"] = [float(v) for v in np.asarray(det["keypoints"][j]).reshape(-1)]
                found.append(person)
            batch["persons"][i].objects = link_accessories(found, det.get("accessories") or [])
            persons[i] = found


def link_accessories(persons: list[dict], accessories: list[dict]) -> list[dict]:
    """Bags, umbrellas, ties ... become garments of the confident person who carries or wears
    them (boxes.owner). Returns the ones that belong to nobody (a suitcase standing alone): the
    row's `objects`, labelled as themselves. A candidate accessory (`confident` false: under
    the accessory threshold) is an object too, never a person's: what a person holds feeds
    their actions (carry/hold), and a guess must not."""
    confident = [p for p in persons if is_confident(p)]
    unowned = []
    for item in sorted(accessories, key=lambda a: -a["score"]):
        label = {
            "category": item["category"],
            "category_id": taxonomy.COCO_CATEGORY_ID[item["category"]],
            "score": float(item["score"]),
            "box": [float(v) for v in item["box"]],
        }
        sure = is_confident(item)
        k = owner(item["box"], [p["box"] for p in confident]) if sure else None
        if k is None:
            unowned.append({"object_id": len(unowned), **label, "confident": sure})
        else:
            garments = confident[k]["garments"]
            garments.append({"garment_id": len(garments), **label, "mask": None, "attributes": []})
    return unowned


class _PersonCropStage(_Stage):
    """Runs its model on a padded crop of every person found; subclasses map results back."""

    def label(self, batch, persons) -> None:
        jobs, crops, context = [], [], []
        for i, status in enumerate(batch["status"]):
            if status != "ok":
                continue
            image = batch["image"][i]
            h, w = image.shape[:2]
            for k, person in enumerate(persons[i]):
                if not is_confident(person):  # a candidate carries its box and score only
                    continue
                box = crop_box(person["box"], w, h)
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                x0, y0, x1, y1 = box
                ctx = {"box": box}
                if person.get("mask"):
                    ctx["mask"] = rle.decode(person["mask"])[y0:y1, x0:x1]
                if person.get("keypoints"):
                    kp = np.asarray(person["keypoints"], np.float32).reshape(-1, 3).copy()
                    kp[:, 0] -= x0
                    kp[:, 1] -= y0
                    ctx["keypoints"] = kp
                jobs.append((i, k, box))
                crops.append(np.ascontiguousarray(image[y0:y1, x0:x1]))
                context.append(ctx)
        results = self._predict(crops, context)
        failed = set()
        for (i, k, box), result, ctx in zip(jobs, results, context):
            if i in failed:
                continue
            if isinstance(result, Exception):
                self._fail(batch, i, result, persons, self.stage_name)
                failed.add(i)
                continue
            h, w = batch["image"][i].shape[:2]
            self.attach(persons[i][k], result, box, h, w, ctx)


class ClothingStage(_PersonCropStage):
    """Garment instances (category, score, box, mask) on each person crop, in image coordinates."""

    stage_name = "clothing"

    def attach(self, person: dict, det: dict, box, height: int, width: int, ctx: dict) -> None:
        attach_garments(person, det, box, height, width)


def attach_garments(person: dict, det: dict, box, height: int, width: int) -> None:
    """A clothing model's garments on one person crop -> the person's garments in image pixels.

    A parser that says which classes the person does not wear (`absent`) also removes the
    person detector's accessories of those classes (a COCO detector's handbag on a sleeve).
    An accessory the clothing model finds and the person detector does not keeps
    UNCONFIRMED_ACCESSORY of its score.
    """
    absent = set(det.get("absent") or ())
    if absent:
        kept = [g for g in person["garments"] if taxonomy.parse_class_of(g["category"]) not in absent]
        person["garments"] = [dict(g, garment_id=k) for k, g in enumerate(kept)]
    x0, y0 = box[0], box[1]
    attributes = det.get("attributes") or [[] for _ in det["labels"]]  # only some models give them
    for j, category in enumerate(det["labels"]):
        gbox = det["boxes"][j]
        garment = {
            "garment_id": len(person["garments"]),
            "category": category,
            "category_id": taxonomy.COCO_CATEGORY_ID.get(category, 0),
            "score": float(det["scores"][j]),
            "box": [float(gbox[0] + x0), float(gbox[1] + y0), float(gbox[2] + x0), float(gbox[3] + y0)],
            "mask": None,
            "attributes": list(attributes[j]),
        }
        if det.get("masks") is not None:
            garment["mask"] = rle.encode(rle.paste(det["masks"][j], box, height, width))
        # a bag or tie the person detector found already: one garment, its box, category (the
        # detector tells a backpack from a handbag, the parser says bag for both) and the parser's mask
        found = next(
            (
                g
                for g in person["garments"]
                if taxonomy.same_object_class(g["category"], category)
                and g["mask"] is None
                and garment["mask"] is not None
                and box_iou(g["box"], garment["box"]) > 0.3
            ),
            None,
        )
        if found:
            found["mask"] = garment["mask"]
            continue
        if category in taxonomy.ACCESSORIES:
            garment["score"] *= UNCONFIRMED_ACCESSORY
        person["garments"].append(garment)


class PartsStage(_PersonCropStage):
    """Body-part segmentation of each person crop: one mask per part (and side, where known)."""

    stage_name = "parts"

    def attach(self, person: dict, seg: dict, box, height: int, width: int, ctx: dict) -> None:
        part_map = seg["parts"]
        sides = seg.get("sides")
        if ctx.get("mask") is not None:
            # parts never leave the person: clip to the person mask where the detector gave one
            part_map = np.where(ctx["mask"], part_map, 0)
        for part_id, name in enumerate(taxonomy.PARTS, start=1):
            in_part = part_map == part_id
            if not in_part.any():
                continue
            side_values = (
                [(None, in_part)]
                if sides is None
                else [(side, in_part & (sides == code)) for code, side in ((0, None), (1, "left"), (2, "right"))]
            )
            for side, mask in side_values:
                if not mask.any():
                    continue
                full = rle.paste(mask, box, height, width)
                person["parts"].append(
                    {
                        "part": name,
                        "part_id": part_id,
                        "side": side,
                        "area": int(full.sum()),
                        "box": rle.bbox_xyxy(full),
                        "mask": rle.encode(full),
                    }
                )


class ActionsStage(_Stage):
    """AVA actions of each person from its keypoints and linked accessories (models/actions.py).

    Here every person is a track of one frame: a photo gets what one frame decides. A video
    frame's actions are labelled again once its tracks are drawn (tracking.track_shards),
    from the track's motion and pose around the frame.
    """

    stage_name = "actions"
    needs_image = False

    def label(self, batch, persons) -> None:
        threshold = self.bundle.stages[self.stage_name].score_threshold
        for i, status in enumerate(batch["status"]):
            if status != "ok" or not persons[i]:
                continue
            confident = [p for p in persons[i] if is_confident(p)]
            try:
                scores = self.predictor.predict_tracks([actions.Track.of_persons([0.0], [p]) for p in confident])
            except Exception as exc:  # one image's bad keypoints fail that image, not its neighbours
                self._fail(batch, i, exc, persons, self.stage_name)
                continue
            for person, frames in zip(confident, scores):
                person["actions"] = actions.as_records(frames[0], threshold)


STAGE_CLASSES = {"person": PersonStage, "clothing": ClothingStage, "parts": PartsStage, "actions": ActionsStage}
