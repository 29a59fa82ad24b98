"""AVA-format CSV: the actions of tracked persons in video frames, and AVA files read back.

We write AVA's detection format, which its frame-mAP evaluator reads, one line per
(person, action) per sampled frame, no header:
    video_id, timestamp (s), x1, y1, x2, y2 (normalised to [0, 1]), action_id, score
video_id is the video file's name without extension, as AVA names videos; a keyframe
timestamp is written as AVA's integer seconds when it is one (our 1 fps frames), else to
the millisecond. Track ids are not in AVA's detection format: they are in Parquet.

AVA's ground-truth files (ava_train_v2.2.csv, ...) have the same columns with the person's
id instead of the score; `read_csv` reads either.

Training examples for the actions head are AVA's labelled persons matched to our tracks
(`examples_from_run`): one Parquet row per labelled person and keyframe, the track's window
around it (EXAMPLE_SCHEMA).
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fashion_ray.errors import InputError


@dataclass(frozen=True)
class AvaLine:
    video_id: str
    timestamp: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]
    action_id: int
    value: float  # the score (detections) or the person id (ground truth)


def video_id_of(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri))[0]


def format_timestamp(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


def ava_rows(rows: list[dict]) -> list[list]:
    out = []
    for row in rows:
        if row["frame_index"] is None or row["status"] != "ok" or row["timestamp_s"] is None:
            continue
        video_id = video_id_of(row["uri"])
        w, h = row["width"], row["height"]
        for person in row["persons"]:
            if person.get("track_id") is None:
                continue
            x0, y0, x1, y1 = person["box"]
            box = [f"{min(max(v, 0.0), 1.0):.4f}" for v in (x0 / w, y0 / h, x1 / w, y1 / h)]
            out += [
                [video_id, format_timestamp(row["timestamp_s"]), *box, a["action_id"], f"{a['score']:.4f}"]
                for a in person.get("actions") or []
            ]
    return out


def to_csv(rows: list[list]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


class AvaFormatError(InputError):
    """A line that is not AVA's video_id, timestamp, x1, y1, x2, y2, action_id[, score or person id]."""


def read_csv(data: bytes | str, name: str = "AVA CSV") -> list[AvaLine]:
    """Parse an AVA ground-truth or detection CSV; lines without an action id are skipped
    (AVA's person-only boxes)."""
    text = data.decode() if isinstance(data, bytes) else data
    out = []
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not fields:
            continue
        if len(fields) not in (7, 8):
            raise AvaFormatError(
                f"{name} line {number}: {len(fields)} columns, AVA has 7 or 8 "
                "(video_id, timestamp, x1, y1, x2, y2, action_id[, score or person id])"
            )
        try:
            if not fields[6].strip():
                continue
            out.append(
                AvaLine(
                    fields[0],
                    float(fields[1]),
                    tuple(float(v) for v in fields[2:6]),
                    int(fields[6]),
                    float(fields[7]) if len(fields) == 8 and fields[7].strip() else 1.0,
                )
            )
        except ValueError as exc:
            raise AvaFormatError(f"{name} line {number}: {exc}") from None
    return out


# --- training examples: AVA labels matched to our tracks (jobs/convert.py --format ava) ------

WINDOW_S = 2.5  # frames kept around a keyframe: actions.WINDOW_OFFSETS_S and half a second

EXAMPLE_SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("video_id", pa.string()),
        ("timestamp_s", pa.float64()),  # the keyframe
        ("split", pa.string()),  # "train" | "val" (by video, so no video is on both sides)
        ("action_ids", pa.list_(pa.int32())),  # AVA ids labelled on the person at the keyframe
        ("at", pa.int32()),  # the keyframe's index in the window below
        ("times", pa.list_(pa.float64())),  # the track's frames within WINDOW_S of the keyframe
        ("boxes", pa.list_(pa.list_(pa.float32()))),  # px
        ("keypoints", pa.list_(pa.list_(pa.float32()))),  # flat x, y, visibility; null without a pose
        ("camera_motion", pa.list_(pa.list_(pa.float32()))),  # px since the window's previous frame
    ]
)


def video_split(video_id: str, val_fraction: float = 0.2) -> str:
    digest = int(hashlib.sha1(video_id.encode()).hexdigest()[:8], 16)
    return "val" if digest / 2**32 < val_fraction else "train"


def example_record(example_id: int, video_id: str, timestamp: float, action_ids, track, at: int, split: str) -> dict:
    """One example row from an actions.Track cut to WINDOW_S around frame `at`."""
    keep = [j for j, t in enumerate(track.times) if abs(t - track.times[at]) <= WINDOW_S + 1e-6]
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
    from fashion_ray.actions import Track

    return Track(list(row["times"]), list(row["boxes"]), list(row["keypoints"]), list(row["camera_motion"])), int(
        row["at"]
    )


def examples_from_run(
    ground_truth: list[AvaLine], rows: list[dict], *, iou: float = 0.5, tolerance_s: float = 0.25
) -> tuple[list[dict], dict]:
    """Match AVA's labelled persons to a labelling run's tracks at each keyframe.

    rows: the run's Parquet rows of the AVA videos (tracked, 1 fps at AVA's keyframes). A
    labelled person at (video, keyframe) is matched to the frame nearest the keyframe (within
    tolerance_s) and there to the tracked person whose box overlaps it most (IoU >= iou, a
    person matched once); the example is that person's track around the frame, labelled with
    every action AVA gives the person. Returns the examples and what could not be matched.
    """
    from fashion_ray.boxes import box_iou
    from fashion_ray.video.tracking import person_tracks

    labelled: dict[str, dict[float, dict[float, set]]] = {}  # video -> keyframe -> person id -> {(box, action)}
    for g in ground_truth:
        labelled.setdefault(g.video_id, {}).setdefault(g.timestamp, {}).setdefault(g.value, set()).add(
            (g.box, g.action_id)
        )
    videos: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["frame_index"] is not None and r["timestamp_s"] is not None:
            videos.setdefault(video_id_of(r["uri"]), []).append(r)
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
                overlaps = [(box_iou(gt_box, p["box"]), j) for j, p in enumerate(frame["persons"]) if j not in taken]
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


def write_examples(examples: list[dict], uri: str, options=None) -> None:
    import pyarrow.parquet as pq

    from fashion_ray import storage

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA), buf, compression="zstd")
    storage.write_bytes_atomic(uri, buf.getvalue(), options)
