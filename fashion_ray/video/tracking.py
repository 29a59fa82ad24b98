"""Person tracks across the sampled frames of a video, made for sparse sampling (1 fps).

At 1 frame per second a walker moves more than their own width between samples, so box
overlap (SORT's cue) links almost nothing. A detection may continue a live track when it
lies within reach of where the track's constant-velocity motion puts it (`reach` body
heights per second of elapsed time, from the last place it was seen), its height is
within 2x, and it looks alike: the Bhattacharyya similarity of their colour descriptors
(appearance.py) is at least `min_similarity`, unless the boxes overlap as much as
`iou_link`. Among those pairs, a frame's assignment maximises appearance + closeness + IoU
(Hungarian). A track missed for up to `max_gap_s` of video time keeps its id when its
person comes back (occlusion, a missed detection). Boxes are compared where they stand in the
scene: the camera's measured pan (the rows' `camera_shift`) is taken out first. Track ids
count from 1 within a video in order of first appearance, so the same labels always give the
same ids.

`track_shards` applies this after the cascade: a video's frames are labelled by many tasks
and land in several shards, so tracks can only be drawn once all of its frames are in. With
the actions stage it then labels each track's actions from its motion and pose over time
(models/actions.py), replacing what the stage said of each frame alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fashion_ray.boxes import box_iou
from fashion_ray.formats.schema import is_confident
from fashion_ray.formats.shards import Shard, read_shard_rows, write_rows
from fashion_ray.taxonomy import ACTIONS_STAGE
from fashion_ray.video import appearance


@dataclass(frozen=True)
class TrackingOptions:
    max_gap_s: float = 3.0  # a track unseen for longer ends (two missed samples at 1 fps)
    reach: float = 1.5  # body heights per second a person may stray from the predicted place
    min_similarity: float = 0.8  # of appearance, for a link between boxes that do not overlap
    iou_link: float = 0.5  # boxes overlapping this much link whatever their colours


@dataclass
class _OpenTrack:
    """A track the tracker is still extending as frames arrive: its last box, speed and colours."""

    track_id: int
    box: list[float]
    seen_s: float
    descriptor: list[float] | None
    velocity: np.ndarray | None = None  # of the box centre, px per second

    def predicted(self, t: float) -> list[float]:
        if self.velocity is None:
            return self.box
        dx, dy = self.velocity * (t - self.seen_s)
        return [self.box[0] + dx, self.box[1] + dy, self.box[2] + dx, self.box[3] + dy]

    def update(self, box: list[float], t: float, descriptor) -> None:
        dt = t - self.seen_s
        if dt > 0:
            velocity = (_centre(box) - _centre(self.box)) / dt
            self.velocity = velocity if self.velocity is None else 0.5 * (self.velocity + velocity)
        self.box, self.seen_s = list(box), t
        self.descriptor = appearance.blend(self.descriptor, descriptor)


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _shifted(box, by) -> list[float]:
    return [box[0] + by[0], box[1] + by[1], box[2] + by[0], box[3] + by[1]]


def _height(box) -> float:
    return max(1.0, box[3] - box[1])


def link_score(track: _OpenTrack, box, descriptor, t: float, options: TrackingOptions) -> float | None:
    """How well a detection continues a track (higher is better); None where it cannot."""
    ratio = _height(box) / _height(track.box)
    if not 0.5 <= ratio <= 2.0:
        return None
    predicted = track.predicted(t)
    reach = max(_height(box), _height(track.box)) * (0.35 + options.reach * max(0.0, t - track.seen_s))
    distance = float(np.linalg.norm(_centre(box) - _centre(predicted)))
    if distance > reach:
        return None
    iou = box_iou(predicted, box)
    similar = appearance.similarity(track.descriptor, descriptor)
    if similar is None:
        similar = options.min_similarity  # no colours to compare: position decides
    if similar < options.min_similarity and iou < options.iou_link:
        return None
    return similar + 0.5 * (1 - distance / reach) + 0.5 * iou


def assign_tracks(
    boxes: list[list[list[float]]],
    times: list[float],
    descriptors: list[list] | None = None,
    options: TrackingOptions = TrackingOptions(),
) -> list[list[int]]:
    """Track ids for the person boxes ([x0, y0, x1, y1]) of each frame, frames in time order
    (`times` in seconds); `descriptors`, where given, holds each box's appearance descriptor."""
    from scipy.optimize import linear_sum_assignment

    tracks: list[_OpenTrack] = []
    next_id, out = 1, []
    for k, (frame, t) in enumerate(zip(boxes, times)):
        described = descriptors[k] if descriptors else [None] * len(frame)
        tracks = [tr for tr in tracks if t - tr.seen_s <= options.max_gap_s + 1e-6]
        scores = np.full((len(tracks), len(frame)), -np.inf)
        for ti, track in enumerate(tracks):
            for di, (box, descriptor) in enumerate(zip(frame, described)):
                score = link_score(track, box, descriptor, t, options)
                if score is not None:
                    scores[ti, di] = score
        match = {}
        if scores.size and np.isfinite(scores).any():
            rows, cols = linear_sum_assignment(np.where(np.isfinite(scores), -scores, 1e6))
            match = {di: tracks[ti] for ti, di in zip(rows, cols) if np.isfinite(scores[ti, di])}
        ids = []
        for di, (box, descriptor) in enumerate(zip(frame, described)):
            track = match.get(di)
            if track is None:
                track = _OpenTrack(next_id, list(box), t, descriptor)
                tracks.append(track)
                next_id += 1
            else:
                track.update(box, t, descriptor)
            ids.append(track.track_id)
        out.append(ids)
    return out


