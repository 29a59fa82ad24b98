"""The bootstrap action rules on hand-made skeletons, and AVA's frame-mAP on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fashion_ray import actions, taxonomy
from fashion_ray.actions import BEND, CARRY, CROUCH, LIE, RUN, SIT, STAND, WALK
from fashion_ray.evaluation import ava_frame_map, average_precision


def skeleton(hip=(100.0, 200.0), torso_deg=0.0, thigh_deg=0.0, knee_deg=180.0, size=100.0, hidden=()) -> list[float]:
    """33 MediaPipe keypoints (flat x, y, visibility) of a side view: the torso tilted torso_deg
    from upright, the thigh thigh_deg from pointing straight down, the shin bent knee_deg at
    the knee (180: straight). size is the torso's length; a whole upright body is ~2.5 sizes."""
    def towards(origin, degrees_from_down, length):
        a = math.radians(degrees_from_down)
        return origin[0] + length * math.sin(a), origin[1] + length * math.cos(a)

    hip = np.asarray(hip)
    shoulder = towards(hip, 180 - torso_deg, size)  # upright: straight up from the hip
    knee = towards(hip, thigh_deg, 0.75 * size)
    ankle = towards(knee, thigh_deg - (180 - knee_deg), 0.75 * size)
    points = np.zeros((33, 3), np.float32)
    for ids, (x, y) in ((actions.SHOULDERS, shoulder), (actions.HIPS, hip), (actions.KNEES, knee), (actions.ANKLES, ankle)):
        for i in ids:
            points[i] = (x, y, 0.0 if i in hidden else 0.99)
    points[0] = (shoulder[0], shoulder[1] - 0.3 * size, 0.99)  # nose
    return points.ravel().tolist()


def best(scores: dict) -> int:
    return max(scores, key=scores.get)


def test_postures_of_one_frame():
    upright = actions.posture_scores(skeleton())
    assert best(upright) == STAND and upright[STAND] > 0.9 and upright.get(SIT, 0) < 0.1
    sitting = actions.posture_scores(skeleton(thigh_deg=90, knee_deg=90))  # hips at knee height, shins down
    assert best(sitting) == SIT and sitting[SIT] > 0.9 and sitting.get(STAND, 0) < 0.1
    bending = actions.posture_scores(skeleton(torso_deg=50))
    assert best(bending) == BEND and bending[BEND] > 0.9
    lying = actions.posture_scores(skeleton(torso_deg=90, thigh_deg=90))
    assert best(lying) == LIE and lying[LIE] > 0.9 and lying.get(STAND, 0) == 0
    crouching = actions.posture_scores(skeleton(thigh_deg=120, knee_deg=35, torso_deg=15))
    assert best(crouching) == CROUCH and crouching[CROUCH] > 0.9
    # a waist-up portrait: no knees, so neither stand nor sit is claimed
    portrait = actions.posture_scores(skeleton(hidden=(*actions.KNEES, *actions.ANKLES)))
    assert STAND not in portrait and SIT not in portrait
    assert actions.posture_scores([0.0] * 99) == {}  # nothing visible: nothing said


def _track(speed_bh_per_s: float, seconds: int = 4, camera=None):
    """An upright person whose box (250 px tall) moves sideways at speed body heights/s."""
    times = [float(t) for t in range(seconds)]
    boxes, points = [], []
    for t in times:
        x = 100 + speed_bh_per_s * 250 * t
        boxes.append((x - 40, 50, x + 40, 300))
        points.append(skeleton(hip=(x, 150)))
    return actions.track_actions(actions.Track(times, boxes, points, camera_motion=camera))


def test_motion_makes_walkers_and_runners():
    still = _track(0.0)
    assert all(best(f) == STAND and f.get(WALK, 0) == 0 for f in still)
    walking = _track(1.0)
    assert all(best(f) == WALK and f[WALK] > 0.9 and f.get(STAND, 0) < 0.1 for f in walking)
    running = _track(3.0)
    assert all(best(f) == RUN and f.get(STAND, 0) < 0.1 for f in running)
    # the camera pans with the walker: the scene does not move under her, so she stands
    panning = _track(1.0, camera=[(0, 0)] + [(250.0, 0.0)] * 3)
    assert all(best(f) == STAND and f.get(WALK, 0) < 0.1 for f in panning)


def test_sitting_people_do_not_walk_and_carry_comes_from_a_linked_bag():
    times = [0.0, 1.0, 2.0]
    boxes = [(100 + 250 * t, 50, 180 + 250 * t, 300) for t in times]  # a moving box, a seated pose (a wheelchair, a tram)
    sitting = [skeleton(hip=(140 + 250 * t, 200), thigh_deg=90, knee_deg=90) for t in times]
    frames = actions.track_actions(actions.Track(times, boxes, sitting, carrying=[0.0, 0.8, 0.8]))
    assert all(best(f) == SIT and f.get(WALK, 0) == 0 for f in frames)
    assert CARRY not in frames[0] and frames[1][CARRY] == 0.8
    assert set(actions.RULE_ACTIONS) <= set(taxonomy.AVA_ACTIONS)
    assert taxonomy.AVA_ACTIONS[STAND] == "stand" and taxonomy.AVA_ACTIONS[CARRY] == "carry/hold (an object)"


def test_average_precision_by_hand():
    # 2 positives; detections 0.9 (hit), 0.8 (miss), 0.7 (hit): P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1;
    # non-increasing precision 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3
    ap = average_precision(np.array([0.8, 0.9, 0.7]), np.array([False, True, True]), 2)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_frame_map_by_hand():
    gt = [("v1", 902, 0.1, 0.1, 0.4, 0.9, STAND), ("v1", 902, 0.6, 0.1, 0.9, 0.9, STAND),
          ("v1", 903, 0.1, 0.1, 0.4, 0.9, WALK), ("v1", 902, 0.6, 0.1, 0.9, 0.9, CARRY)]
    dt = [("v1", 902, 0.1, 0.12, 0.4, 0.9, STAND, 0.9),   # hit (IoU 0.93)
          ("v1", 902, 0.1, 0.1, 0.4, 0.9, STAND, 0.8),    # the same person again: its box is taken, a miss
          ("v1", 902, 0.6, 0.1, 0.9, 0.9, STAND, 0.7),    # hit
          ("v1", 904, 0.1, 0.1, 0.4, 0.9, WALK, 0.95),    # another keyframe: a miss
          ("v1", 903, 0.1, 0.1, 0.4, 0.9, WALK, 0.6),     # hit
          ("v1", 902, 0.6, 0.1, 0.78, 0.9, CARRY, 0.9)]   # IoU 0.6: a hit
    report = ava_frame_map(gt, dt)
    assert report["per_class_AP"][STAND] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert report["per_class_AP"][WALK] == pytest.approx(0.5)  # P = 0, 1/2 at R = 0, 1
    assert report["per_class_AP"][CARRY] == pytest.approx(1.0)
    assert report["frame_mAP"] == pytest.approx(((0.5 + 1 / 3) + 0.5 + 1.0) / 3)
    # classes named but without ground truth are not averaged; detections of them are ignored
    assert ava_frame_map(gt, dt, classes=(STAND, RUN))["per_class_AP"] == {STAND: pytest.approx(0.5 + 1 / 3)}
