"""Person tracks across the sampled frames of a video, in the spirit of SORT.

Each live track predicts its next box by constant velocity; a frame's person boxes are
matched to the predictions greedily by IoU (best pair first); unmatched boxes start new
tracks; a track missed for more than `max_age` sampled frames ends. Track ids count from 1
within a video, in order of first appearance, so the same labels always give the same ids.

`track_shards` applies this after the cascade: a video's frames are labelled by many tasks
and land in several shards, so tracks can only be drawn once all of its frames are in.
"""

from __future__ import annotations

from dataclasses import dataclass

from fashion_ray.formats.shards import Shard, read_shard_rows, write_rows
from fashion_ray.boxes import box_iou


@dataclass
class _Track:
    track_id: int
    box: list[float]
    velocity: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    missed: int = 0

    def predicted(self) -> list[float]:
        return [v + d * (self.missed + 1) for v, d in zip(self.box, self.velocity)]


def assign_tracks(frames: list[list[list[float]]], iou_threshold: float = 0.2, max_age: int = 2) -> list[list[int]]:
    """Track ids for the boxes ([x0, y0, x1, y1]) of each frame, frames in time order."""
    tracks: list[_Track] = []
    next_id, out = 1, []
    for boxes in frames:
        predictions = [t.predicted() for t in tracks]
        pairs = sorted(((box_iou(p, b), ti, di) for ti, p in enumerate(predictions) for di, b in enumerate(boxes)),
                       reverse=True)
        match: dict[int, int] = {}  # detection -> track index
        for score, ti, di in pairs:
            if score < iou_threshold:
                break
            if di not in match and ti not in match.values():
                match[di] = ti
        ids = []
        for di, box in enumerate(boxes):
            if di in match:
                track = tracks[match[di]]
                steps = track.missed + 1
                track.velocity = tuple((n - o) / steps for n, o in zip(box, track.box))
                track.box, track.missed = list(box), 0
            else:
                track = _Track(next_id, list(box))
                tracks.append(track)
                next_id += 1
            ids.append(track.track_id)
        matched = set(match.values())
        for ti, track in enumerate(tracks[: len(predictions)]):
            if ti not in matched:
                track.missed += 1
        tracks = [t for t in tracks if t.missed <= max_age]
        out.append(ids)
    return out


def track_shards(output: str, shards: list[dict], run_id: str, options=None) -> dict[str, Shard]:
    """Give the persons of every video frame in these shards (manifest entries) their track
    ids; rewrite the shards. Returns {old shard name: new Shard}.

    All frame rows of the given shards are held in memory at once (labels and RLE masks, no pixels).
    """
    rows_by_shard = {s["name"]: read_shard_rows(output, s, options) for s in shards}
    videos: dict[str, list[dict]] = {}
    for rows in rows_by_shard.values():
        for row in rows:
            # TIFF pages have no time line: nothing to track across them
            if row["frame_index"] is not None and row["timestamp_s"] is not None and row["status"] == "ok":
                videos.setdefault(row["uri"], []).append(row)
    for frames in videos.values():
        frames.sort(key=lambda r: r["frame_index"])
        for row, ids in zip(frames, assign_tracks([[p["box"] for p in r["persons"]] for r in frames])):
            for person, track_id in zip(row["persons"], ids):
                person["track_id"] = track_id
    return {name: write_rows(rows, output=output, salt=f"{run_id}:tracks", storage_options=options,
                             info={"description": "fashion-ray labels with person tracks"})
            for name, rows in rows_by_shard.items()}
