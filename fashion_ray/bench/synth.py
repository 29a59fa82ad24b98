"""Synthetic fashion scenes with exact ground truth for all three stages.

Each image is drawn from its own seeded RNG (seed, index), so a set is identical however it
is sharded. A person is a posed skeleton (arm and leg angles vary) whose body parts are
capsules and polygons; garments in DeepFashion2's 13 categories are drawn over the limbs
they cover (sleeves follow the arms, trousers the legs, skirts flare from the hips). People
overlap and occlude each other and the frame edges; backgrounds mix gradients, textures and
clutter drawn in the same colours as skin and cloth, so a model must learn shape and
context, not a colour key.

Ground truth per person: visible person mask, part label map (every person pixel in exactly
one of the six parts, cloth that leaves the body such as a skirt's flare goes to the nearest
part), garment instance masks, all tight boxes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np

from fashion_ray import masks as rle
from fashion_ray import taxonomy

SKIN_TONES = [(255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 34)]
TOPS = ("short_sleeve_top", "long_sleeve_top", "short_sleeve_outwear", "long_sleeve_outwear", "vest", "sling")
BOTTOMS = ("shorts", "trousers", "skirt")
DRESSES = ("short_sleeve_dress", "long_sleeve_dress", "vest_dress", "sling_dress")
MIN_VISIBLE_PIXELS = 64  # a person hidden below this is not ground truth


@dataclass
class Person:
    box: list[float]
    mask: np.ndarray  # visible person pixels
    parts: np.ndarray  # uint8 part map (taxonomy.PARTS numbering), 0 outside the person
    sides: np.ndarray  # uint8: 0 none, 1 left, 2 right
    garments: list[tuple[str, np.ndarray]] = field(default_factory=list)


def _capsule(mask: np.ndarray, a, b, width: float, value: int = 1) -> None:
    a, b = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
    w = max(1, int(round(width)))
    cv2.line(mask, a, b, value, w, cv2.LINE_8)
    cv2.circle(mask, a, w // 2, value, -1)
    cv2.circle(mask, b, w // 2, value, -1)


def _poly(mask: np.ndarray, points, value: int = 1) -> None:
    cv2.fillPoly(mask, [np.round(np.asarray(points)).astype(np.int32)], value)


def _skeleton(rng: np.random.Generator, cx: float, top: float, height: float) -> dict:
    """Joint positions of a front-facing person; the subject's left is image right."""
    u = height / 8.0
    j = {"u": u, "head": (cx + rng.normal(0, 0.1) * u, top + 0.55 * u)}
    neck = np.array([cx, top + 1.15 * u])
    j["l_sh"], j["r_sh"] = neck + [0.95 * u, 0.3 * u], neck + [-0.95 * u, 0.3 * u]
    j["l_hip"], j["r_hip"] = np.array([cx + 0.55 * u, top + 4.0 * u]), np.array([cx - 0.55 * u, top + 4.0 * u])
    for side, sign in (("l", 1), ("r", -1)):
        up = np.deg2rad(rng.uniform(5, 150))  # arm raised from hanging (0) towards overhead
        bend = np.deg2rad(rng.uniform(0, 110))
        d1 = np.array([np.sin(up) * sign, np.cos(up)])
        d2 = np.array([np.sin(up + bend * rng.choice([-1, 1])) * sign, np.cos(up + bend)])
        j[f"{side}_el"] = j[f"{side}_sh"] + d1 * 1.5 * u
        j[f"{side}_wr"] = j[f"{side}_el"] + d2 * 1.3 * u
        spread = np.deg2rad(rng.uniform(-8, 28))
        knee = np.deg2rad(rng.uniform(0, 35))
        l1 = np.array([np.sin(spread) * sign, np.cos(spread)])
        l2 = np.array([np.sin(spread - knee) * sign, np.cos(spread - knee)])
        j[f"{side}_kn"] = j[f"{side}_hip"] + l1 * 1.9 * u
        j[f"{side}_an"] = j[f"{side}_kn"] + l2 * 1.9 * u
    return j


