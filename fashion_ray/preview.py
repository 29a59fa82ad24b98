"""Overlays of labelled images (PNG) and a static HTML page, to look at labels instead of JSON.

Parts are painted in a fixed colour legend, garments outlined, persons boxed with their
score, track and actions, keypoints dotted; candidates under the person threshold are counted,
not drawn. Reads only what a run's manifest lists.
"""

from __future__ import annotations

import html
import io

import numpy as np
from PIL import Image, ImageDraw

from fashion_ray import config, media, storage, taxonomy
from fashion_ray import masks as rle
from fashion_ray.formats.schema import attribute_map, is_confident
from fashion_ray.formats.shards import iter_shard_rows, read_manifest
from fashion_ray.video import decoding

PART_COLOURS = {  # fixed legend, RGB
    "head": (230, 25, 75),
    "torso": (60, 180, 75),
    "upper_arm": (255, 225, 25),
    "lower_arm": (245, 130, 48),
    "upper_leg": (0, 130, 200),
    "lower_leg": (145, 30, 180),
}
GARMENT_COLOUR = (255, 255, 255)
PERSON_COLOUR = (0, 255, 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def render(image: np.ndarray, row: dict) -> Image.Image:
    # one uint8 copy, blended where the masks are: a float canvas of a 64-megapixel photo is 768 MB
    canvas = image.copy()
    for person in row["persons"]:
        for part in person["parts"]:
            m = rle.decode(part["mask"])
            canvas[m] = (canvas[m] * 0.45 + np.array(PART_COLOURS[part["part"]]) * 0.55).astype(np.uint8)
        for garment in person["garments"]:
            if garment["mask"]:
                edge = _outline(rle.decode(garment["mask"]))
                canvas[edge] = GARMENT_COLOUR
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    for person in filter(is_confident, row["persons"]):  # candidates are counted in the caption, not drawn
        x0, y0, x1, y1 = person["box"]
        draw.rectangle([x0, y0, x1, y1], outline=PERSON_COLOUR, width=2)
        track = f" track {person['track_id']}" if person.get("track_id") is not None else ""
        draw.text((x0 + 3, y0 + 3), f"person {person['score']:.2f}{track}", fill=PERSON_COLOUR)
        acts = action_text(person)
        if acts:  # under the box (the person's own area holds the garment names), or its inside bottom edge
            draw.text((x0 + 3, y1 + 3 if y1 + 14 <= out.height else y1 - 14), acts, fill=PERSON_COLOUR)
        for garment in person["garments"]:
            if not garment["mask"]:  # an accessory from the detector: a box, no mask
                draw.rectangle(garment["box"], outline=GARMENT_COLOUR, width=1)
        kp = person.get("keypoints") or []
        for x, y, v in zip(kp[0::3], kp[1::3], kp[2::3]):
            if v >= 0.5:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 0, 255))
    objects = [o for o in row.get("objects") or [] if is_confident(o)]  # candidates are not labels
    for obj in objects:  # an accessory nobody holds: a box, as a held one
        draw.rectangle(obj["box"], outline=GARMENT_COLOUR, width=1)
    # garment names last, each on its own garment and clear of the others, on a dark plate
    garments = [g for person in row["persons"] for g in person["garments"]] + objects
    cues = [",".join(f"{k}:{v}" for k, v in attribute_map(g.get("attributes")).items()) for g in garments]
    # the cues in brackets: the default bitmap font's space is a pixel or two, too narrow to part words
    labels = [g["category"] + (f" ({c})" if c else "") for g, c in zip(garments, cues)]
    sizes = [_text_size(draw, label) for label in labels]
    anchors = [((g["box"][0] + g["box"][2]) / 2, (g["box"][1] + g["box"][3]) / 2) for g in garments]
    for label, (w, h), (x, y) in zip(labels, sizes, label_positions(anchors, sizes, out.width, out.height)):
        draw.rectangle([x - 1, y - 1, x + w + 1, y + h + 1], fill=(0, 0, 0))
        draw.text((x, y), label, fill=GARMENT_COLOUR)
    return out


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text)
    return right - left, bottom - top


