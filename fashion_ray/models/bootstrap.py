"""The bootstrap bundle: real labels with no trained fashion model and no network.

Built from pretrained models that registry packages ship (MediaPipe 0.10.21's Apache-2.0
pose landmarker and person segmenter, run through mediapipe 1.2.2's tasks API), plus geometry:

- person (`mediapipe_pose_person`): multi-person pose on the whole image and on upscaled
  tiles at two scales, plus segmenter components -> merged candidates, each looked at again
  through a view around it (whole extent, second opinion) and kept when the skeleton is
  plausible and the segmenter agrees -> 33 keypoints + person mask per person.
- parts (`pose_body_parts`): every person-mask pixel goes to the nearest body region
  (head disc, torso polygon, limb bones), left/right kept from the landmarks.
- clothing (`pose_garment_regions`): part regions minus skin (skin colour learnt from the
  person's own face) -> upper-body / lower-body / full-body garment regions, with sleeve
  and leg length cues. It does not pretend to tell DeepFashion2's 13 classes apart.

These are the teacher for trained students: their labels feed jobs/train.py.
"""

from __future__ import annotations

import numpy as np

from fashion_ray import taxonomy
from fashion_ray.boxes import box_iou, crop_box
from fashion_ray.formats.masks import bbox_xyxy
from fashion_ray.models.bundle import read_checked

# MediaPipe pose landmark indices (subject's left/right).
NOSE, L_EAR, R_EAR = 0, 7, 8
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
HAND = {"left": (17, 19, 21), "right": (18, 20, 22)}
FOOT = {"left": (29, 31), "right": (30, 32)}
HEAD_LANDMARKS = tuple(range(11))

VISIBLE = 0.5  # landmark visibility above which a limb is drawn
POSE_INPUT_SIDE = 384  # small crops are upscaled to about this before the pose model
SEGMENTER_SIDE = 256  # the selfie segmenter's input


def _pose_landmarker(task: bytes, min_confidence: float, num_poses: int):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=task), running_mode=vision.RunningMode.IMAGE, num_poses=num_poses,
        output_segmentation_masks=True, min_pose_detection_confidence=min_confidence,
        min_pose_presence_confidence=min_confidence)
    return vision.PoseLandmarker.create_from_options(options)


def _segmenter(model: bytes):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_buffer=model),
                                           running_mode=vision.RunningMode.IMAGE, output_confidence_masks=True)
    return vision.ImageSegmenter.create_from_options(options)