def _body_parts(shape, j: dict) -> tuple[np.ndarray, np.ndarray]:
    """Part and side maps of the bare body; arms are painted over the torso, head last."""
    u = j["u"]
    parts = np.zeros(shape, np.uint8)
    sides = np.zeros(shape, np.uint8)
    layers = []
    for side, code in (("l", 1), ("r", 2)):
        layers += [
            (5, code, (j[f"{side}_hip"], j[f"{side}_kn"], 0.75 * u)),
            (6, code, (j[f"{side}_kn"], j[f"{side}_an"], 0.55 * u)),
        ]
    layers.append((2, 0, None))
    for side, code in (("l", 1), ("r", 2)):
        layers += [
            (3, code, (j[f"{side}_sh"], j[f"{side}_el"], 0.45 * u)),
            (4, code, (j[f"{side}_el"], j[f"{side}_wr"], 0.36 * u)),
        ]
    for part, code, seg in layers:
        m = np.zeros(shape, np.uint8)
        if seg is None:
            _poly(
                m,
                [
                    j["r_sh"] + [-0.1 * u, -0.15 * u],
                    j["l_sh"] + [0.1 * u, -0.15 * u],
                    j["l_hip"] + [0.2 * u, 0.2 * u],
                    j["r_hip"] + [-0.2 * u, 0.2 * u],
                ],
            )
            _capsule(
                m, (j["head"][0], j["head"][1] + 0.5 * u), (j["head"][0], j["head"][1] + 0.9 * u), 0.45 * u
            )  # neck
        else:
            _capsule(m, seg[0], seg[1], seg[2])
        parts[m > 0], sides[m > 0] = part, code
    head = np.zeros(shape, np.uint8)
    cv2.ellipse(head, (int(j["head"][0]), int(j["head"][1])), (int(0.42 * u), int(0.55 * u)), 0, 0, 360, 1, -1)
    parts[head > 0], sides[head > 0] = 1, 0
    return parts, sides


