"""How many people the person stage finds, measured on composites with exact boxes.

No labelled set of real street photos can be had offline, so we build one from real parts
(assets/person_eval, SOURCES.md there): real person cut-outs (the sample photos' people with
their masks) pasted at 24-320 px tall, several per image, onto real photos with nobody in
them. Later pastes occlude earlier ones and people run off the frame edges; a person's
ground-truth box is the extent of its pixels that stay visible. A person with less than a
third of itself visible is "ignore" (finding it is neither a hit nor a false person).

- recall at IoU 0.5 by the person's pasted height (24-48, 48-96, 96-192, 192+ px);
- false persons: detections matching nobody, per composite and per no-people photo;
- a walkers video: cut-outs crossing a real background at walking speed, to count tracks
  per walker after sampling at 1 fps.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fashion_ray.boxes import box_iou
from fashion_ray.formats.schema import is_confident

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "person_eval")
HEIGHT_BUCKETS = ((24, 48), (48, 96), (96, 192), (192, 10_000))
MIN_VISIBLE = 1 / 3  # of a person's pixels, below which it is "ignore"
MATCH_IOU = 0.5


@dataclass
class Composite:
    name: str
    image: np.ndarray  # HxWx3 uint8
    boxes: list[list[float]] = field(default_factory=list)  # visible extent, x0 y0 x1 y1
    heights: list[int] = field(default_factory=list)  # pasted (full) height in px
    ignore: list[bool] = field(default_factory=list)


def _load(pattern: str, mode: str) -> list[tuple[str, np.ndarray]]:
    paths = sorted(glob.glob(os.path.join(ASSETS, pattern)))
    return [(os.path.basename(p).split(".")[0], np.asarray(Image.open(p).convert(mode))) for p in paths]


def cutouts() -> list[np.ndarray]:
    """RGBA person cut-outs, each also mirrored."""
    people = [rgba for _, rgba in _load("person_*.png", "RGBA")]
    return people + [p[:, ::-1].copy() for p in people]


def empty_photos() -> list[tuple[str, np.ndarray]]:
    """Real photos with nobody in them (each also mirrored): where every person found is false."""
    photos = _load("empty_*.jpg", "RGB")
    return photos + [(f"{name}_mirrored", img[:, ::-1].copy()) for name, img in photos]


def _background(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    ph, pw = photo.shape[:2]
    scale = max(width / pw, height / ph) * rng.uniform(1.0, 1.4)
    big = Image.fromarray(photo).resize((max(width, round(pw * scale)), max(height, round(ph * scale))), Image.BILINEAR)
    x0, y0 = rng.integers(0, big.width - width + 1), rng.integers(0, big.height - height + 1)
    return np.asarray(big.crop((x0, y0, x0 + width, y0 + height)))


def paste(canvas: np.ndarray, owner: np.ndarray, rgba: np.ndarray, x0: int, y0: int, label: int) -> None:
    """Alpha-blend rgba onto canvas at (x0, y0), clipped to the frame; owner records who is on top."""
    h, w = rgba.shape[:2]
    H, W = canvas.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    part = rgba[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    alpha = part[..., 3:4].astype(np.float32) / 255
    region = canvas[cy0:cy1, cx0:cx1]
    region[:] = (part[..., :3] * alpha + region * (1 - alpha)).astype(np.uint8)
    owner[cy0:cy1, cx0:cx1][alpha[..., 0] > 0.5] = label


def _resized(rgba: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(rgba.shape[1] * height / rgba.shape[0]))
    return np.asarray(Image.fromarray(rgba, "RGBA").resize((width, height), Image.LANCZOS))


def make_composite(
    rng: np.random.Generator,
    name: str,
    photos: list[tuple[str, np.ndarray]],
    persons: list[np.ndarray],
    *,
    width: int = 640,
    height: int = 480,
    people: tuple[int, int] = (2, 5),
) -> Composite:
    canvas = _background(rng, photos[rng.integers(len(photos))][1], width, height).copy()
    owner = np.zeros((height, width), np.int32)
    pasted = []
    for label in range(1, int(rng.integers(people[0], people[1] + 1)) + 1):
        # log-uniform heights: as many small people as large ones
        h = int(round(np.exp(rng.uniform(np.log(HEIGHT_BUCKETS[0][0]), np.log(320)))))
        rgba = _resized(persons[rng.integers(len(persons))], h)
        w = rgba.shape[1]
        x0 = int(rng.integers(-w // 3, width - 2 * w // 3))  # up to a third off either side
        y0 = int(rng.integers(-h // 5, height - 2 * h // 3))
        paste(canvas, owner, rgba, x0, y0, label)
        pasted.append((label, h, int((rgba[..., 3] > 127).sum())))
    out = Composite(name, canvas)
    for label, h, full_pixels in pasted:
        seen = _visible_extent(owner, label, full_pixels)
        if seen:
            out.boxes.append(seen[0])
            out.heights.append(h)
            out.ignore.append(seen[1])
    return out


def _visible_extent(owner: np.ndarray, label: int, full_pixels: int) -> tuple[list[float], bool] | None:
    """(box of a pasted person's still-visible pixels, ignore: less than MIN_VISIBLE of it
    shows), or None when nothing of it shows."""
    ys, xs = np.nonzero(owner == label)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)], len(
        xs
    ) < MIN_VISIBLE * full_pixels


def make_composites(count: int, seed: int = 0, **kwargs) -> list[Composite]:
    rng = np.random.default_rng(seed)
    photos, persons = empty_photos(), cutouts()
    return [make_composite(rng, f"composite_{seed}_{i:04d}", photos, persons, **kwargs) for i in range(count)]


def bucket_name(height: int) -> str:
    for lo, hi in HEIGHT_BUCKETS:
        if lo <= height < hi:
            return f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"
    return f"<{HEIGHT_BUCKETS[0][0]}"


def match(boxes: list, scores: list, gt: list[list[float]], ignore: list[bool]) -> tuple[list[bool], int]:
    """Greedy matching, best score first. Returns (which gt were found, false persons)."""
    found = [False] * len(gt)
    false = 0
    for k in np.argsort(-np.asarray(scores, np.float32)) if len(scores) else []:
        ious = [box_iou(boxes[k], g) if not found[j] else -1.0 for j, g in enumerate(gt)]
        j = int(np.argmax(ious)) if ious else -1
        if j >= 0 and ious[j] >= MATCH_IOU:
            found[j] = True
        elif not any(box_iou(boxes[k], g) >= MATCH_IOU for g, ign in zip(gt, ignore) if ign):
            false += 1
    return found, false


def evaluate_detector(
    predictor, composites: list[Composite], empties: list[tuple[str, np.ndarray]], min_score: float = 0.0
) -> dict:
    """Recall by height bucket, false persons, seconds per image for one person predictor, of
    its persons scored `min_score` or more (the stage's threshold: the labels, not candidates)."""

    def persons(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = predictor.predict([image])[0]
        keep = out["scores"] >= min_score
        return out["boxes"][keep], out["scores"][keep]

    hits: dict[str, list[int]] = {bucket_name(lo): [0, 0] for lo, _ in HEIGHT_BUCKETS}
    false_in_composites = false_in_empty = 0
    started = time.perf_counter()
    for comp in composites:
        boxes, scores = persons(comp.image)
        found, false = match(boxes.tolist(), scores.tolist(), comp.boxes, comp.ignore)
        false_in_composites += false
        for ok, h, ign in zip(found, comp.heights, comp.ignore):
            if not ign:
                hits[bucket_name(h)][0] += int(ok)
                hits[bucket_name(h)][1] += 1
    composite_seconds = time.perf_counter() - started
    per_empty = {}
    for name, img in empties:
        per_empty[name] = len(persons(img)[0])
        false_in_empty += per_empty[name]
    found_all = sum(h[0] for h in hits.values())
    total = sum(h[1] for h in hits.values())
    return {
        "recall_at_iou50": {b: round(f / n, 3) if n else None for b, (f, n) in hits.items()}
        | {"all": round(found_all / max(total, 1), 3)},
        "persons_by_height": {b: n for b, (_, n) in hits.items()},
        "composites": len(composites),
        "false_persons_per_composite": round(false_in_composites / max(len(composites), 1), 3),
        "false_persons_per_empty_photo": round(false_in_empty / max(len(empties), 1), 3),
        "false_persons_by_empty_photo": {k: v for k, v in per_empty.items() if v},
        "seconds_per_composite": round(composite_seconds / max(len(composites), 1), 3),
    }


# the walkers video --------------------------------------------------------------------------
@dataclass
class WalkersVideo:
    """Ground truth of a walkers video: per frame time, (walker, visible box, ignore)."""

    truth: dict[float, list[tuple[int, list[float], bool]]]
    walkers: int


def _recoloured(rgba: np.ndarray) -> np.ndarray:
    """The same person in other clothes: colour channels rotated, greys tinted blue."""
    out = rgba.copy()
    out[..., :3] = np.clip(rgba[..., [2, 0, 1]] * np.array([0.7, 0.85, 1.3]), 0, 255).astype(np.uint8)
    return out


def make_walkers_video(
    path: str,
    seed: int = 0,
    *,
    walkers: int = 5,
    duration_s: float = 16.0,
    fps: float = 4.0,
    width: int = 640,
    height: int = 360,
) -> WalkersVideo:
    """A static-camera video of real cut-outs walking across a real no-people photo.

    Walkers enter one after another from either side, 60-220 px tall, at 0.6-0.9 body
    heights per second (walking speed for a person that size in the picture), bobbing as
    they step; later walkers pass in front of earlier ones. Walkers are the cut-outs in turn;
    a cut-out used again wears other colours (channels rotated and tinted), so no two
    walkers look alike and a walker is only confused with another by the tracker's fault.
    """
    from fashion_ray.video import decoding

    rng = np.random.default_rng(seed)
    photos, people = empty_photos(), cutouts()
    background = _background(rng, photos[rng.integers(len(photos))][1], width, height)
    identities = len(people) // 2  # cutouts() lists each person, then their mirror images
    plans = []
    for k in range(walkers):
        h = int(round(np.exp(rng.uniform(np.log(60), np.log(220)))))
        rgba = _resized(people[k % identities + identities * int(rng.integers(2))], h)
        if k >= identities:
            rgba = _recoloured(rgba)
        leftwards = bool(rng.integers(2))
        speed = rng.uniform(0.6, 0.9) * h  # px per second
        enter = k * duration_s / (walkers + 1)
        bottom = rng.uniform(0.55, 1.0) * height + 0.15 * h  # feet may be below the frame (waist-up cut-outs)
        plans.append((k + 1, rgba, leftwards, speed, enter, bottom))
    times = [round(i / fps, 6) for i in range(int(duration_s * fps))]
    frames, truth = [], {}
    for t in times:
        canvas, owner = background.copy(), np.zeros((height, width), np.int32)
        placed = []
        for label, rgba, leftwards, speed, enter, bottom in plans:
            if t < enter:
                continue
            h, w = rgba.shape[:2]
            travelled = (t - enter) * speed
            x0 = int(round(width - travelled if leftwards else travelled - w))
            y0 = int(round(bottom - h + 0.02 * h * np.sin(2 * np.pi * 1.8 * t)))
            paste(canvas, owner, rgba, x0, y0, label)
            placed.append((label, int((rgba[..., 3] > 127).sum())))
        frames.append(canvas)
        seen = [(label, _visible_extent(owner, label, full_pixels)) for label, full_pixels in placed]
        truth[t] = [(label, *extent) for label, extent in seen if extent]
    decoding.encode_video(path, frames, times)
    return WalkersVideo(truth, walkers)


def evaluate_tracks(rows: list[dict], walkers: WalkersVideo) -> dict:
    """Tracks per walker and frame recall, from a labelling run's Parquet rows of the video.

    In each frame detections match walkers one to one, highest IoU first (>= 0.5). A walker
    is ideally one track: `tracks_per_walker` counts the distinct track ids it was matched
    to, `id_switches` the times its track id changed from one matched frame to the next.
    """
    tracks_of: dict[int, list[int]] = {}
    matched_tracks, all_tracks = set(), set()
    found = total = 0
    for row in sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["timestamp_s"]):
        truth = walkers.truth.get(round(row["timestamp_s"], 6), [])
        persons = [p for p in row["persons"] if is_confident(p)]  # tracked: candidates have no track
        all_tracks.update(p["track_id"] for p in persons)
        pairs = sorted(
            ((box_iou(p["box"], box), i, j) for i, p in enumerate(persons) for j, (_, box, _) in enumerate(truth)),
            reverse=True,
        )
        used_p, used_t = set(), set()
        for iou, i, j in pairs:
            if iou < MATCH_IOU or i in used_p or j in used_t:
                continue
            used_p.add(i)
            used_t.add(j)
            matched_tracks.add(persons[i]["track_id"])
            if not truth[j][2]:
                tracks_of.setdefault(truth[j][0], []).append(persons[i]["track_id"])
        visible = [j for j, (_, _, ignore) in enumerate(truth) if not ignore]
        total += len(visible)
        found += sum(j in used_t for j in visible)
    seen = list(tracks_of.values())
    return {
        "walkers": walkers.walkers,
        "frames": len(rows),
        "frame_recall_at_iou50": round(found / max(total, 1), 3),
        "walkers_found": len(seen),
        "tracks_per_walker": round(float(np.mean([len(set(ids)) for ids in seen])), 2) if seen else None,
        "id_switches": sum(a != b for ids in seen for a, b in zip(ids, ids[1:])),
        "tracks": len(all_tracks),
        "false_tracks": len(all_tracks - matched_tracks),
    }


def evaluate_walkers(bundle: str, count: int, seed: int, workdir: str, num_cpus: int | None = None) -> dict:
    """Label `count` walkers videos with the real labelling job (person stage, 1 fps) and
    measure their tracks: per video and summed over all."""
    from fashion_ray.config import LabelJobConfig
    from fashion_ray.formats.shards import iter_shard_rows
    from fashion_ray.run import run_label_job

    corpus, output = os.path.join(workdir, "walkers"), os.path.join(workdir, "labels")
    os.makedirs(corpus, exist_ok=True)
    paths = [os.path.join(corpus, f"walkers_{seed + k}.mp4") for k in range(count)]
    videos = {path: make_walkers_video(path, seed + k) for k, path in enumerate(paths)}
    manifest = run_label_job(
        LabelJobConfig(inputs=(corpus,), output=output, bundle=bundle, stages=("person",)), num_cpus=num_cpus
    )
    rows: dict[str, list[dict]] = {}
    for shard_rows in iter_shard_rows(output, manifest):
        for row in shard_rows:
            rows.setdefault(os.path.basename(row["uri"]), []).append(row)
    per_video = {
        os.path.basename(p): evaluate_tracks(rows.get(os.path.basename(p), []), truth) for p, truth in videos.items()
    }
    walkers = sum(v["walkers_found"] for v in per_video.values())
    return {
        "videos": count,
        "frame_recall_at_iou50": round(float(np.mean([v["frame_recall_at_iou50"] for v in per_video.values()])), 3),
        "tracks_per_walker": round(
            sum(v["tracks_per_walker"] * v["walkers_found"] for v in per_video.values() if v["walkers_found"])
            / max(walkers, 1),
            2,
        ),
        "id_switches": sum(v["id_switches"] for v in per_video.values()),
        "false_tracks": sum(v["false_tracks"] for v in per_video.values()),
        "manifest_tracks": manifest["counts"].get("tracks"),
        "manifest_mean_track_length": manifest["counts"].get("mean_track_length"),
        "per_video": per_video,
    }
