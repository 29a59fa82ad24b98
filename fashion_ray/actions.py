"""Person-movement actions from pose and motion: the bootstrap labeller of AVA actions.

No trained model: one frame's 33-point pose (the person stage's MediaPipe-numbered keypoints)
decides the postures AVA annotates: stand, sit, bend/bow, crouch/kneel, lie/sleep. A track's
motion over its sampled frames (the box's foot point in body heights per second, from the
timestamps, less the camera's own motion) adds walk and run/jog, which replace stand; a
linked bag, suitcase or umbrella adds carry/hold. Scores are in 0..1 and multi-label as AVA
is, but the postures are exclusive in AVA, so they are scored so that at most one is high.
Everything else AVA lists (object manipulation, person interaction, dance, fall down, ...)
is beyond pose and motion: the rules never write it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fashion_ray.taxonomy import AVA_ACTION_ID

BEND, CROUCH, LIE = AVA_ACTION_ID["bend/bow (at the waist)"], AVA_ACTION_ID["crouch/kneel"], AVA_ACTION_ID["lie/sleep"]
RUN, SIT, STAND, WALK = AVA_ACTION_ID["run/jog"], AVA_ACTION_ID["sit"], AVA_ACTION_ID["stand"], AVA_ACTION_ID["walk"]
CARRY = AVA_ACTION_ID["carry/hold (an object)"]
POSTURES = (STAND, SIT, BEND, CROUCH, LIE)  # what one frame decides (single photos too)
RULE_ACTIONS = (*POSTURES, WALK, RUN, CARRY)  # everything the rules can write

# MediaPipe pose landmark pairs (left, right)
SHOULDERS, HIPS, KNEES, ANKLES = (11, 12), (23, 24), (25, 26), (27, 28)
# walking people move about 0.8 body heights a second (1.4 m/s), runners 1.8 and more
WALK_SPEED = (0.2, 0.4)  # body heights / s: walk ramps in between
RUN_SPEED = (1.5, 2.0)


def _ramp(x: float, zero: float, one: float) -> float:
    """0 at `zero`, 1 at `one`, linear between (either direction)."""
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _mid(points: np.ndarray, pair: tuple[int, int], min_visibility: float) -> np.ndarray | None:
    seen = [points[i, :2] for i in pair if points[i, 2] >= min_visibility]
    return np.mean(seen, axis=0) if seen else None


@dataclass(frozen=True)
class Skeleton:
    """Midpoints of the body's joints in image pixels (None where not visible)."""

    shoulder: np.ndarray | None
    hip: np.ndarray | None
    knee: np.ndarray | None
    ankle: np.ndarray | None

    @classmethod
    def from_keypoints(cls, keypoints, min_visibility: float = 0.5) -> "Skeleton":
        points = np.asarray(keypoints, np.float32).reshape(-1, 3)
        if len(points) < 33:
            return cls(None, None, None, None)
        return cls(*(_mid(points, pair, min_visibility) for pair in (SHOULDERS, HIPS, KNEES, ANKLES)))


def _angle(a: np.ndarray, at: np.ndarray, b: np.ndarray) -> float:
    """The angle a-at-b in degrees (180: a straight line)."""
    u, v = a - at, b - at
    cos = float(np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-6))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def posture_scores(keypoints, min_visibility: float = 0.5) -> dict[int, float]:
    """AVA posture scores {action id: 0..1} from one frame's keypoints; {} when the torso is
    not visible. Without visible knees only bend and lie can be told (a waist-up portrait
    could be standing or sitting)."""
    s = Skeleton.from_keypoints(keypoints, min_visibility)
    if s.shoulder is None or s.hip is None:
        return {}
    torso = s.shoulder - s.hip
    tilt = math.degrees(math.atan2(abs(float(torso[0])), -float(torso[1])))  # 0 upright, 90 horizontal
    lie = _ramp(tilt, 55, 75)
    upright = _ramp(tilt, 40, 20)
    scores = {LIE: lie}
    if s.knee is None:
        scores[BEND] = _ramp(tilt, 20, 40) * (1 - lie)
        return scores
    thigh = s.knee - s.hip
    # how much of the thigh points down: 1 standing, about 0 with the hips at knee height
    drop = float(thigh[1]) / max(float(np.linalg.norm(thigh)), 1e-6)
    knee = _angle(s.hip, s.knee, s.ankle) if s.ankle is not None else None
    straight = _ramp(knee, 130, 160) if knee is not None else _ramp(drop, 0.6, 0.85)
    scores[BEND] = _ramp(tilt, 20, 40) * (1 - lie) * straight
    scores[STAND] = upright * _ramp(drop, 0.6, 0.85) * straight
    folded = _ramp(knee, 70, 50) if knee is not None else 0.0  # knees folded tight: crouching or kneeling
    scores[CROUCH] = folded * (1 - lie)
    bent = (_ramp(knee, 55, 75) * _ramp(knee, 150, 130)) if knee is not None else 1.0
    scores[SIT] = upright * _ramp(drop, 0.6, 0.35) * bent * (1 - folded)
    return scores


def track_actions(times: list[float], boxes: list, keypoints: list, camera_motion: list | None = None,
                  carrying: list | None = None, window_s: float = 2.0) -> list[dict[int, float]]:
    """Action scores for each sampled frame of one person track.

    times: seconds; boxes: (x0, y0, x1, y1) in pixels; keypoints: the person's flat x, y,
    visibility lists; camera_motion: the scene's shift (dx, dy) in pixels since the previous
    frame (a panning camera moves everyone; that is not walking); carrying: a 0..1 score
    per frame that a bag, suitcase or umbrella is linked to the person. Speed at a frame is
    measured between the farthest frames within window_s around it (2 s: the neighbours at
    AVA's 1 Hz keyframes).
    """
    n = len(times)
    boxes = np.asarray(boxes, np.float64).reshape(n, 4)
    feet = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], 1)
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    shift = np.cumsum(np.asarray(camera_motion, np.float64).reshape(n, 2), 0) if camera_motion is not None else np.zeros((n, 2))
    out = []
    for i in range(n):
        scores = posture_scores(keypoints[i])
        near = [j for j in range(n) if abs(times[j] - times[i]) <= window_s / 2 + 1e-9]
        first, last = near[0], near[-1]
        if last > first and times[last] > times[first]:
            moved = (feet[last] - shift[last]) - (feet[first] - shift[first])  # in the scene, not the frame
            speed = float(np.linalg.norm(moved)) / float(np.mean(heights[first:last + 1])) / (times[last] - times[first])
            on_feet = 1 - max(scores.get(SIT, 0.0), scores.get(LIE, 0.0), scores.get(CROUCH, 0.0))
            if scores:
                run = _ramp(speed, *RUN_SPEED) * on_feet
                walk = _ramp(speed, *WALK_SPEED) * (1 - run) * on_feet
                scores[WALK], scores[RUN] = walk, run
                if STAND in scores:
                    scores[STAND] *= 1 - max(walk, run)
        if carrying is not None and carrying[i]:
            scores[CARRY] = float(carrying[i])
        out.append({k: round(v, 4) for k, v in scores.items() if v > 0})
    return out