def _garment_mask(shape, j: dict, category: str) -> np.ndarray:
    """Cloth region of one garment: slightly looser than the limbs it covers."""
    u = j["u"]
    m = np.zeros(shape, np.uint8)
    chest = 0.35 if category in ("sling", "sling_dress") else 0.0  # slings start below the shoulders
    top_like = category in TOPS or category in DRESSES
    if top_like:
        sh_l, sh_r = j["l_sh"] + [0.15 * u, -0.2 * u], j["r_sh"] + [-0.15 * u, -0.2 * u]
        hip_l, hip_r = j["l_hip"] + [0.25 * u, 0.35 * u], j["r_hip"] + [-0.25 * u, 0.35 * u]
        top_l, top_r = sh_l + (hip_l - sh_l) * chest, sh_r + (hip_r - sh_r) * chest
        _poly(m, [top_r, top_l, hip_l, hip_r])
        if chest:
            for s in ("l", "r"):
                _capsule(m, j[f"{s}_sh"], j[f"{s}_sh"] + (j[f"{s}_hip"] - j[f"{s}_sh"]) * chest, 0.12 * u)
        if "short_sleeve" in category or "long_sleeve" in category:
            for s in ("l", "r"):
                _capsule(m, j[f"{s}_sh"], j[f"{s}_sh"] + (j[f"{s}_el"] - j[f"{s}_sh"]) * 0.6, 0.62 * u)
                if "long_sleeve" in category:
                    _capsule(m, j[f"{s}_sh"], j[f"{s}_el"], 0.6 * u)
                    _capsule(m, j[f"{s}_el"], j[f"{s}_wr"], 0.48 * u)
        if category.endswith("outwear"):  # open front: a strip of what is underneath shows
            mid_top, mid_bot = (j["l_sh"] + j["r_sh"]) / 2, (j["l_hip"] + j["r_hip"]) / 2
            strip = np.zeros(shape, np.uint8)
            _poly(
                strip,
                [
                    mid_top + [-0.18 * u, 0.3 * u],
                    mid_top + [0.18 * u, 0.3 * u],
                    mid_bot + [0.18 * u, 0.4 * u],
                    mid_bot + [-0.18 * u, 0.4 * u],
                ],
            )
            m[strip > 0] = 0
    if category in ("shorts", "trousers"):
        _poly(
            m,
            [
                j["r_hip"] + [-0.3 * u, -0.1 * u],
                j["l_hip"] + [0.3 * u, -0.1 * u],
                j["l_hip"] + [0.3 * u, 0.7 * u],
                j["r_hip"] + [-0.3 * u, 0.7 * u],
            ],
        )
        for s in ("l", "r"):
            end = j[f"{s}_hip"] + (j[f"{s}_kn"] - j[f"{s}_hip"]) * 0.5 if category == "shorts" else j[f"{s}_kn"]
            _capsule(m, j[f"{s}_hip"], end, 0.9 * u)
            if category == "trousers":
                _capsule(m, j[f"{s}_kn"], j[f"{s}_an"], 0.7 * u)
    if category == "skirt" or category in DRESSES:
        length = 2.2 if category == "skirt" else 2.8
        hip_y = (j["l_hip"][1] + j["r_hip"][1]) / 2 - 0.1 * u
        cx = (j["l_hip"][0] + j["r_hip"][0]) / 2
        _poly(
            m,
            [
                (cx - 0.85 * u, hip_y),
                (cx + 0.85 * u, hip_y),
                (cx + 1.5 * u, hip_y + length * u),
                (cx - 1.5 * u, hip_y + length * u),
            ],
        )
    return m > 0