def _mp_image(rgb: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


class PosePersonDetector:
    """Finds every person: candidate regions -> multi-person pose + masks -> merge -> re-view.

    MediaPipe's pose model wants a person to fill a good part of its 224 px input, so small
    people are found on tiles: overlapping squares at a few sizes (fractions of the image's
    long side), each upscaled before the model sees it. The person segmenter's components on
    the whole image add regions for people the pose model did not anchor on a tile (a back
    view, a face out of frame). Every merged candidate is looked at again through a square
    around it: that view gives its whole extent, and it is kept only when two views saw it,
    its skeleton is plausible and the segmenter sees a body under it (posts, signs, cup
    handles and textures fail one of these).
    """

    kind = "detector"

    TILE_FRACTIONS = (0.375, 0.1875)  # tile sides / image long side: 240 and 120 px tiles on a 640 px image
    MAX_POSES = 4  # poses the model may return per view

    def __init__(self, pose_task: bytes, segmenter_model: bytes | None = None, *, score_threshold: float,
                 mask_threshold: float, tile_fractions: tuple[float, ...] = TILE_FRACTIONS, max_poses: int = MAX_POSES):
        import threading

        self.pose = _pose_landmarker(pose_task, 0.5, max_poses)
        self.segmenter = _segmenter(segmenter_model) if segmenter_model else None
        # MediaPipe closes its tasks through a thread pool; at interpreter exit its __del__ runs
        # after that pool is gone and prints tracebacks into every log. Closing from a
        # threading-exit hook (LIFO, so before the pool's own) keeps logs clean.
        threading._register_atexit(self.close)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.tile_fractions = tuple(tile_fractions)

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        contexts = context or [{}] * len(images)
        return [self._detect(img, ctx.get("regions") or []) for img, ctx in zip(images, contexts)]

    def close(self) -> None:
        for task in (self.pose, self.segmenter):
            if task is not None:
                task.close()
        self.segmenter = None

    # candidate regions -------------------------------------------------------------------
    def _tiles(self, w: int, h: int) -> list[tuple[int, int, int, int]]:
        regions = [(0, 0, w, h)]
        for fraction in self.tile_fractions:
            side = max(32, round(fraction * max(w, h)))
            if side >= 0.75 * min(w, h) and fraction > 0.3:
                # a square the size of the short side: the whole image again, minus the sides
                side = min(w, h)
            regions += _grid(w, h, side)
        return list(dict.fromkeys(regions))

    def _person_probability(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        """The segmenter's person probability at its own 256x256 input."""
        import cv2

        small = cv2.resize(img, (SEGMENTER_SIDE, SEGMENTER_SIDE), interpolation=interpolation)
        return self.segmenter.segment(_mp_image(small)).confidence_masks[0].numpy_view()

    def _segment_regions(self, img: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Padded boxes of the person segmenter's components (people the pose model may miss)."""
        import cv2

        if self.segmenter is None:
            return []
        h, w = img.shape[:2]
        prob = self._person_probability(img, cv2.INTER_AREA)
        n, _, stats, _ = cv2.connectedComponentsWithStats((prob > 0.5).astype(np.uint8))
        sx, sy = w / SEGMENTER_SIDE, h / SEGMENTER_SIDE
        return [crop_box((x * sx, y * sy, (x + bw) * sx, (y + bh) * sy), w, h, pad=0.25)
                for x, y, bw, bh, area in stats[1:n] if area >= 40]

    def _segmenter_view(self, img: np.ndarray, view, mask: np.ndarray) -> np.ndarray | None:
        """The pose mask where the segmenter, looking at the same view, also sees a person;
        None when that is less than half of it. The pose model's mask of a small person
        spills onto the background it guesses legs into; the segmenter's edge does not."""
        import cv2

        if self.segmenter is None:
            return mask
        x0, y0, x1, y1 = view
        inside = mask[y0:y1, x0:x1]
        if not inside.any():
            return None
        prob = self._person_probability(img[y0:y1, x0:x1], cv2.INTER_LINEAR)
        person = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0.5
        if float(person[inside].mean()) < 0.5:
            return None
        refined = _within(mask, view)
        refined[y0:y1, x0:x1] &= person
        return refined

    # pose on one region ------------------------------------------------------------------
    def _poses_in(self, img: np.ndarray, region) -> list[dict]:
        import cv2

        x0, y0, x1, y1 = region
        crop = img[y0:y1, x0:x1]
        if min(crop.shape[:2]) < 8:
            return []
        up = POSE_INPUT_SIDE / max(crop.shape[:2])
        if up > 1.0:
            crop = cv2.resize(crop, (round(crop.shape[1] * up), round(crop.shape[0] * up)), interpolation=cv2.INTER_LINEAR)
        else:
            up = 1.0
        result = self.pose.detect(_mp_image(crop))
        h, w = img.shape[:2]
        ch, cw = crop.shape[:2]
        found = []
        for k, landmarks in enumerate(result.pose_landmarks):
            kp = np.array([[lm.x * cw / up + x0, lm.y * ch / up + y0, lm.visibility or 0.0] for lm in landmarks], np.float32)
            mask = np.zeros((h, w), bool)
            if k < len(result.segmentation_masks or []):
                prob = result.segmentation_masks[k].numpy_view()[..., 0]
                if up > 1.0:
                    prob = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                mask[y0:y1, x0:x1] = prob > self.mask_threshold
                mask = _components_touching(mask, kp)
            det = _detection(kp, mask, w, h)
            if det is not None:
                found.append(det)
        return found

    def _detect(self, img: np.ndarray, extra_regions: list) -> dict:
        h, w = img.shape[:2]
        found = []
        # extra regions (moving things in video) are candidate boxes: seen through a square around each
        views = [_view(r, 32, w, h) for r in extra_regions]
        for region in self._tiles(w, h) + self._segment_regions(img) + views:
            found += self._poses_in(img, region)
        found = [d for d in found if d["score"] >= self.score_threshold]
        smallest_tile = min(self.tile_fractions, default=1.0) * max(w, h)
        kept = []
        for cand in _merge(found):
            if not _plausible(cand):
                continue
            # Each candidate is looked at again through a square around it where it fills about
            # 60% of the view: a person cut by a tile edge gets its whole extent there.
            view = _view(cand["box"], smallest_tile, w, h)
            again = [d for d in self._poses_in(img, view) if d["score"] >= self.score_threshold and _same_person(d, cand)]
            # A pose the model imagined in an upscaled patch of texture is seen from one view
            # only, and the person segmenter (a second model) does not see a body under it.
            seen_twice = bool(again) or sum(_same_person(d, cand) for d in found) >= 2
            best = max(again, key=lambda d: d["score"]) if again else cand
            refined = self._segmenter_view(img, view, best["mask"])
            # A region from another cue (motion in video) is evidence of its own: two of the
            # three (two views, the segmenter, the region) must agree.
            proposed = any(box_iou(best["box"], r) >= 0.3 for r in extra_regions)
            if seen_twice + (refined is not None) + proposed < 2:
                continue
            if refined is not None:
                best = _detection(best["keypoints"], refined, w, h) or best
            elif proposed:
                # no segmenter edge to trust: the moving region bounds the extent instead
                region = _clip(max(extra_regions, key=lambda r: box_iou(best["box"], r)), w, h)
                best = _detection(best["keypoints"], _within(best["mask"], region), w, h) or best
            kept.append(best)
        kept = _merge(kept)
        kept = [d for d in kept if not _fragment(d, kept)]
        return {
            "boxes": np.array([k["box"] for k in kept], np.float32).reshape(-1, 4),
            "scores": np.array([k["score"] for k in kept], np.float32),
            "labels": [taxonomy.PERSON] * len(kept),
            "masks": np.stack([k["mask"] for k in kept]) if kept else np.zeros((0, h, w), bool),
            "keypoints": np.stack([k["keypoints"] for k in kept]) if kept else None,
        }


def _merge(found: list[dict]) -> list[dict]:
    """One detection per person: of the views that saw one person, the largest (a small tile
    sees only part of a large person)."""
    kept: list[dict] = []
    for det in sorted(found, key=lambda d: -_area(d["box"])):
        if not any(_same_person(det, k) for k in kept):
            kept.append(det)
    return kept


def _fragment(det: dict, kept: list[dict]) -> bool:
    """A small pose inside a much larger person (a hand or a jacket read as a person)."""
    x0, y0, x1, y1 = det["box"]
    for other in kept:
        ox0, oy0, ox1, oy1 = other["box"]
        overlap = max(0.0, min(x1, ox1) - max(x0, ox0)) * max(0.0, min(y1, oy1) - max(y0, oy0))
        if overlap >= 0.85 * _area(det["box"]) and _area(det["box"]) < 0.25 * _area(other["box"]):
            return True
    return False


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _clip(box, w: int, h: int) -> tuple[int, int, int, int]:
    return max(0, int(box[0])), max(0, int(box[1])), min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))


def _within(mask: np.ndarray, box) -> np.ndarray:
    """The mask's pixels inside an integer box."""
    x0, y0, x1, y1 = box
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return out


def _view(box, min_side: float, w: int, h: int) -> tuple[int, int, int, int]:
    """A square centred on the box, 1.7x its long side (the person fills ~60%), at least min_side."""
    side = max(1.7 * max(box[2] - box[0], box[3] - box[1]), min_side)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return _clip((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), w, h)


def _grid(w: int, h: int, side: int) -> list[tuple[int, int, int, int]]:
    """Squares of `side` overlapping by half, covering the image."""
    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        steps = int(np.ceil((length - side) / (side / 2)))
        return sorted({round(k * (length - side) / steps) for k in range(steps + 1)})

    return [(x, y, min(w, x + side), min(h, y + side)) for y in starts(h) for x in starts(w)]


def _detection(kp: np.ndarray, mask: np.ndarray, w: int, h: int) -> dict | None:
    """One pose -> a person: box over its mask and the visible landmarks that touch it."""
    visible = kp[kp[:, 2] >= VISIBLE]
    inside = visible[(visible[:, 0] >= 0) & (visible[:, 0] < w) & (visible[:, 1] >= 0) & (visible[:, 1] < h)]
    if len(inside) < 3:
        return None
    mask_box = bbox_xyxy(mask)
    on_mask = mask[inside[:, 1].astype(int), inside[:, 0].astype(int)]
    if mask_box is not None and not on_mask.all():
        # The mask is the extent; a landmark off it widens the box only where it is near the
        # body (a hand or foot the mask thresholded away), not where the model guessed a hidden hip.
        import cv2

        reach = 0.15 * max(mask_box[3] - mask_box[1], mask_box[2] - mask_box[0])
        dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
        inside = inside[dist[inside[:, 1].astype(int), inside[:, 0].astype(int)] <= reach]
    xs, ys = list(inside[:, 0]), list(inside[:, 1])
    if mask_box is not None:
        xs += [mask_box[0], mask_box[2] - 1]
        ys += [mask_box[1], mask_box[3] - 1]
    box = [float(max(0, min(xs))), float(max(0, min(ys))), float(min(w, max(xs) + 1)), float(min(h, max(ys) + 1))]
    score = float(np.sort(kp[:, 2])[::-1][:16].mean())  # the 16 most visible landmarks
    return {"box": box, "score": score, "mask": mask, "keypoints": kp}


def _plausible(det: dict) -> bool:
    """A human skeleton: the torso at most 3 shoulder widths long (side views are narrow) and
    the nose between just below and well above the shoulders (head upright or bowed). Poses
    the model reads into cup handles, cat faces and textures mostly break one of the two."""
    kp = det["keypoints"]
    shoulders, hips = kp[[L_SHOULDER, R_SHOULDER], :2], kp[[L_HIP, R_HIP], :2]
    width = float(np.linalg.norm(shoulders[0] - shoulders[1])) + 1e-3
    torso = float(np.linalg.norm(shoulders.mean(0) - hips.mean(0)))
    nose_above = float(shoulders[:, 1].mean() - kp[NOSE, 1]) / width
    return bool(det["mask"].any()) and torso <= 3.0 * width and -0.4 <= nose_above <= 1.2


def _components_touching(mask: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """Keep the mask's connected components that contain a visible landmark (drop other people)."""
    import cv2

    n, labels = cv2.connectedComponents(mask.astype(np.uint8))
    if n <= 2:
        return mask
    keep = set()
    h, w = mask.shape
    for x, y, v in kp:
        if v >= VISIBLE and 0 <= x < w and 0 <= y < h and labels[int(y), int(x)] > 0:
            keep.add(labels[int(y), int(x)])
    return np.isin(labels, list(keep)) if keep else mask


def _same_person(a: dict, b: dict) -> bool:
    if box_iou(a["box"], b["box"]) > 0.6:
        return True
    inter = np.logical_and(a["mask"], b["mask"]).sum()
    smaller = min(a["mask"].sum(), b["mask"].sum())
    if smaller and inter / smaller > 0.6:
        return True
    # same shoulders: the two poses are one person seen from two crops
    sa, sb = a["keypoints"][[L_SHOULDER, R_SHOULDER], :2], b["keypoints"][[L_SHOULDER, R_SHOULDER], :2]
    width = max(np.linalg.norm(sa[0] - sa[1]), np.linalg.norm(sb[0] - sb[1]), 1.0)
    return bool(np.linalg.norm(sa.mean(0) - sb.mean(0)) < 0.35 * width)


# body parts from pose + mask ------------------------------------------------------------------

def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((px - a) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    return np.linalg.norm(px - (a + t[:, None] * ab), axis=1)


def _mean_point(kp: np.ndarray, indices) -> np.ndarray | None:
    pts = kp[list(indices)]
    pts = pts[pts[:, 2] >= 0.3]
    return pts[:, :2].mean(0) if len(pts) else None


def assign_parts(mask: np.ndarray, kp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each person-mask pixel with its nearest body region.

    Returns (parts, sides): parts uses taxonomy.PARTS numbering (0 background, 1 head ...
    6 lower leg); sides is 0 unknown, 1 left, 2 right (the subject's own left/right).
    """
    import cv2

    h, w = mask.shape
    parts = np.zeros((h, w), np.uint8)
    sides = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return parts, sides
    px = np.stack([xs, ys], 1).astype(np.float32)
    shoulder_w = float(np.linalg.norm(kp[L_SHOULDER, :2] - kp[R_SHOULDER, :2])) or max(h, w) * 0.2
    regions: list[tuple[int, int, np.ndarray]] = []  # (part id, side code, distance per pixel)

    head = _mean_point(kp, HEAD_LANDMARKS)
    if head is not None:
        ear_w = float(np.linalg.norm(kp[L_EAR, :2] - kp[R_EAR, :2]))
        radius = max(ear_w * 0.85, shoulder_w * 0.35)
        regions.append((1, 0, np.linalg.norm(px - head, axis=1) - radius))

    torso_poly = kp[[L_SHOULDER, R_SHOULDER, R_HIP, L_HIP], :2].astype(np.int32)
    torso = np.zeros((h, w), np.uint8)
    cv2.fillPoly(torso, [torso_poly], 1)
    torso_dist = cv2.distanceTransform((1 - torso).astype(np.uint8), cv2.DIST_L2, 3)
    regions.append((2, 0, torso_dist[ys, xs]))

    for side, code, (sh, el, wr, hip, kn, an) in (
        ("left", 1, (L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE)),
        ("right", 2, (R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE)),
    ):
        hand = _mean_point(kp, HAND[side])
        foot = _mean_point(kp, FOOT[side])
        bones = [
            (3, sh, kp[sh, :2], kp[el, :2], kp[el, 2]),
            (4, el, kp[el, :2], hand if hand is not None and kp[wr, 2] >= VISIBLE else kp[wr, :2], kp[wr, 2]),
            (5, hip, kp[hip, :2], kp[kn, :2], kp[kn, 2]),
            (6, kn, kp[kn, :2], foot if foot is not None and kp[an, 2] >= VISIBLE else kp[an, :2], kp[an, 2]),
        ]
        for part_id, start, a, b, end_vis in bones:
            # a limb is drawn only where the pose model sees both of its ends
            if kp[start, 2] >= VISIBLE and end_vis >= VISIBLE:
                regions.append((part_id, code, _segment_distance(px, a, b)))

    dist = np.stack([r[2] for r in regions], 1)
    best = dist.argmin(1)
    parts[ys, xs] = np.array([r[0] for r in regions], np.uint8)[best]
    sides[ys, xs] = np.array([r[1] for r in regions], np.uint8)[best]
    return parts, sides


class PoseBodyParts:
    """Body-part segmenter from the person stage's pose and mask (context)."""

    kind = "segmenter"

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        out = []
        for img, ctx in zip(images, context or [{}] * len(images)):
            if ctx.get("mask") is None or ctx.get("keypoints") is None:
                out.append({"parts": np.zeros(img.shape[:2], np.uint8), "sides": None})
                continue
            parts, sides = assign_parts(ctx["mask"], ctx["keypoints"])
            out.append({"parts": parts, "sides": sides})
        return out


# garment regions --------------------------------------------------------------------------

GENERIC_SKIN_CR, GENERIC_SKIN_CB = (133.0, 173.0), (77.0, 127.0)  # Chai & Ngan YCrCb skin box


def skin_mask(img: np.ndarray, parts: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """Skin pixels, with the colour learnt from the person's own face where it is visible."""
    import cv2

    ycc = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    cr, cb = ycc[..., 1], ycc[..., 2]
    face = np.zeros(parts.shape, bool)
    if kp[NOSE, 2] >= VISIBLE:
        radius = max(float(np.linalg.norm(kp[L_EAR, :2] - kp[R_EAR, :2])) * 0.35, 3.0)
        yy, xx = np.ogrid[: parts.shape[0], : parts.shape[1]]
        face = ((xx - kp[NOSE, 0]) ** 2 + (yy - kp[NOSE, 1]) ** 2 <= radius ** 2) & (parts == 1)
    in_generic = (cr >= GENERIC_SKIN_CR[0]) & (cr <= GENERIC_SKIN_CR[1]) & (cb >= GENERIC_SKIN_CB[0]) & (cb <= GENERIC_SKIN_CB[1])
    samples = face & in_generic
    if samples.sum() >= 30:
        mcr, mcb = float(np.median(cr[samples])), float(np.median(cb[samples]))
        scr, scb = max(float(cr[samples].std()) * 2.5, 6.0), max(float(cb[samples].std()) * 2.5, 6.0)
        return (np.abs(cr - mcr) <= scr) & (np.abs(cb - mcb) <= scb)
    return in_generic


def _coverage(cloth: np.ndarray, region: np.ndarray) -> float | None:
    n = int(region.sum())
    return float((cloth & region).sum()) / n if n >= 20 else None


class PoseGarmentRegions:
    """Upper/lower/full-body garment regions: body parts minus skin, with length cues."""

    kind = "detector"
    MIN_COVERAGE = 0.25  # of the torso (upper) or upper legs (lower) for a garment to count

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        return [self._garments(img, ctx or {}) for img, ctx in zip(images, context or [{}] * len(images))]

    def _garments(self, img: np.ndarray, ctx: dict) -> dict:
        import cv2

        h, w = img.shape[:2]
        found: list[tuple[str, float, np.ndarray, list[str]]] = []
        if ctx.get("mask") is not None and ctx.get("keypoints") is not None:
            kp = ctx["keypoints"]
            parts, _ = assign_parts(ctx["mask"], kp)
            cloth = ctx["mask"] & ~skin_mask(img, parts, kp) & (parts != 1)
            # close pin-holes (prints, shadows) so a garment is one region
            cloth = cv2.morphologyEx(cloth.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)).astype(bool) & ctx["mask"]
            cloth &= parts != 1
            upper_region = np.isin(parts, (2, 3, 4))
            lower_region = np.isin(parts, (5, 6))
            upper, lower = cloth & upper_region, cloth & lower_region
            torso_cov = _coverage(cloth, parts == 2)
            thigh_cov = _coverage(cloth, parts == 5)
            upper_attrs, lower_attrs = [], []
            upper_arm, lower_arm = _coverage(cloth, parts == 3), _coverage(cloth, parts == 4)
            if lower_arm is not None and lower_arm > 0.6:
                upper_attrs.append("sleeve:long")
            elif upper_arm is not None:
                upper_attrs.append("sleeve:short" if upper_arm > 0.5 else "sleeve:none")
            lower_leg = _coverage(cloth, parts == 6)
            if lower_leg is not None:
                lower_attrs.append("leg:long" if lower_leg > 0.6 else "leg:short")
            has_upper = torso_cov is not None and torso_cov >= self.MIN_COVERAGE
            has_lower = thigh_cov is not None and thigh_cov >= self.MIN_COVERAGE
            if has_upper and has_lower and _same_cloth(img, upper & (parts == 2), lower & (parts == 5)):
                found.append(("full_body_garment", (torso_cov + thigh_cov) / 2, upper | lower, upper_attrs + lower_attrs))
            else:
                if has_upper:
                    found.append(("upper_body_garment", torso_cov, upper, upper_attrs))
                if has_lower:
                    found.append(("lower_body_garment", thigh_cov, lower, lower_attrs))
        boxes = []
        for _, _, m, _ in found:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return {
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "scores": np.array([f[1] for f in found], np.float32),
            "labels": [f[0] for f in found],
            "masks": np.stack([f[2] for f in found]) if found else np.zeros((0, h, w), bool),
            "keypoints": None,
            "attributes": [f[3] for f in found],
        }


def _same_cloth(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """One piece (dress, jumpsuit) when torso and thigh cloth share a colour (CIELAB distance)."""
    import cv2

    if a.sum() < 20 or b.sum() < 20:
        return False
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB).astype(np.float32)
    return float(np.linalg.norm(np.median(lab[a], 0) - np.median(lab[b], 0))) < 18.0


ARCHITECTURES = {
    "mediapipe_pose_person": ("detector", None),
    "pose_body_parts": ("segmenter", None),
    "pose_garment_regions": ("detector", None),
}


def build_predictor(bundle, spec, device, options=None):
    """Build a bootstrap predictor; its model files are read from the bundle with sha256 checks."""
    files = spec.options.get("files", {})

    def read(key: str) -> bytes:
        entry = files[key]
        return read_checked(bundle, entry["path"], entry["sha256"], options)

    if spec.architecture == "mediapipe_pose_person":
        tuning = {key: spec.options[key] for key in ("tile_fractions", "max_poses") if key in spec.options}
        return PosePersonDetector(read("pose"), read("segmenter") if "segmenter" in files else None,
                                  score_threshold=spec.score_threshold, mask_threshold=spec.mask_threshold, **tuning)
    if spec.architecture == "pose_body_parts":
        return PoseBodyParts()
    return PoseGarmentRegions()
