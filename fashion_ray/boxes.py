"""Box helpers shared by the stages, the formats, tracking and training.

Boxes are [x0, y0, x1, y1] in pixels unless a name says otherwise (COCO's `bbox` is xywh).
"""

from __future__ import annotations

import math

import numpy as np

CROP_PAD = 0.1  # fraction of the person box added on each side before clothing/parts run


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4)."""
    ix0, iy0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    ix1, iy1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def xywh(box) -> list[float]:
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def crop_box(box, width: int, height: int, pad: float = CROP_PAD) -> tuple[int, int, int, int]:
    """The padded person crop the clothing and parts models see (training crops the same way)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * pad, (y1 - y0) * pad
    return (max(0, int(x0 - dx)), max(0, int(y0 - dy)), min(width, math.ceil(x1 + dx)), min(height, math.ceil(y1 + dy)))


def scale_box(box, scale: float, width: int, height: int):
    """A box at working resolution (`scale` x original) back in original pixels, clipped to the image."""
    if box is None:
        return None
    x0, y0, x1, y1 = (v / scale for v in box)
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


def owner(item, persons, reach: float = 0.25) -> int | None:
    """Index of the person a carried or worn item belongs to, or None.

    The item's share inside each person's box, grown by `reach` of the person's height on
    every side (a bag held at arm's length, a suitcase pulled beside), decides; between
    people who hold it equally, the one whose box centre is nearest. An item no grown box
    holds at least half of is nobody's (a suitcase standing alone).
    """
    ix0, iy0, ix1, iy1 = item
    area = max((ix1 - ix0) * (iy1 - iy0), 1e-9)
    best, best_key = None, None
    for k, (x0, y0, x1, y1) in enumerate(persons):
        grow = reach * (y1 - y0)
        w = max(0.0, min(ix1, x1 + grow) - max(ix0, x0 - grow))
        h = max(0.0, min(iy1, y1 + grow) - max(iy0, y0 - grow))
        share = w * h / area
        if share < 0.5:
            continue
        distance = math.hypot((ix0 + ix1 - x0 - x1) / 2, (iy0 + iy1 - y0 - y1) / 2) / max(y1 - y0, 1e-9)
        key = (round(share, 2), -distance)
        if best_key is None or key > best_key:
            best, best_key = k, key
    return best
