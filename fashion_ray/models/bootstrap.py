"""The bootstrap bundle: real labels with no trained fashion model and no network.

Built from pretrained models that registry packages ship (MediaPipe 0.10.21's Apache-2.0
pose landmarker and face detectors, run through mediapipe 1.2.2's tasks API; OpenCV<5's
HOG people detector), plus geometry:

- person (`mediapipe_pose_person`): candidate regions (whole image, a body region below
  each detected face, each HOG pedestrian box) -> pose landmarker on each padded crop ->
  33 keypoints + person mask; duplicates of one person merged. MediaPipe's pose model is
  single-person, so the candidate crops are what let it find several people.
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
from fashion_ray.boxes import box_iou
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


def _pose_landmarker(task: bytes, min_confidence: float):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=task), running_mode=vision.RunningMode.IMAGE, num_poses=1,
        output_segmentation_masks=True, min_pose_detection_confidence=min_confidence,
        min_pose_presence_confidence=min_confidence)
    return vision.PoseLandmarker.create_from_options(options)


def _face_detector(model: bytes, min_confidence: float):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=model),
                                         running_mode=vision.RunningMode.IMAGE, min_detection_confidence=min_confidence)
    return vision.FaceDetector.create_from_options(options)


def _mp_image(rgb: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


class PosePersonDetector:
    """Finds every person: candidate crops -> single-person pose + mask -> merged detections."""

    kind = "detector"

    def __init__(self, pose_task: bytes, face_models: list[bytes], *, score_threshold: float, mask_threshold: float,
                 use_hog: bool = True):
        import threading

        import cv2

        self.pose = _pose_landmarker(pose_task, 0.5)
        self.faces = [_face_detector(m, 0.6) for m in face_models]
        # MediaPipe closes its tasks through a thread pool; at interpreter exit its __del__ runs
        # after that pool is gone and prints tracebacks into every log. Closing from a
        # threading-exit hook (LIFO, so before the pool's own) keeps logs clean.
        threading._register_atexit(self.close)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.hog = None
        if use_hog:
            self.hog = cv2.HOGDescriptor()
            self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        return [self._detect(img) for img in images]

    def close(self) -> None:
        for task in (self.pose, *self.faces):
            task.close()
        self.faces = []

    # candidate regions -------------------------------------------------------------------
    def _face_boxes(self, img: np.ndarray) -> list[tuple[float, float, float, float]]:
        boxes = []
        for detector in self.faces:
            for det in detector.detect(_mp_image(img)).detections:
                b = det.bounding_box
                box = (b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height)
                if all(box_iou(box, other) < 0.3 for other in boxes):
                    boxes.append(box)
        return boxes

    def _hog_boxes(self, img: np.ndarray) -> list[tuple[float, float, float, float]]:
        if self.hog is None or min(img.shape[:2]) < 128:
            return []
        gray = img[..., ::-1]  # HOG is colour-agnostic; BGR order is what OpenCV expects
        rects, weights = self.hog.detectMultiScale(np.ascontiguousarray(gray), winStride=(8, 8), padding=(8, 8), scale=1.05)
        return [(x, y, x + w, y + h) for (x, y, w, h), wt in zip(rects, np.ravel(weights)) if wt > 0.5]

    def _candidates(self, img: np.ndarray) -> list[tuple[int, int, int, int]]:
        h, w = img.shape[:2]
        regions = [(0, 0, w, h)]
        for x0, y0, x1, y1 in self._face_boxes(img):
            fw, fh = x1 - x0, y1 - y0  # a body below and around the face
            regions.append((x0 - 2.2 * fw, y0 - 0.8 * fh, x1 + 2.2 * fw, y1 + 7.5 * fh))
        # Overlapping square windows along the long side of wide/tall photos: the pose model
        # takes the most prominent person, so each window gives the others a chance.
        side = min(w, h)
        if max(w, h) > 1.3 * side:
            steps = int(np.ceil((max(w, h) - side) / (side / 2))) + 1
            for k in range(steps):
                offset = min(k * side / 2, max(w, h) - side)
                regions.append((offset, 0, offset + side, h) if w > h else (0, offset, w, offset + side))
        for x0, y0, x1, y1 in self._hog_boxes(img):
            pw, ph = (x1 - x0) * 0.25, (y1 - y0) * 0.1
            regions.append((x0 - pw, y0 - ph, x1 + pw, y1 + ph))
        clipped = []
        for x0, y0, x1, y1 in regions:
            box = (max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1)))
            if box[2] - box[0] >= 16 and box[3] - box[1] >= 16 and box not in clipped:
                clipped.append(box)
        return clipped

    # pose on one crop --------------------------------------------------------------------
    def _pose_in(self, img: np.ndarray, region) -> dict | None:
        import cv2

        x0, y0, x1, y1 = region
        crop = img[y0:y1, x0:x1]
        up = max(1.0, POSE_INPUT_SIDE / max(crop.shape[:2]))
        if up > 1.0:
            crop = cv2.resize(crop, (round(crop.shape[1] * up), round(crop.shape[0] * up)), interpolation=cv2.INTER_LINEAR)
        result = self.pose.detect(_mp_image(crop))
        if not result.pose_landmarks:
            return None
        ch, cw = crop.shape[:2]
        kp = np.array([[lm.x * cw / up + x0, lm.y * ch / up + y0, lm.visibility or 0.0] for lm in result.pose_landmarks[0]],
                      np.float32)
        prob = result.segmentation_masks[0].numpy_view()[..., 0] if result.segmentation_masks else None
        h, w = img.shape[:2]
        mask = np.zeros((h, w), bool)
        if prob is not None:
            small = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) if up > 1.0 else prob
            mask[y0:y1, x0:x1] = small > self.mask_threshold
            mask = _components_touching(mask, kp)
        visible = kp[kp[:, 2] >= VISIBLE]
        inside = visible[(visible[:, 0] >= 0) & (visible[:, 0] < w) & (visible[:, 1] >= 0) & (visible[:, 1] < h)]
        if not mask.any() and len(inside) < 3:
            return None
        xs = np.concatenate([np.nonzero(mask.any(0))[0], inside[:, 0]])
        ys = np.concatenate([np.nonzero(mask.any(1))[0], inside[:, 1]])
        box = [float(max(0, xs.min())), float(max(0, ys.min())), float(min(w, xs.max() + 1)), float(min(h, ys.max() + 1))]
        score = float(np.sort(kp[:, 2])[::-1][:16].mean())  # the 16 most visible landmarks
        # "clipped": the person runs into a crop edge that is not an image edge
        image_edges = (0, 0, w, h)
        clipped = any(abs(box[k] - region[k]) < 2 and region[k] != image_edges[k] for k in range(4))
        return {"box": box, "score": score, "mask": mask, "keypoints": kp, "clipped": clipped,
                "region_area": (x1 - x0) * (y1 - y0)}

    def _detect(self, img: np.ndarray) -> dict:
        found = [d for d in (self._pose_in(img, r) for r in self._candidates(img)) if d and d["score"] >= self.score_threshold]
        kept: list[dict] = []
        # Of the crops that saw one person, trust the tightest one that holds all of them:
        # the pose model is most accurate when the person fills its input.
        for det in sorted(found, key=lambda d: (d["clipped"], d["region_area"])):
            if not any(_same_person(det, k) for k in kept):
                kept.append(det)
        h, w = img.shape[:2]
        return {
            "boxes": np.array([k["box"] for k in kept], np.float32).reshape(-1, 4),
            "scores": np.array([k["score"] for k in kept], np.float32),
            "labels": [taxonomy.PERSON] * len(kept),
            "masks": np.stack([k["mask"] for k in kept]) if kept else np.zeros((0, h, w), bool),
            "keypoints": np.stack([k["keypoints"] for k in kept]) if kept else None,
        }


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
        faces = [read(k) for k in sorted(files) if k.startswith("face")]
        return PosePersonDetector(read("pose"), faces, score_threshold=spec.score_threshold,
                                  mask_threshold=spec.mask_threshold, use_hog=bool(spec.options.get("hog", True)))
    if spec.architecture == "pose_body_parts":
        return PoseBodyParts()
    return PoseGarmentRegions()