def label_positions(
    anchors: list[tuple[float, float]], sizes: list[tuple[int, int]], width: int, height: int, gap: int = 2
) -> list[tuple[int, int]]:
    """Top-left corners for labels centred on their anchors, moved up or down (nearest free
    place first) so that no two overlap, and kept inside the image."""
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for (ax, ay), (w, h) in zip(anchors, sizes):
        x = int(min(max(0, ax - w / 2), max(0, width - w)))
        y0 = int(min(max(0, ay - h / 2), max(0, height - h)))
        step = h + gap
        tries = [y0] + [y0 + sign * k * step for k in range(1, 2 * len(anchors) + 2) for sign in (1, -1)]
        fits = [y for y in tries if 0 <= y <= max(0, height - h)]
        free = [
            y
            for y in fits
            if not any(
                x < px1 + gap and px0 < x + w + gap and y < py1 + gap and py0 < y + h + gap
                for px0, py0, px1, py1 in placed
            )
        ]
        y = (free or fits or [y0])[0]
        placed.append((x, y, x + w, y + h))
        out.append((x, y))
    return out


def action_text(person: dict, top: int = 3) -> str:
    """ "walk 0.92, carry/hold 0.61": a person's best actions (AVA names shortened at a bracket)."""
    return ", ".join(f"{a['action'].split(' (')[0]} {a['score']:.2f}" for a in (person.get("actions") or [])[:top])


def row_pixels(row: dict, options=None, max_pixels: int = 64_000_000) -> np.ndarray | None:
    """The row's image at original size: the photo, or the video frame decoded again."""
    if row["frame_index"] is not None:
        t = row["timestamp_s"]
        window = config.VideoSampling(every_n=1, start_s=max(0.0, t - 1e-3), end_s=t + 1e-3)
        pts = [p for i, p, _ in decoding.probe(row["uri"], window, options)["frames"] if i == row["frame_index"]]
        frame = next(decoding.decode_segment(row["uri"], pts, options), None) if pts else None
        return frame[1] if frame else None
    data = storage.fetch_many([row["uri"]], options)[0]
    if not isinstance(data, bytes):
        return None
    return media.decode_image(data, max_pixels=max_pixels, max_side=None).image


def write_preview(labels_uri: str, out_uri: str | None = None, limit: int = 24, options=None) -> str:
    """Render up to `limit` labelled images of a run; returns the URI of index.html."""
    out_uri = out_uri or storage.join(labels_uri, "preview")
    manifest = read_manifest(labels_uri, options)
    rows = []
    for shard_rows in iter_shard_rows(labels_uri, manifest, options):
        rows += [r for r in shard_rows if r["status"] == "ok"]
        if len(rows) >= limit:
            break
    cards = []
    for row in rows[:limit]:
        image = row_pixels(row, options, manifest["config"].get("max_pixels", 64_000_000))
        if image is None:
            continue
        name = f"{row['id']}.png"
        buf = io.BytesIO()
        render(image, row).save(buf, format="PNG")
        storage.write_bytes_atomic(storage.join(out_uri, name), buf.getvalue(), options)
        persons = sum(map(is_confident, row["persons"]))
        candidates = len(row["persons"]) - persons
        under_threshold = f", {_count(candidates, 'candidate')} under the threshold" if candidates else ""
        garments = sum(len(p["garments"]) for p in row["persons"])
        where = "" if row["frame_index"] is None else f" frame {row['frame_index']} at {row['timestamp_s']:.2f} s"
        tracks = sorted(p["track_id"] for p in row["persons"] if p.get("track_id") is not None)
        acts = "; ".join(html.escape(action_text(p)) for p in row["persons"] if p.get("actions"))
        cards.append(
            f'<figure><img src="{name}" width="360"><figcaption>{html.escape(row["uri"].rsplit("/", 1)[-1])}{where}: '
            f"{_count(persons, 'person')}{f' (tracks {tracks})' if tracks else ''}, {_count(garments, 'garment')}"
            f"{under_threshold}"
            f"{f'<br>actions: {acts}' if acts else ''}</figcaption></figure>"
        )
    legend = "".join(
        f'<span style="background:rgb{c};padding:2px 8px;margin:2px">{n}</span>' for n, c in PART_COLOURS.items()
    )
    page = (
        f"<!doctype html><meta charset=utf-8><title>fashion-ray preview</title>"
        f"<style>body{{font-family:sans-serif}}figure{{display:inline-block;margin:6px}}</style>"
        f"<h1>fashion-ray preview</h1><p>bundle {html.escape(manifest['bundle']['name'])}@"
        f"{html.escape(manifest['bundle']['version'])}; {manifest['counts']['inputs']} images, "
        f"{manifest['counts']['error']} errors. Parts: {legend} garments: white outline (accessories: white box), persons: cyan box.</p>"
        + "".join(cards)
    )
    index = storage.join(out_uri, "index.html")
    storage.write_bytes_atomic(index, page.encode(), options)
    return index


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


assert set(PART_COLOURS) == set(taxonomy.PARTS)
