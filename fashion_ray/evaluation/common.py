"""Helpers the scorers share: annotations by image, prediction ids matched to the ground
truth's, means that skip missing values."""

from __future__ import annotations

import os

import numpy as np


def by_image(anns: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in anns:
        out.setdefault(a["image_id"], []).append(a)
    return out


def remap_image_ids(dt_images: list[dict], gt_ids, by_name: dict[str, int]) -> dict[int, int]:
    """Prediction image id -> ground-truth image id: same id, else same file name. A results
    list (no images) is taken as covering every ground-truth image."""
    if not dt_images:
        return {i: i for i in gt_ids}
    remap = {}
    for img in dt_images:
        target = img["id"] if img["id"] in gt_ids else by_name.get(os.path.basename(img.get("file_name", "")))
        if target is not None:
            remap[img["id"]] = target
    return remap


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