def camera_positions(frames: list[dict]) -> np.ndarray:
    """The camera's accumulated shift at each frame of a video (time order) from the rows'
    `camera_shift`; a frame without one (the first of each decode segment) takes the mean
    of its nearest measured neighbours'."""
    known = [i for i, r in enumerate(frames) if r.get("camera_shift")]
    steps = np.zeros((len(frames), 2))
    for i in range(1, len(frames)):
        if frames[i].get("camera_shift"):
            steps[i] = frames[i]["camera_shift"]
            continue
        near = [
            j
            for j in (max((k for k in known if k < i), default=None), min((k for k in known if k > i), default=None))
            if j is not None
        ]
        steps[i] = np.mean([frames[j]["camera_shift"] for j in near], axis=0) if near else 0.0
    return np.cumsum(steps, axis=0)


@dataclass
class TrackedPerson:
    """One tracked person through a video: the frames where seen, the person there in each, and the
    whole as an actions.Track (the one Track type: what the action rules and head read)."""

    frames: list[int]  # indices into the video's frames (time order)
    persons: list[dict]
    track: object  # actions.Track, the camera's motion since the track's previous frame


def person_tracks(frames: list[dict]) -> dict[int, TrackedPerson]:
    """The tracks of one video's tracked frames (time order), by track id."""
    from fashion_ray.actions import Track

    camera = camera_positions(frames)
    seen: dict[int, list[tuple[int, dict]]] = {}
    for k, row in enumerate(frames):
        for person in row["persons"]:
            if person.get("track_id") is not None:  # candidates are not tracked
                seen.setdefault(person["track_id"], []).append((k, person))
    out = {}
    for track_id, members in seen.items():
        at, persons = [k for k, _ in members], [p for _, p in members]
        moved = np.diff(camera[at], axis=0, prepend=camera[at[:1]])
        out[track_id] = TrackedPerson(
            at, persons, Track.of_persons([frames[k]["timestamp_s"] for k in at], persons, moved.tolist())
        )
    return out


def label_track_actions(frames: list[dict], predictor, threshold: float) -> None:
    """Actions of every tracked person in one video's frames (time order), from their track."""
    from fashion_ray.actions import as_records

    tracks = list(person_tracks(frames).values())
    for t, scores in zip(tracks, predictor.predict_tracks([t.track for t in tracks])):
        for person, frame_scores in zip(t.persons, scores):
            person["actions"] = as_records(frame_scores, threshold)


def track_frames(frames: list[dict]) -> None:
    """Give the confident persons of one video's frames (time order) their track ids; a
    candidate (a box and a score) keeps none. Boxes are linked where they stand in the scene
    (the camera's pan taken out, camera_positions): a panning camera moves everyone in the
    image, at 1 fps further than the tracker's reach for a small person, who would otherwise
    start a new track on every frame and have no motion to read an action from."""
    tracked = [[p for p in r["persons"] if is_confident(p)] for r in frames]
    camera = camera_positions(frames)
    ids_per_frame = assign_tracks(
        [[_shifted(p["box"], -camera[k]) for p in persons] for k, persons in enumerate(tracked)],
        [r["timestamp_s"] for r in frames],
        [[p.get("appearance") for p in persons] for persons in tracked],
    )
    for persons, ids in zip(tracked, ids_per_frame):
        for person, track_id in zip(persons, ids):
            person["track_id"] = track_id


def track_shards(
    output: str,
    shards: list[dict],
    run_id: str,
    options=None,
    actions_bundle: str | None = None,
    action_threshold: float | None = None,
) -> dict[str, Shard]:
    """Give the persons of every video frame in these shards (manifest entries) their track
    ids, and with `actions_bundle` (a bundle ref) their actions from the tracks; rewrite the
    shards. Returns {old shard name: new Shard}.

    All frame rows of the given shards are held in memory at once (labels and RLE masks, no pixels).
    """
    predictor = None
    if actions_bundle:
        from fashion_ray.config import Device
        from fashion_ray.models import build_stage_predictor, load_bundle

        bundle = load_bundle(actions_bundle, options)
        # on this task's CPU: the tracking task holds no GPU, and the actions model is small
        predictor = build_stage_predictor(bundle, ACTIONS_STAGE, Device(), options)
        if action_threshold is None:
            action_threshold = bundle.stages[ACTIONS_STAGE].score_threshold
    rows_by_shard = {s["name"]: read_shard_rows(output, s, options) for s in shards}
    videos: dict[str, list[dict]] = {}
    for rows in rows_by_shard.values():
        for row in rows:
            # TIFF pages have no time line: nothing to track across them
            if row["frame_index"] is not None and row["timestamp_s"] is not None and row["status"] == "ok":
                videos.setdefault(row["uri"], []).append(row)
    for frames in videos.values():
        frames.sort(key=lambda r: r["frame_index"])
        track_frames(frames)
        if predictor is not None:
            label_track_actions(frames, predictor, action_threshold)
    return {
        name: write_rows(
            rows,
            output=output,
            salt=f"{run_id}:tracks",
            storage_options=options,
            info={"description": "fashion-ray labels with person tracks"},
        )
        for name, rows in rows_by_shard.items()
    }
