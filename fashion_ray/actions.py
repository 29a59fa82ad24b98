"""Person-movement actions from pose and motion: the bootstrap labeller of AVA actions.

No trained model: one frame's 33-point pose (the person stage's MediaPipe-numbered keypoints)
decides the postures AVA annotates: stand, sit, bend/bow, crouch/kneel, lie/sleep. A track's
motion over its sampled frames (the box's foot point in body heights per second, from the
timestamps, less the camera's own motion) adds walk and run/jog, which replace stand; a
linked bag, suitcase or umbrella within reach of a visible wrist adds carry/hold. A single
photo has no motion: there a wide stride (ankles far apart) is the one sign of walking (on
Penn-Fudan it finds a third of the walkers and calls 2 of 43 standing people walkers;
docs/cascade.md, "Actions"). Scores are in 0..1 and multi-label as AVA is, but the postures are
exclusive in AVA, so they are scored so that at most one is high.
Everything else AVA lists (object manipulation, person interaction, dance, fall down, ...)
is beyond pose and motion: the rules never write it.

`window_features` is what a trained action head sees instead (models/actions.py): the
track's pose and scene motion in a window of seconds around a keyframe, in units of the
person's height, the same function at training and labelling time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fashion_ray.taxonomy import AVA_ACTION_ID, AVA_ACTIONS

BEND, CROUCH, LIE = AVA_ACTION_ID["bend/bow (at the waist)"], AVA_ACTION_ID["crouch/kneel"], AVA_ACTION_ID["lie/sleep"]
RUN, SIT, STAND, WALK = AVA_ACTION_ID["run/jog"], AVA_ACTION_ID["sit"], AVA_ACTION_ID["stand"], AVA_ACTION_ID["walk"]
CARRY = AVA_ACTION_ID["carry/hold (an object)"]
POSTURES = (STAND, SIT, BEND, CROUCH, LIE)  # what one frame decides (single photos too)
RULE_ACTIONS = (*POSTURES, WALK, RUN, CARRY)  # everything the rules can write

# accessories whose link to a person says carry/hold (a backpack or tie is worn, not held)
CARRIED = ("bag", "suitcase", "umbrella")

# MediaPipe pose landmark pairs (left, right)
SHOULDERS, HIPS, KNEES, ANKLES, WRISTS = (11, 12), (23, 24), (25, 26), (27, 28), (15, 16)
# walking people move about 0.8 body heights a second (1.4 m/s), runners 1.8 and more
WALK_SPEED = (0.2, 0.4)  # body heights / s: walk ramps in between
RUN_SPEED = (1.5, 2.0)
# the score of walk, run or stand read from a track's box alone (no landmarks): above the rules'
# default threshold (0.5), below what a pose that agrees gives
NO_POSE_SCORE = 0.7
# ankles this far apart (in body heights) in one frame: mid-stride, walking (Penn-Fudan: the
# 75th percentile of standing people is 0.13, of walkers 0.26)
STRIDE = (0.15, 0.22)


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
        points = np.asarray(keypoints if keypoints is not None else [], np.float32).reshape(-1, 3)
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


def stride_score(keypoints, height: float, min_visibility: float = 0.5) -> float:
    """0..1: how wide apart the ankles are, STRIDE in body heights (0 unless both are seen)."""
    points = np.asarray(keypoints if keypoints is not None else [], np.float32).reshape(-1, 3)
    if len(points) < 33 or min(points[ANKLES[0], 2], points[ANKLES[1], 2]) < min_visibility:
        return 0.0
    return _ramp(abs(float(points[ANKLES[0], 0] - points[ANKLES[1], 0])) / max(height, 1.0), *STRIDE)


def track_actions(track: "Track", window_s: float = 2.0) -> list[dict[int, float]]:
    """Action scores for each sampled frame of one person track (a photo: one frame).

    Speed at a frame is the foot point's movement in the scene (the camera's own motion
    taken out: a panning camera moves everyone, which is not walking) between the farthest
    frames within window_s around it (2 s: the neighbours at AVA's 1 Hz keyframes), in
    body heights per second. Without a second frame in the window (a photo), a wide stride
    is walk. A person with no pose (too small for landmarks) gets walk, run or stand from the
    box's motion alone, scored NO_POSE_SCORE at most. `track.carrying` (carrying_score) is
    carry/hold.
    """
    times, n = track.times, len(track.times)
    boxes = np.asarray(track.boxes, np.float64).reshape(n, 4)
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    feet = scene_positions(track)
    out = []
    for i in range(n):
        scores = posture_scores(track.keypoints[i])
        posed = bool(scores)
        near = [j for j in range(n) if abs(times[j] - times[i]) <= window_s / 2 + 1e-9]
        first, last = near[0], near[-1]
        on_feet = 1 - max(scores.get(SIT, 0.0), scores.get(LIE, 0.0), scores.get(CROUCH, 0.0))
        if last > first and times[last] > times[first]:
            speed = (
                float(np.linalg.norm(feet[last] - feet[first]))
                / float(np.mean(heights[first : last + 1]))
                / (times[last] - times[first])
            )
            # without a pose (a person too small or too hidden for landmarks) the box alone
            # says it: it moves through the scene (walk, run) or it does not (stand); no posture
            weight = 1.0 if posed else NO_POSE_SCORE
            if not posed:
                scores[STAND] = NO_POSE_SCORE
            run = _ramp(speed, *RUN_SPEED) * on_feet
            scores[WALK], scores[RUN] = _ramp(speed, *WALK_SPEED) * (1 - run) * on_feet * weight, run * weight
        elif STAND in scores:  # one frame: only a stride says walking
            scores[WALK] = stride_score(track.keypoints[i], heights[i]) * on_feet
        if STAND in scores:
            scores[STAND] *= 1 - max(scores.get(WALK, 0.0), scores.get(RUN, 0.0))
        if track.carrying is not None and track.carrying[i]:
            scores[CARRY] = float(track.carrying[i])
        out.append({k: round(v, 4) for k, v in scores.items() if v > 0})
    return out


def carrying_score(person: dict, min_visibility: float = 0.5) -> float:
    """How surely the person holds something: the best score of a bag, suitcase or umbrella
    linked to them (stages.link_accessories, or the garment parser's bag) that one of their
    visible wrists reaches (its box grown by a tenth of the person's height). Without a hand
    in view nothing is said: a bag beside a waist-up portrait is not in anybody's hand."""
    points = np.asarray(person.get("keypoints") or [], np.float32).reshape(-1, 3)
    if len(points) < 33:
        return 0.0
    wrists = [points[i, :2] for i in WRISTS if points[i, 2] >= min_visibility]
    reach = 0.1 * (person["box"][3] - person["box"][1])
    best = 0.0
    for g in person.get("garments") or []:
        x0, y0, x1, y1 = g["box"]
        if g["category"] in CARRIED and any(
            x0 - reach <= x <= x1 + reach and y0 - reach <= y <= y1 + reach for x, y in wrists
        ):
            best = max(best, float(g["score"]))
    return best


def as_records(scores: dict[int, float], threshold: float) -> list[dict]:
    """{action id: score} -> the rows' `actions` list, best first, those at or over threshold."""
    return [
        {"action_id": k, "action": AVA_ACTIONS[k], "score": float(v)}
        for k, v in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        if v >= threshold and v > 0
    ]


@dataclass
class Track:
    """One person over a video's sampled frames (a photo: a track of one frame)."""

    times: list[float]
    boxes: list  # (x0, y0, x1, y1) px
    keypoints: list  # flat x, y, visibility lists, or None where the person has no pose
    camera_motion: list | None = None  # (dx, dy) px the scene moved since the previous frame
    carrying: list | None = None  # 0..1 per frame (carrying_score)

    @classmethod
    def of_persons(cls, times: list[float], persons: list[dict], camera_motion=None) -> "Track":
        return cls(
            times,
            [p["box"] for p in persons],
            [p.get("keypoints") for p in persons],
            camera_motion,
            [carrying_score(p) for p in persons],
        )


# the action head's window: the track at these offsets (s) from a keyframe, AVA's 1 Hz keyframes around it
WINDOW_OFFSETS_S = (-2.0, -1.0, 0.0, 1.0, 2.0)
SLOT_FEATURES = 4 + 33 * 3  # present, scene motion dx dy, log height ratio; 33 x (x, y, visibility)
# MediaPipe's left/right landmark pairs: a mirrored track swaps them (training augmentation)
MIRROR = np.array(
    [
        0,
        4,
        5,
        6,
        1,
        2,
        3,
        8,
        7,
        10,
        9,
        12,
        11,
        14,
        13,
        16,
        15,
        18,
        17,
        20,
        19,
        22,
        21,
        24,
        23,
        26,
        25,
        28,
        27,
        30,
        29,
        32,
        31,
    ]
)


def scene_positions(track: Track) -> np.ndarray:
    """Each frame's foot point (box bottom centre) in the scene's coordinates: the camera's
    accumulated motion taken out."""
    n = len(track.times)
    boxes = np.asarray(track.boxes, np.float64).reshape(n, 4)
    feet = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], 1)
    if track.camera_motion is None:
        return feet
    return feet - np.cumsum(np.asarray(track.camera_motion, np.float64).reshape(n, 2), 0)


def window_features(track: Track, at: int, mirror: bool = False) -> np.ndarray:
    """The head's input for frame `at`: one slot per WINDOW_OFFSETS_S, the track's frame
    nearest that time (within half a second) or zeros where it has none. Positions are in
    the keyframe person's heights, keypoints relative to each frame's own box."""
    boxes = np.asarray(track.boxes, np.float64).reshape(-1, 4)
    feet = scene_positions(track)
    times = np.asarray(track.times, np.float64)
    height = max(boxes[at, 3] - boxes[at, 1], 1.0)
    sign = -1.0 if mirror else 1.0
    out = np.zeros((len(WINDOW_OFFSETS_S), SLOT_FEATURES), np.float32)
    for slot, offset in enumerate(WINDOW_OFFSETS_S):
        gaps = np.abs(times - (times[at] + offset))
        j = int(np.argmin(gaps))
        if gaps[j] > 0.5 + 1e-6:
            continue
        h = max(boxes[j, 3] - boxes[j, 1], 1.0)
        dx, dy = (feet[j] - feet[at]) / height
        out[slot, :4] = (1.0, sign * dx, dy, math.log(h / height))
        if track.keypoints[j] is not None and len(track.keypoints[j]) >= 99:
            points = np.asarray(track.keypoints[j], np.float64).reshape(-1, 3)[:33]
            if mirror:
                points = points[MIRROR]
            cx = (boxes[j, 0] + boxes[j, 2]) / 2
            out[slot, 4:] = np.stack(
                [sign * (points[:, 0] - cx) / h, (points[:, 1] - boxes[j, 1]) / h, points[:, 2]], 1
            ).ravel()
    return out.ravel()
