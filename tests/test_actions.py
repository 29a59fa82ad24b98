"""Actions: the bootstrap rules on hand-made skeletons and tracks, the camera's pan, AVA CSV
lines and AVA labels matched to tracks, frame-mAP and the evaluate job on hand-computed cases,
and an action head that learns on Ray Train and replaces the rules in a labelling run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fashion_ray import actions, taxonomy
from fashion_ray.actions import BEND, CARRY, CROUCH, LIE, RUN, SIT, STAND, WALK
from fashion_ray.bench import synth
from fashion_ray.evaluation import ava_frame_map, average_precision, evaluate_actions
from fashion_ray.formats import ava
from fashion_ray.training import action_examples
from helpers import job_main


def skeleton(**kwargs) -> list[float]:
    return synth.side_view_keypoints(**kwargs)


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


def test_a_person_too_small_for_a_pose_walks_or_stands_by_the_box_alone():
    """25 px tall, no landmarks, filmed by a camera panning 30 px a second: the box's motion in
    the scene (the pan taken out) decides, scored NO_POSE_SCORE (0.7) at most, and no posture."""
    times = [0.0, 1.0, 2.0, 3.0]
    pan = [(0.0, 0.0)] + [(30.0, 0.0)] * 3  # the scene moves 30 px right in the image each second

    def small(scene_speed_px_s: float):
        boxes = [(100 + (30 + scene_speed_px_s) * t, 200, 110 + (30 + scene_speed_px_s) * t, 225) for t in times]
        return actions.track_actions(actions.Track(times, boxes, [None] * 4, camera_motion=pan))

    # 25 px a second in the scene: one body height a second, a walk (ramp 0.2-0.4: fully on)
    assert small(25.0) == [{WALK: 0.7, STAND: round(0.7 * 0.3, 4)}] * 4
    # still in the scene, though the pan moves the box 30 px a second in the image: standing
    assert small(0.0) == [{STAND: 0.7}] * 4
    # one frame of a person with no pose: nothing to say
    assert actions.track_actions(actions.Track([0.0], [(0, 0, 10, 25)], [None])) == [{}]


def test_sitting_people_do_not_walk_and_carry_comes_from_a_linked_bag():
    times = [0.0, 1.0, 2.0]
    boxes = [
        (100 + 250 * t, 50, 180 + 250 * t, 300) for t in times
    ]  # a moving box, a seated pose (a wheelchair, a tram)
    sitting = [skeleton(hip=(140 + 250 * t, 200), thigh_deg=90, knee_deg=90) for t in times]
    frames = actions.track_actions(actions.Track(times, boxes, sitting, carrying=[0.0, 0.8, 0.8]))
    assert all(best(f) == SIT and f.get(WALK, 0) == 0 for f in frames)
    assert CARRY not in frames[0] and frames[1][CARRY] == 0.8
    # a bag counts as carried when a visible wrist reaches it
    points = np.asarray(skeleton()).reshape(33, 3)
    points[actions.WRISTS[0]] = (100, 210, 0.9)
    person = {
        "box": [60.0, 40.0, 140.0, 360.0],
        "keypoints": points.ravel().tolist(),
        "garments": [
            {"category": "bag", "score": 0.7, "box": [105.0, 200.0, 140.0, 250.0]},  # 5 px from the hand: reached
            {"category": "backpack", "score": 0.9, "box": [90.0, 200.0, 140.0, 250.0]},  # worn, not held
            {"category": "umbrella", "score": 0.95, "box": [0.0, 0.0, 40.0, 30.0]},
        ],
    }  # far from the hand
    assert actions.carrying_score(person) == 0.7
    points[actions.WRISTS[0], 2] = 0.1  # the hand not seen: nothing is said
    assert actions.carrying_score(dict(person, keypoints=points.ravel().tolist())) == 0.0
    assert set(actions.RULE_ACTIONS) <= set(taxonomy.AVA_ACTIONS)
    assert taxonomy.AVA_ACTIONS[STAND] == "stand" and taxonomy.AVA_ACTIONS[CARRY] == "carry/hold (an object)"


def test_average_precision_by_hand():
    # 2 positives; detections 0.9 (hit), 0.8 (miss), 0.7 (hit): P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1;
    # non-increasing precision 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3
    ap = average_precision(np.array([0.8, 0.9, 0.7]), np.array([False, True, True]), 2)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_frame_map_by_hand():
    gt = [
        ("v1", 902, 0.1, 0.1, 0.4, 0.9, STAND),
        ("v1", 902, 0.6, 0.1, 0.9, 0.9, STAND),
        ("v1", 903, 0.1, 0.1, 0.4, 0.9, WALK),
        ("v1", 902, 0.6, 0.1, 0.9, 0.9, CARRY),
    ]
    dt = [
        ("v1", 902, 0.1, 0.12, 0.4, 0.9, STAND, 0.9),  # hit (IoU 0.93)
        ("v1", 902, 0.1, 0.1, 0.4, 0.9, STAND, 0.8),  # the same person again: its box is taken, a miss
        ("v1", 902, 0.6, 0.1, 0.9, 0.9, STAND, 0.7),  # hit
        ("v1", 904, 0.1, 0.1, 0.4, 0.9, WALK, 0.95),  # another keyframe: a miss
        ("v1", 903, 0.1, 0.1, 0.4, 0.9, WALK, 0.6),  # hit
        ("v1", 902, 0.6, 0.1, 0.78, 0.9, CARRY, 0.9),
    ]  # IoU 0.6: a hit
    report = ava_frame_map(gt, dt)
    assert report["per_class_AP"][STAND] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert report["per_class_AP"][WALK] == pytest.approx(0.5)  # P = 0, 1/2 at R = 0, 1
    assert report["per_class_AP"][CARRY] == pytest.approx(1.0)
    assert report["frame_mAP"] == pytest.approx(((0.5 + 1 / 3) + 0.5 + 1.0) / 3)
    # classes named but without ground truth are not averaged; detections of them are ignored
    assert ava_frame_map(gt, dt, classes=(STAND, RUN))["per_class_AP"] == {STAND: pytest.approx(0.5 + 1 / 3)}


def test_only_detections_at_keyframes_are_scored():
    # a video sampled at 3 fps against keyframes at whole seconds: the frames between them are not scored
    a, b = (0.1, 0.1, 0.4, 0.9), (0.6, 0.1, 0.9, 0.9)
    gt = [ava.AvaLine("v", 1.0, a, WALK, 1), ava.AvaLine("v", 2.0, a, WALK, 1)]
    dt = [
        ava.AvaLine("v", 1.002, a, WALK, 0.9),  # at keyframe 1 (a presentation time): a hit
        ava.AvaLine("v", 1.333, b, WALK, 0.95),  # between keyframes: not scored
        ava.AvaLine("v", 2.0, b, WALK, 0.8),  # at keyframe 2, nobody there: a false positive
        ava.AvaLine("v", 2.0, a, WALK, 0.7),  # a hit
        ava.AvaLine("x", 1.0, a, WALK, 0.99),  # a video the ground truth does not label: not scored
    ]
    # hit, miss, hit of 2: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert evaluate_actions(gt, dt)["per_class"]["walk"]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ava_csv_lines_are_avas_detection_format_and_parse_back():
    row = {
        "uri": "s3://b/clips/shop_cam.mp4",
        "frame_index": 30,
        "timestamp_s": 2.0,
        "status": "ok",
        "width": 200,
        "height": 100,
        "persons": [
            {
                "track_id": 3,
                "box": [20.0, 10.0, 120.0, 90.0],
                "actions": [
                    {"action_id": WALK, "action": "walk", "score": 0.91},
                    {"action_id": CARRY, "action": "carry/hold (an object)", "score": 0.5},
                ],
            },
            {"track_id": 4, "box": [0.0, 0.0, 10.0, 10.0], "actions": []},
        ],
    }  # a person with no action: no line
    photo = dict(row, frame_index=None, timestamp_s=None)  # photos are not AVA lines (Parquet has their actions)
    text = ava.to_csv(ava.ava_rows([row, photo, dict(row, timestamp_s=2.5)])).decode()
    assert text.splitlines()[:2] == [
        "shop_cam,2,0.1000,0.1000,0.6000,0.9000,14,0.9100",
        "shop_cam,2,0.1000,0.1000,0.6000,0.9000,17,0.5000",
    ]
    lines = ava.read_csv(text)
    assert [(x.video_id, x.timestamp, x.action_id, x.value) for x in lines] == [
        ("shop_cam", 2.0, WALK, 0.91),
        ("shop_cam", 2.0, CARRY, 0.5),
        ("shop_cam", 2.5, WALK, 0.91),
        ("shop_cam", 2.5, CARRY, 0.5),
    ]
    assert lines[0].box == (0.1, 0.1, 0.6, 0.9)
    # AVA's ground truth: the person id in the last column; a line without an action is a box only
    truth = ava.read_csv("-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n-5KQ66BBWC4,0902,0.1,0.1,0.2,0.2,,2\n")
    assert [(x.video_id, x.timestamp, x.action_id, x.value) for x in truth] == [("-5KQ66BBWC4", 902.0, 80, 1.0)]
    with pytest.raises(ava.AvaFormatError, match="line 1: 3 columns, AVA has 7 or 8"):
        ava.read_csv("a,b,c\n")


def _frame(t: float, persons: list[tuple[int, list[float]]], shift=None) -> dict:
    return {
        "uri": "/videos/clip.mp4",
        "status": "ok",
        "frame_index": int(t * 30),
        "timestamp_s": t,
        "width": 100,
        "height": 100,
        "camera_shift": shift,
        "persons": [
            {
                "track_id": tid,
                "box": box,
                "keypoints": skeleton(hip=((box[0] + box[2]) / 2, box[1] + 40)),
                "garments": [],
            }
            for tid, box in persons
        ],
    }


def test_ava_labels_become_examples_of_the_matching_track():
    # two tracks over 6 frames; AVA labels person 7 (walk + carry) at 902 s and a person nobody
    # detected at 903 s; the frame nearest 902 is 902.002 (a 29.97 fps video)
    frames = [
        _frame(900.002 + k, [(1, [10 + 5 * k, 10, 30 + 5 * k, 90]), (2, [60, 10, 80, 90])], shift=[1.0, 0.0])
        for k in range(6)
    ]
    truth = [
        ava.AvaLine("clip", 902.0, (0.2, 0.1, 0.4, 0.9), WALK, 7),
        ava.AvaLine("clip", 902.0, (0.2, 0.1, 0.4, 0.9), CARRY, 7),
        ava.AvaLine("clip", 903.0, (0.0, 0.0, 0.05, 0.05), STAND, 8),
        ava.AvaLine("clip", 950.0, (0.2, 0.1, 0.4, 0.9), SIT, 9),
    ]
    examples, stats = action_examples.examples_from_run(truth, frames)
    assert stats == {"labelled_persons": 3, "matched": 1, "no_frame": 1, "no_person": 1}
    (example,) = examples
    assert example["action_ids"] == [WALK, CARRY] and example["timestamp_s"] == 902.0
    # the window: the track's frames within 2.5 s of the keyframe, which is frame 2 of them
    assert example["times"] == pytest.approx([900.002, 901.002, 902.002, 903.002, 904.002]) and example["at"] == 2
    assert example["boxes"][2] == [20.0, 10.0, 40.0, 90.0] and example["camera_motion"][1:] == [[1.0, 0.0]] * 4
    track, at = action_examples.example_track(example)
    features = actions.window_features(track, at).reshape(len(actions.WINDOW_OFFSETS_S), -1)
    # slot 3 (+1 s): present, the feet 5 px right in the frame less the camera's 1 px, in 80 px body heights
    assert features[3, :4] == pytest.approx([1.0, 4 / 80, 0.0, 0.0])


def test_evaluate_actions_job_by_hand(tmp_path, capsys):
    # two photos: a walker found and called walk (0.8) over stand (0.3); a stander called walk
    gt = tmp_path / "gt.csv"
    gt.write_text("p1,0,0.1,0.1,0.5,0.9,14,1\np2,0,0.5,0.1,0.9,0.9,12,1\n")
    dt = tmp_path / "dt.csv"
    dt.write_text("p1,0,0.1,0.1,0.5,0.88,14,0.8\np1,0,0.1,0.1,0.5,0.88,12,0.3\np2,0,0.5,0.1,0.9,0.9,14,0.6\n")
    assert (
        job_main(
            "evaluate",
            "--mode",
            "actions",
            "--predictions",
            str(dt),
            "--ground-truth",
            str(gt),
            "--out",
            str(tmp_path / "eval"),
        )
        == 0
    )
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    # walk: 0.8 hit, 0.6 miss -> AP 1; stand: 0.3 on the wrong person -> AP 0; precision at 0.5: walk 1/2
    assert report["per_class"]["walk"]["ap"] == 1.0 and report["per_class"]["stand"]["ap"] == 0.0
    assert report["frame_mAP"] == 0.5
    assert (report["per_class"]["walk"]["precision"], report["per_class"]["walk"]["recall"]) == (0.5, 1.0)
    assert report["single_label"] == {
        "matched_persons": 2,
        "accuracy": 0.5,
        "confusion": {"stand -> walk": 1, "walk -> walk": 1},
    }
    assert "frame-mAP at IoU 0.5: **0.500**" in capsys.readouterr().out
    assert (
        job_main(
            "evaluate", "--mode", "actions", "--predictions", str(dt), "--ground-truth", str(tmp_path / "missing.csv")
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_action_head_learns_on_ray_train_and_replaces_the_rules(ray_session, tmp_path):
    # made-up tracks (stand / walk / sit / bend, half under a panning camera) -> a head trained by
    # Ray Train (2 gloo workers, on the tests' Ray) -> a bundle whose actions stage is the head
    data = tmp_path / "examples.parquet"
    assert job_main("make_synthetic", "--kind", "actions", "--count", "600", "--output", str(data)) == 0
    out = tmp_path / "actions-v1"
    assert (
        job_main(
            "train",
            "--task",
            "actions",
            "--data",
            str(data),
            "--output",
            str(out),
            "--workers",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--steps",
            "400",
            "--batch-size",
            "32",
            "--lr",
            "0.1",
            "--warmup-steps",
            "10",
            "--checkpoint-every",
            "250",
            "--val-samples",
            "80",
            "--storage",
            str(tmp_path / "runs"),
        )
        == 0
    )
    metrics = json.loads((out / "training.json").read_text())["metrics"]
    # held-out mAP over the four actions, against the untrained head's on the same examples
    assert metrics["val_metric"] > max(0.7, metrics["val_initial"] + 0.3), metrics
    from fashion_ray.config import Device
    from fashion_ray.models import build_stage_predictor, load_bundle
    from fashion_ray.stages import ActionsStage, persons_column
    from fashion_ray.video import tracking

    bundle = load_bundle(str(out))
    head = bundle.stages["actions"]
    assert head.architecture == "pose_window_mlp" and set(head.classes) == set(synth.SYNTH_ACTIONS)
    assert set(bundle.stages) == set(taxonomy.STAGES)  # the base bundle's person, clothing, parts

    # the labelling job's actions stage, built from the published bundle, on a photo's persons:
    # the head's classes with its scores, not the rules'
    stage = ActionsStage(str(out), Device(), batch_size=4, emit_image=False, score_threshold=0.0)
    upright = {"box": [60.0, 70.0, 140.0, 340.0], "keypoints": skeleton(), "garments": []}
    seated = {"box": [60.0, 70.0, 140.0, 260.0], "keypoints": skeleton(thigh_deg=90, knee_deg=90), "garments": []}
    batch = stage(
        {
            "status": np.array(["ok"], dtype=object),
            "error": np.array([""], dtype=object),
            "error_detail": np.array([""], dtype=object),
            "persons": persons_column([[upright, seated]]),
        }
    )
    labelled = batch["persons"][0].items
    assert all({a["action"] for a in p["actions"]} == set(synth.SYNTH_ACTIONS) for p in labelled)
    assert labelled[1]["actions"][0]["action"] == "sit"  # one frame tells sitting (standing from walking it cannot)
    # and the track pass: a track walking 1 body height a second under a still camera
    frames = [
        {
            "timestamp_s": float(t),
            "camera_shift": [0.0, 0.0],
            "persons": [
                {
                    "track_id": 1,
                    "box": [100 + 270 * t, 70.0, 180 + 270 * t, 340.0],
                    "keypoints": skeleton(hip=(140 + 270 * t, 200)),
                    "garments": [],
                }
            ],
        }
        for t in range(5)
    ]
    tracking.label_track_actions(frames, build_stage_predictor(bundle, "actions", Device()), 0.0)
    assert frames[2]["persons"][0]["actions"][0]["action"] == "walk"


def test_a_bundle_without_an_actions_stage_gets_the_rules(tmp_path):

    from fashion_ray.models.bundle import ACTION_RULES, load_bundle

    bootstrap = load_bundle("bootstrap")
    assert bootstrap.stages["actions"] == ACTION_RULES  # bundle.json and the default agree
    person = bootstrap.stages["person"].as_manifest()
    (tmp_path / "bundle.json").write_text(
        json.dumps(
            {
                "format": "fashion-ray-bundle/1",
                "name": "old",
                "version": "1.0",
                "stages": {"person": person | {"classes": list(person["classes"])}},
            }
        )
    )
    assert load_bundle(str(tmp_path)).stages["actions"] == ACTION_RULES


def test_camera_shift_is_the_scenes_pan_and_zero_when_the_border_stands_still():
    from fashion_ray.video import motion

    rng = np.random.default_rng(0)
    scene = np.repeat(np.repeat(rng.integers(0, 256, (75, 300, 3), dtype=np.uint8), 4, 0), 4, 1)  # 4 px texture
    panning = [np.ascontiguousarray(scene[:, 30 * k : 30 * k + 400]) for k in range(4)]  # the camera turns right 30 px
    shifts = motion.camera_shifts(panning)
    assert shifts[0] is None and all(
        dx == pytest.approx(-30, abs=1) and dy == pytest.approx(0, abs=1) for dx, dy in shifts[1:]
    )
    # a textured person crossing a plain wall: the frame's edges do not change, the camera stood still
    crossing = []
    for k in range(4):
        frame = np.full((300, 400, 3), 120, np.uint8)
        frame[100:220, 60 + 50 * k : 140 + 50 * k] = scene[:120, :80]
        crossing.append(frame)
    assert motion.camera_shifts(crossing)[1:] == [(0.0, 0.0)] * 3


def test_action_videos_draw_people_at_the_asked_heights(tmp_path, capsys):
    """make_action_videos.py --person-heights: street walkers too small for a pose, with their
    ground truth; a height range that cannot fit is a one-line error."""
    from fashion_ray.bench import action_videos

    lines = action_videos.make_action_video(
        str(tmp_path / "v.mp4"),
        "v",
        action_videos.bundled_people(),
        3,
        panning=True,
        duration_s=3.0,
        person_heights=(20, 30),
    )
    assert (tmp_path / "v.mp4").stat().st_size > 0 and {line[1] for line in lines} == {1, 2}
    heights = [(float(line[5]) - float(line[3])) * 360 for line in lines]  # normalised y1 - y0, 360 px high
    assert heights and all(h <= 31 for h in heights), heights
    assert job_main("make_action_videos", "--out", str(tmp_path / "o"), "--person-heights", "30,20") == 2
    assert capsys.readouterr().err.strip().startswith("error: --person-heights takes min,max pixels")
