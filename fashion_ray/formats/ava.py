"""AVA-format CSV: the actions of tracked persons in video frames, and AVA files read back.

We write AVA's detection format, which its frame-mAP evaluator reads, one line per
(person, action) per sampled frame, no header:
    video_id, timestamp (s), x1, y1, x2, y2 (normalised to [0, 1]), action_id, score
video_id is the video file's name without extension, as AVA names videos; a keyframe
timestamp is written as AVA's integer seconds when it is one (our 1 fps frames), else to
the millisecond. Track ids are not in AVA's detection format: they are in Parquet.

AVA's ground-truth files (ava_train_v2.2.csv, ...) have the same columns with the person's
id instead of the score; `read_csv` reads either.

Training examples for the actions head are stored one Parquet row per labelled person and
keyframe, the track's window around it (EXAMPLE_SCHEMA; built by training/action_examples.py).
"""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass

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


def write_examples(examples: list[dict], uri: str, options=None) -> None:
    import pyarrow.parquet as pq

    from fashion_ray import storage

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA), buf, compression="zstd")
    storage.write_bytes_atomic(uri, buf.getvalue(), options)
