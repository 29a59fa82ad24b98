"""AVA-style CSV rows for tracked persons in video frames.

One line per person per sampled frame, no header, as AVA's annotation files:
video_id, middle_frame_timestamp (seconds), x1, y1, x2, y2 (normalised to [0, 1]),
action_id (empty: we label people, not actions), person_id (the track id).
video_id is the video file's name without extension, as AVA names videos.
"""

from __future__ import annotations

import csv
import io
import posixpath


def ava_rows(rows: list[dict]) -> list[list]:
    out = []
    for row in rows:
        if row["frame_index"] is None or row["status"] != "ok":
            continue
        video_id = posixpath.splitext(posixpath.basename(row["uri"]))[0]
        w, h = row["width"], row["height"]
        for person in row["persons"]:
            if person.get("track_id") is None:
                continue
            x0, y0, x1, y1 = person["box"]
            out.append([video_id, f"{row['timestamp_s']:.3f}", f"{x0 / w:.4f}", f"{y0 / h:.4f}", f"{x1 / w:.4f}",
                        f"{y1 / h:.4f}", "", person["track_id"]])
    return out


def to_csv(rows: list[list]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()
