"""Videos of real people standing and walking, with AVA ground truth: what the actions stage is measured on.

No AVA clip can be had offline, so we build scenes from real parts: real person cut-outs
pasted onto a real no-people photo (person_eval's), some walking across the scene at
0.5-0.9 body heights per second, some held still (stand), filmed by a static camera or by
one that pans across the scene, where everyone slides through the frame and only the
scene's own motion says who walks. Cut-outs are the bundled sample-photo people
(waist-up) or, given a Penn-Fudan folder, its pedestrians: full-body, their masks as
alpha, the ones it labels standing held still and the walking ones walking.

Ground truth is AVA's format at 1 Hz keyframes (whole seconds): every person whose visible
pixels are at least half of it, its visible box, walk (14) or stand (12), its number as the
person id. `jobs/make_action_videos.py` writes videos + ground_truth.csv; label the videos
with the labelling job and score them with `jobs/evaluate.py --mode actions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fashion_ray import taxonomy
from fashion_ray.bench import person_eval

WALK, STAND = taxonomy.AVA_ACTION_ID["walk"], taxonomy.AVA_ACTION_ID["stand"]
MIN_SHOWN = 0.5  # of a person's pixels, for it to be labelled at a keyframe


@dataclass(frozen=True)
class People:
    walking: list[np.ndarray]  # RGBA cut-outs
    standing: list[np.ndarray]


def bundled_people() -> People:
    cut = person_eval.cutouts()
    return People(cut, cut)


def penn_fudan_people(root: str) -> People:
    """Penn-Fudan's pedestrians as RGBA cut-outs (mask as alpha), by its walking / standing label."""
    from fashion_ray.formats.converters import penn_fudan_pedestrians

    walking, standing = [], []
    for name in sorted(os.listdir(os.path.join(root, "Annotation"))):
        stem = os.path.splitext(name)[0]
        with open(os.path.join(root, "Annotation", name), encoding="latin-1") as fh:
            labels = {number: action for number, action, _ in penn_fudan_pedestrians(fh.read())}
        photo = np.asarray(Image.open(os.path.join(root, "PNGImages", f"{stem}.png")).convert("RGB"))
        ids = np.asarray(Image.open(os.path.join(root, "PedMasks", f"{stem}_mask.png")))
        for number, label in labels.items():
            ys, xs = np.nonzero(ids == number)
            if len(xs) < 2000:
                continue  # a sliver of a person makes no pose
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            rgba = np.dstack([photo[y0:y1, x0:x1], (ids[y0:y1, x0:x1] == number).astype(np.uint8) * 255])
            (walking if label == "walk" else standing).append(rgba)
    if not walking or not standing:
        raise ValueError(f"{root}: found {len(walking)} walking and {len(standing)} standing pedestrians; need both")
    return People(walking, standing)


def make_action_video(
    path: str,
    video_id: str,
    people: People,
    seed: int,
    *,
    panning: bool,
    duration_s: float = 12.0,
    fps: float = 4.0,
    width: int = 640,
    height: int = 360,
    walkers: int = 2,
    standers: int = 2,
    person_heights: tuple[int, int] = (130, 230),
) -> list[list]:
    """Write one video; returns its AVA ground-truth lines."""
    from fashion_ray.video import decoding

    rng = np.random.default_rng(seed)
    photos = person_eval.empty_photos()
    pan = rng.uniform(30, 60) * rng.choice([-1, 1]) if panning else 0.0  # px/s the camera turns
    scene_w = width + int(abs(pan) * duration_s) + 1
    scene = person_eval._background(rng, photos[rng.integers(len(photos))][1], scene_w, height)
    start = 0 if pan >= 0 else scene_w - width  # the camera's left edge in the scene at t = 0
    plans = []  # (label, rgba, scene x at t=0, px/s in the scene, bottom)
    for k in range(walkers + standers):
        walking = k < walkers
        pool = people.walking if walking else people.standing
        h = int(rng.uniform(*person_heights))
        rgba = person_eval._resized(pool[int(rng.integers(len(pool)))], h)
        if rng.random() < 0.5:
            rgba = rgba[:, ::-1].copy()
        bottom = rng.uniform(0.8, 1.0) * height
        if walking:  # crosses the camera's view over the clip, entering from either side
            speed = rng.uniform(0.5, 0.9) * h * rng.choice([-1, 1])
            middle = start + width / 2 + pan * duration_s / 2
            x = middle - speed * duration_s / 2 - rgba.shape[1] / 2 + rng.uniform(-0.15, 0.15) * width
        else:  # somewhere the camera sees for most of the clip
            speed = 0.0
            x = start + pan * duration_s / 2 + rng.uniform(0.1, 0.75) * width
        plans.append((k + 1, rgba, x, speed, bottom))
    times = [round(i / fps, 6) for i in range(int(duration_s * fps))]
    frames, truth = [], []
    for t in times:
        left = start + pan * t
        view = scene[:, int(round(left)) : int(round(left)) + width].copy()
        owner = np.zeros((height, width), np.int32)
        for label, rgba, x, speed, bottom in plans:
            h = rgba.shape[0]
            bob = 0.015 * h * np.sin(2 * np.pi * 1.8 * t) if speed else 0.0
            person_eval.paste(view, owner, rgba, int(round(x + speed * t - left)), int(round(bottom - h + bob)), label)
        frames.append(view)
        if abs(t - round(t)) < 1e-6 and 0 < t < duration_s:
            for label, rgba, _, speed, _ in plans:
                ys, xs = np.nonzero(owner == label)
                if len(xs) < MIN_SHOWN * int((rgba[..., 3] > 127).sum()):
                    continue
                box = (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)
                truth.append([video_id, int(round(t)), *(f"{v:.4f}" for v in box), WALK if speed else STAND, label])
    decoding.encode_video(path, frames, times)
    return truth


def make_action_videos(
    folder: str, count: int, people: People, seed: int = 0, person_heights: tuple[int, int] = (130, 230)
) -> list[list]:
    """`count` videos in folder (every other one panning); returns all their ground-truth lines."""
    os.makedirs(folder, exist_ok=True)
    lines = []
    for k in range(count):
        video_id = f"actions_{seed + k:03d}_{'pan' if k % 2 else 'static'}"
        lines += make_action_video(
            os.path.join(folder, f"{video_id}.mp4"),
            video_id,
            people,
            seed + k,
            panning=bool(k % 2),
            person_heights=person_heights,
        )
    return lines