def _pattern(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Colours for the mask's pixels: solid, stripes, checks or noise, in random colours."""
    yy, xx = np.nonzero(mask)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    kind = rng.integers(0, 4)
    if kind == 0:
        sel = np.zeros(len(xx), bool)
    elif kind == 1:
        period = rng.integers(4, 16)
        sel = ((xx * np.cos(rng.uniform(0, np.pi)) + yy * np.sin(rng.uniform(0, np.pi))) // period) % 2 == 1
    elif kind == 2:
        period = rng.integers(5, 14)
        sel = ((xx // period) + (yy // period)) % 2 == 1
    else:
        sel = rng.random(len(xx)) < 0.3
    return np.where(sel[:, None], c2, c1).astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    grad = a + (b - a) * t[:, None]
    img = np.broadcast_to(grad[:, None, :], (h, w, 3)) if len(t) == h else np.broadcast_to(grad[None, :, :], (h, w, 3))
    img = img.astype(np.uint8).copy()
    for _ in range(rng.integers(2, 9)):  # clutter in skin and cloth colours
        m = np.zeros((h, w), np.uint8)
        x, y = rng.integers(0, w), rng.integers(0, h)
        if rng.random() < 0.5:
            cv2.rectangle(
                m, (int(x), int(y)), (int(x + rng.integers(8, w // 2)), int(y + rng.integers(8, h // 2))), 1, -1
            )
        else:
            cv2.circle(m, (int(x), int(y)), int(rng.integers(5, max(6, min(h, w) // 5))), 1, -1)
        colour = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) if rng.random() < 0.3 else None
        img[m > 0] = colour if colour is not None else _pattern(rng, m > 0)
    return img


def _outfit(rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.3:
        return [DRESSES[rng.integers(len(DRESSES))]]
    return [BOTTOMS[rng.integers(len(BOTTOMS))], TOPS[rng.integers(len(TOPS))]]  # bottom drawn first, top over it


def _nearest_part(parts: np.ndarray, person: np.ndarray) -> np.ndarray:
    """Give person pixels outside the body (a skirt's flare) the part of the nearest body pixel."""
    out = parts.copy()
    missing = person & (parts == 0)
    if not missing.any() or not parts.any():
        return out
    src = (parts == 0).astype(np.uint8)  # zeros at body pixels: labels name the nearest one
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    body_values = parts[parts > 0]  # raster order == label order for DIST_LABEL_PIXEL
    out[missing] = body_values[labels[missing] - 1]
    return out


def render_scene(
    seed: int, index: int, width: int = 320, height: int = 320, max_people: int = 4
) -> tuple[np.ndarray, list[Person]]:
    """Draw image `index` of the set `seed`; returns the RGB image and its visible people."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, height, width)
    count = 0 if rng.random() < 0.1 else int(rng.integers(1, max_people + 1))
    drawn = []
    for _ in range(count):
        h_px = rng.uniform(0.35, 1.05) * height
        cx, top = rng.uniform(0.05, 0.95) * width, rng.uniform(-0.1, 1.0 - h_px / height + 0.15) * height
        j = _skeleton(rng, cx, top, h_px)
        parts, sides = _body_parts((height, width), j)
        garments = [(c, _garment_mask((height, width), j, c)) for c in _outfit(rng)]
        body = parts > 0
        person = body.copy()
        for _, g in garments:
            person |= g & (parts != 1)
        drawn.append((j, parts, sides, garments, person))
    drawn.sort(key=lambda d: d[0]["l_an"][1])  # lower feet are nearer the camera: drawn last
    skin_colours = [np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) for _ in drawn]
    for (_, parts, _, garments, _), skin in zip(drawn, skin_colours):
        shade = np.clip(skin * rng.uniform(0.85, 1.1), 0, 255).astype(np.uint8)
        img[parts > 0] = shade
        for _, g in garments:
            m = g & (parts != 1)
            img[m] = _pattern(rng, m)
    people = []
    cover = np.zeros((height, width), bool)
    for _, parts, sides, garments, person in reversed(drawn):  # nearest first: each hides the ones behind
        visible = person & ~cover
        cover |= person
        if visible.sum() < MIN_VISIBLE_PIXELS:
            continue
        full_parts = _nearest_part(parts, person)
        vis_parts = np.where(visible, full_parts, 0).astype(np.uint8)
        vis_sides = np.where(visible & (parts > 0), sides, 0).astype(np.uint8)
        vis_garments = [(c, g & visible & (parts != 1)) for c, g in garments]
        # a garment drawn under another (a bottom under a long top) keeps only what shows
        for k in range(len(vis_garments)):
            for c2, g2 in vis_garments[k + 1 :]:
                vis_garments[k] = (vis_garments[k][0], vis_garments[k][1] & ~g2)
        vis_garments = [(c, g) for c, g in vis_garments if g.sum() >= 16]
        people.append(
            Person(box=rle.bbox_xyxy(visible), mask=visible, parts=vis_parts, sides=vis_sides, garments=vis_garments)
        )
    noise = rng.normal(0, 4, img.shape)
    img = np.clip(cv2.GaussianBlur(img, (3, 3), 0).astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, people[::-1]


def person_record(k: int, p: Person) -> dict:
    """A person in the labelling job's row shape (formats/schema.py), ground truth scores 1.0."""
    garments = []
    for g_id, (category, m) in enumerate(p.garments):
        garments.append(
            {
                "garment_id": g_id,
                "category": category,
                "category_id": taxonomy.COCO_CATEGORY_ID[category],
                "score": 1.0,
                "box": rle.bbox_xyxy(m),
                "mask": rle.encode(m),
                "attributes": [],
            }
        )
    parts = []
    for part_id, name in enumerate(taxonomy.PARTS, start=1):
        for code, side in ((0, None), (1, "left"), (2, "right")):
            m = (p.parts == part_id) & (p.sides == code) if code else (p.parts == part_id) & (p.sides == 0)
            if m.any():
                parts.append(
                    {
                        "part": name,
                        "part_id": part_id,
                        "side": side,
                        "area": int(m.sum()),
                        "box": rle.bbox_xyxy(m),
                        "mask": rle.encode(m),
                    }
                )
    return {
        "person_id": k,
        "track_id": None,
        "score": 1.0,
        "confident": True,
        "box": p.box,
        "mask": rle.encode(p.mask),
        "keypoints": None,
        "garments": garments,
        "parts": parts,
    }


def write_scene_shard(
    batch: dict[str, np.ndarray], *, output: str, seed: int, width: int, height: int, storage_options=None
) -> dict[str, np.ndarray]:
    """Ray Data task: render the batch's image indices, write images + one Parquet/COCO shard."""
    from PIL import Image

    from fashion_ray import storage
    from fashion_ray.formats import shards
    from fashion_ray.pipeline import as_batch

    rows = []
    for index in (int(i) for i in batch["id"]):
        img, people = render_scene(seed, index, width, height)
        uri = storage.join(output, "images", f"{index:08d}.jpg")
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=92)
        storage.write_bytes_atomic(uri, buf.getvalue(), storage_options)
        rows.append(
            {
                "id": storage.stable_id(uri),
                "uri": uri,
                "size": buf.tell(),
                "etag": "",
                "mtime": None,
                "frame_index": None,
                "timestamp_s": None,
                "width": width,
                "height": height,
                "status": "ok",
                "error": None,
                "error_detail": None,
                "bundle_name": "synthetic",
                "bundle_version": f"seed-{seed}",
                "stages": list(taxonomy.STAGES),
                "persons": [person_record(k, p) for k, p in enumerate(people)],
            }
        )
    return as_batch(
        shards.write_rows(
            rows,
            output=output,
            storage_options=storage_options,
            info={"description": f"fashion-ray synthetic scenes, seed {seed}"},
        )
    )


def make_synthetic(
    output: str,
    count: int,
    *,
    seed: int = 0,
    width: int = 320,
    height: int = 320,
    rows_per_shard: int = 256,
    storage_options=None,
) -> dict:
    """Render `count` scenes in parallel Ray tasks; shards first, manifest.json last."""
    import json
    import math
    import time

    import ray

    from fashion_ray import storage
    from fashion_ray.formats.schema import SCHEMA_VERSION
    from fashion_ray.formats.shards import shard_totals

    t0 = time.perf_counter()
    ds = ray.data.range(count, override_num_blocks=max(1, math.ceil(count / rows_per_shard)))
    ds = ds.map_batches(
        write_scene_shard,
        batch_size=rows_per_shard,
        fn_kwargs={
            "output": output,
            "seed": seed,
            "width": width,
            "height": height,
            "storage_options": storage_options,
        },
    )
    shards = sorted((r["shard"].entry() for r in ds.iter_rows()), key=lambda s: s["name"])
    elapsed = time.perf_counter() - t0
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "synthetic",
        "output": output,
        "config": {"count": count, "seed": seed, "width": width, "height": height, "rows_per_shard": rows_per_shard},
        "bundle": {"name": "synthetic", "version": f"seed-{seed}"},
        "counts": {"inputs": count, "error": 0, **shard_totals(shards)},
        "errors_by_reason": {},
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(count / elapsed, 2),
        "shards": shards,
    }
    storage.write_bytes_atomic(
        storage.join(output, "manifest.json"), json.dumps(manifest, indent=2).encode(), storage_options
    )
    return manifest


# --- made-up action tracks (jobs/make_synthetic.py --kind actions) -----------------------------


def side_view_keypoints(
    hip=(100.0, 200.0), torso_deg=0.0, thigh_deg=0.0, knee_deg=180.0, size=100.0, hidden=()
) -> list[float]:
    """33 MediaPipe keypoints (flat x, y, visibility) of a side view: the torso tilted torso_deg
    from upright, the thigh thigh_deg from pointing straight down, the shin bent knee_deg at
    the knee (180: straight). size is the torso's length; a whole upright body is ~2.5 sizes."""
    import math

    from fashion_ray.actions import ANKLES, HIPS, KNEES, SHOULDERS

    def towards(origin, degrees_from_down, length):
        a = math.radians(degrees_from_down)
        return origin[0] + length * math.sin(a), origin[1] + length * math.cos(a)

    hip = np.asarray(hip, np.float64)
    shoulder = towards(hip, 180 - torso_deg, size)  # upright: straight up from the hip
    knee = towards(hip, thigh_deg, 0.75 * size)
    ankle = towards(knee, thigh_deg - (180 - knee_deg), 0.75 * size)
    points = np.zeros((33, 3), np.float32)
    for ids, (x, y) in ((SHOULDERS, shoulder), (HIPS, hip), (KNEES, knee), (ANKLES, ankle)):
        for i in ids:
            points[i] = (x, y, 0.0 if i in hidden else 0.99)
    points[0] = (shoulder[0], shoulder[1] - 0.3 * size, 0.99)  # nose
    return points.ravel().tolist()


SYNTH_ACTIONS = ("stand", "walk", "sit", "bend/bow (at the waist)")


def make_action_examples(count: int, seed: int = 0) -> list[dict]:
    """Training examples (formats.ava.EXAMPLE_SCHEMA) of made-up tracks, 5 frames 1 s apart
    around a keyframe: people standing, walking (0.5-1.2 body heights/s), sitting or bending,
    half of them filmed by a camera that pans (the motion is in camera_motion, so only a
    model that takes it out tells a panned stander from a walker). Deterministic per (seed, i)."""
    from fashion_ray.actions import Track
    from fashion_ray.taxonomy import AVA_ACTION_ID
    from fashion_ray.training.action_examples import example_record

    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        action = SYNTH_ACTIONS[i % len(SYNTH_ACTIONS)]
        size = rng.uniform(60, 120)
        height = 2.6 * size
        speed = rng.uniform(0.5, 1.2) if action == "walk" else rng.uniform(0.0, 0.08)
        direction = rng.choice([-1.0, 1.0])
        pan = rng.uniform(-0.8, 0.8) * height if rng.random() < 0.5 else 0.0  # px/s the frame slides
        times, boxes, points, motion = [], [], [], []
        for k in range(5):
            t = float(k)
            x = 400 + direction * speed * height * t - pan * t  # in the frame: the scene slides by -pan
            torso = {"bend/bow (at the waist)": rng.uniform(45, 70)}.get(action, rng.uniform(-5, 5))
            thigh, knee = (
                (rng.uniform(80, 95), rng.uniform(80, 100))
                if action == "sit"
                else (rng.uniform(-25, 25) if action == "walk" else rng.uniform(-5, 5), rng.uniform(160, 180))
            )
            hip = (x + rng.normal(0, 2), 300 + rng.normal(0, 2))
            kp = np.asarray(side_view_keypoints(hip, torso, thigh, knee, size)).reshape(33, 3)
            kp[:, :2] += rng.normal(0, 0.02 * size, (33, 2))
            top = hip[1] - 1.3 * size
            bottom = hip[1] + (0.6 if action == "sit" else 1.4) * size
            times.append(t)
            boxes.append([x - 0.4 * size, top, x + 0.4 * size, bottom])
            points.append(kp.ravel().tolist())
            motion.append([0.0, 0.0] if k == 0 else [-pan, 0.0])
        track = Track(times, boxes, points, motion)
        out.append(
            example_record(
                i, f"synthetic-{seed}-{i}", 2.0, [AVA_ACTION_ID[action]], track, 2, "val" if i % 5 == 0 else "train"
            )
        )
    return out
