"""Training examples for the actions head: AVA's labelled persons matched to the tracks of a
labelling run of AVA's videos, one example per labelled person and keyframe holding the
track's window around it (formats/ava.py EXAMPLE_SCHEMA). Videos are split train/val by a
hash of their id, so a video never lands on both sides."""

from __future__ import annotations

import hashlib

import numpy as np

from fashion_ray import storage
from fashion_ray.actions import Track
from fashion_ray.boxes import box_iou
from fashion_ray.formats import ava
from fashion_ray.formats.shards import iter_shard_rows, read_manifest
from fashion_ray.video.tracking import person_tracks


def video_split(video_id: str, val_fraction: float = 0.2) -> str:
    digest = int(hashlib.sha1(video_id.encode()).hexdigest()[:8], 16)
    return "val" if digest / 2**32 < val_fraction else "train"


def example_record(example_id: int, video_id: str, timestamp: float, action_ids, track, at: int, split: str) -> dict:
    """One example row from an actions.Track cut to ava.WINDOW_S around frame `at`."""
    keep = [j for j, t in enumerate(track.times) if abs(t - track.times[at]) <= ava.WINDOW_S + 1e-6]
    motion = track.camera_motion or [[0.0, 0.0]] * len(track.times)
    return {
        "example_id": example_id,
        "video_id": video_id,
        "timestamp_s": float(timestamp),
        "split": split,
        "action_ids": sorted(int(a) for a in action_ids),
        "at": keep.index(at),
        "times": [float(track.times[j]) for j in keep],
        "boxes": [list(map(float, track.boxes[j])) for j in keep],
        "keypoints": [track.keypoints[j] for j in keep],
        "camera_motion": [[0.0, 0.0]] + [list(map(float, motion[j])) for j in keep[1:]],
    }


def example_track(row: dict):
    """An example row back as (actions.Track, keyframe index)."""
    return Track(list(row["times"]), list(row["boxes"]), list(row["keypoints"]), list(row["camera_motion"])), int(
        row["at"]
    )


def examples_from_run(
    ground_truth: list[ava.AvaLine], rows: list[dict], *, iou: float = 0.5, tolerance_s: float = 0.25
) -> tuple[list[dict], dict]:
    """Match AVA's labelled persons to a labelling run's tracks at each keyframe.

    rows: the run's Parquet rows of the AVA videos (tracked, 1 fps at AVA's keyframes). A
    labelled person at (video, keyframe) is matched to the frame nearest the keyframe (within
    tolerance_s) and there to the tracked person whose box overlaps it most (IoU >= iou, a
    person matched once); the example is that person's track around the frame, labelled with
    every action AVA gives the person. Returns the examples and what could not be matched.
    """
    labelled: dict[str, dict[float, dict[float, set]]] = {}  # video -> keyframe -> person id -> {(box, action)}
    for g in ground_truth:
        labelled.setdefault(g.video_id, {}).setdefault(g.timestamp, {}).setdefault(g.value, set()).add(
            (g.box, g.action_id)
        )
    videos: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["frame_index"] is not None and r["timestamp_s"] is not None:
            videos.setdefault(ava.video_id_of(r["uri"]), []).append(r)
    stats = {"labelled_persons": 0, "matched": 0, "no_frame": 0, "no_person": 0}
    examples = []
    for video_id in sorted(videos):
        frames = sorted(videos[video_id], key=lambda r: r["timestamp_s"])
        tracks = person_tracks(frames)
        times = np.array([r["timestamp_s"] for r in frames])
        for keyframe, persons in sorted(labelled.get(video_id, {}).items()):
            stats["labelled_persons"] += len(persons)
            k = int(np.argmin(np.abs(times - keyframe)))
            if abs(times[k] - keyframe) > tolerance_s:
                stats["no_frame"] += len(persons)
                continue
            frame = frames[k]
            w, h = frame["width"], frame["height"]
            taken = set()
            for person_id, labels in sorted(persons.items()):
                box = next(iter(labels))[0]
                gt_box = [box[0] * w, box[1] * h, box[2] * w, box[3] * h]
                overlaps = [  # the tracked persons: a candidate under the threshold has no track
                    (box_iou(gt_box, p["box"]), j)
                    for j, p in enumerate(frame["persons"])
                    if j not in taken and p.get("track_id") is not None
                ]
                best = max(overlaps, default=(0.0, -1))
                if best[0] < iou:
                    stats["no_person"] += 1
                    continue
                taken.add(best[1])
                matched = tracks[frame["persons"][best[1]]["track_id"]]
                examples.append(
                    example_record(
                        len(examples),
                        video_id,
                        keyframe,
                        {a for _, a in labels},
                        matched.track,
                        matched.frames.index(k),
                        video_split(video_id),
                    )
                )
                stats["matched"] += 1
    return examples, stats


def ava_examples(ava_csv: str, labels_uri: str, options=None) -> tuple[list[dict], dict]:
    """AVA's labels (ava_train_v2.2.csv, ...) matched to a labelling run of AVA's videos
    (tracks at 1 fps): action examples for `jobs/train.py --task actions` (EXAMPLE_SCHEMA)."""
    fs, path = storage.filesystem(ava_csv, options)
    ground_truth = ava.read_csv(fs.cat_file(path), ava_csv)
    wanted = {g.video_id for g in ground_truth}
    rows = [
        r
        for shard in iter_shard_rows(labels_uri, read_manifest(labels_uri, options), options)
        for r in shard
        if ava.video_id_of(r["uri"]) in wanted
    ]
    return examples_from_run(ground_truth, rows)
