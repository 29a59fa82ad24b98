"""BlazePose GHUM heavy (33 body landmarks + person mask), converted to ONNX: preprocess -> run -> postprocess.

- preprocess: a square view centred on a detected person (its long side plus a margin),
  resized to 256x256, RGB / 255 (parts of the view outside the image are black);
- run: onnxruntime, the persons of the actor's batch in batches of up to `max_batch`;
- postprocess: 39 x (x, y, z, visibility logit, presence logit) in input pixels, of which the
  first 33 are MediaPipe's body landmarks (the numbering bootstrap.py's parts use), mapped
  back to the image; visibility = sigmoid(logit), as MediaPipe reports it; the 256x256 person
  mask (probabilities) mapped back to the image; a pose flag (a person is there, 0..1).
"""

from __future__ import annotations

import numpy as np

from fashion_ray.models import onnx

INPUT_SIDE = 256
LANDMARKS = 33
MARGIN = 0.15  # of the box's long side, on each side: hands and feet past the detector's box


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def square_view(box, margin: float = MARGIN) -> tuple[float, float, float]:
    """(x0, y0, side) of the square the model looks at for a person box."""
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return cx - side / 2, cy - side / 2, max(side, 1.0)


def preprocess(image: np.ndarray, view: tuple[float, float, float]) -> np.ndarray:
    import cv2

    x0, y0, side = view
    k = INPUT_SIDE / side
    warp = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]], np.float32)
    crop = cv2.warpAffine(image, warp, (INPUT_SIDE, INPUT_SIDE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return (crop.astype(np.float32) / 255.0)[None]


def postprocess(landmarks: np.ndarray, mask: np.ndarray, flag: np.ndarray, view, height: int, width: int) -> dict:
    """Model outputs -> keypoints (33, 3: x, y, visibility) and mask probability in image pixels."""
    import cv2

    x0, y0, side = view
    k = side / INPUT_SIDE
    lm = landmarks.reshape(-1, 5)[:LANDMARKS]
    keypoints = np.stack([lm[:, 0] * k + x0, lm[:, 1] * k + y0, _sigmoid(lm[:, 3])], 1).astype(np.float32)
    # the view's mask pasted into the image: only the part of the view inside the image
    prob = np.zeros((height, width), np.float32)
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(width, int(np.ceil(x0 + side))), min(height, int(np.ceil(y0 + side)))
    if ix1 > ix0 and iy1 > iy0:
        s = INPUT_SIDE / side
        warp = np.array([[s, 0, (ix0 - x0) * s], [0, s, (iy0 - y0) * s]], np.float32)
        prob[iy0:iy1, ix0:ix1] = cv2.warpAffine(
            mask.reshape(INPUT_SIDE, INPUT_SIDE).astype(np.float32),
            warp,
            (ix1 - ix0, iy1 - iy0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        )
    return {"keypoints": keypoints, "mask_prob": prob, "pose_score": float(flag.reshape(-1)[0])}


class BlazePose:
    def __init__(self, model: bytes, *, max_batch: int = 8, device: str = "cpu", threads: int = 1):
        self.session = onnx.session(model, device, threads)
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        self.landmarks = next(n for n, s in shapes.items() if s[-1] == 39 * 5)
        self.mask = next(n for n, s in shapes.items() if len(s) == 4 and s[-1] == 1)
        self.flag = next(n for n, s in shapes.items() if len(s) == 2 and s[-1] == 1)
        self.max_batch = max(1, max_batch)

    def estimate(self, people: list[tuple[np.ndarray, list[float]]]) -> list[dict]:
        """Pose and mask for each (image, person box)."""
        found = []
        for start in range(0, len(people), self.max_batch):
            chunk = people[start : start + self.max_batch]
            views = [square_view(box) for _, box in chunk]
            out = onnx.run(
                self.session, np.concatenate([preprocess(image, view) for (image, _), view in zip(chunk, views)])
            )
            for k, ((image, _), view) in enumerate(zip(chunk, views)):
                h, w = image.shape[:2]
                found.append(postprocess(out[self.landmarks][k], out[self.mask][k], out[self.flag][k], view, h, w))
        return found


# a pose that makes sense, or none --------------------------------------------------------------

VISIBLE = 0.5
# bones (landmark pairs) and the most any can measure against the torso (shoulder centre to hip
# centre): an upper arm is ~0.6 of it, a thigh ~0.9; foreshortening only makes bones shorter
BONES = ((11, 13), (12, 14), (13, 15), (14, 16), (23, 25), (24, 26), (25, 27), (26, 28))
MAX_BONE_TO_TORSO = 1.6
MIN_SHOULDERS_TO_EYES = 2.0  # eyes ~6 cm apart, shoulders ~40 cm: a frontal face shows both
MIN_TORSO_TO_SHOULDERS = 0.4  # hips at the collar: a torso far shorter than the shoulders are wide


def collapsed_pose(kp: np.ndarray) -> str | None:
    """Why a pose (33 x (x, y, visibility)) cannot be a body, or None when it can.

    BlazePose on a face filling its view (a waist-up portrait) can fold the body onto the
    head: shoulders inside the face, hips at the collar. Landmarks from such a pose draw
    parts, gate garments and name actions wrongly, so the person keeps box and mask only.
    """
    seen = kp[:, 2] >= VISIBLE

    def both(a, b):
        return bool(seen[a] and seen[b])

    def dist(a, b):
        return float(np.linalg.norm(kp[a, :2] - kp[b, :2]))

    if both(11, 12) and both(2, 5) and dist(11, 12) < MIN_SHOULDERS_TO_EYES * dist(2, 5):
        return "shoulders inside the face"
    if not (both(11, 12) and both(23, 24)):
        return None
    shoulders, hips = kp[[11, 12], :2].mean(0), kp[[23, 24], :2].mean(0)
    torso = float(np.linalg.norm(hips - shoulders))
    if torso < MIN_TORSO_TO_SHOULDERS * dist(11, 12):
        return "hips at the shoulders"
    if seen[0] and kp[0, 1] < shoulders[1] and hips[1] < shoulders[1]:
        return "hips above the shoulders under an upright head"
    for a, b in BONES:
        if both(a, b) and dist(a, b) > MAX_BONE_TO_TORSO * torso:
            return "a limb longer than the body allows"
    return None
