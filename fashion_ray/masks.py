"""COCO RLE masks (pycocotools) as plain dicts {"size": [h, w], "counts": str}."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


def area(rle: dict) -> int:
    return int(mask_utils.area({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}))


def bbox_xyxy(mask: np.ndarray) -> list[float] | None:
    """Tight [x1, y1, x2, y2) box of a mask (row/column projections: no per-pixel index arrays)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def resize_rle(rle: dict, height: int, width: int) -> dict:
    """Nearest-neighbour resize of a mask to (height, width); identity when sizes match."""
    if list(rle["size"]) == [height, width]:
        return rle
    src = decode(rle)
    ys = np.minimum((np.arange(height) * src.shape[0] / height).astype(int), src.shape[0] - 1)
    xs = np.minimum((np.arange(width) * src.shape[1] / width).astype(int), src.shape[1] - 1)
    return encode(src[ys][:, xs])


def paste(crop_mask: np.ndarray, box_xyxy: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Place a crop-sized mask into a full-image canvas at integer box (x0, y0, x1, y1)."""
    canvas = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box_xyxy
    canvas[y0:y1, x0:x1] = crop_mask[: y1 - y0, : x1 - x0]
    return canvas
