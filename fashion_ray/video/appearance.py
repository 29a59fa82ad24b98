"""What a person looks like, as a short colour descriptor a tracker can compare across frames.

At 1 frame per second a walker moves more than their own width between samples, so box
overlap alone cannot link them; their clothes' colours can. A descriptor is two colour
histograms of the person's mask pixels: the upper body (below the head) and the lower body,
so a white shirt over blue jeans differs from blue over white. Each half counts chromatic
pixels in hue x saturation bins and greys (low saturation or dark) in value bins, and is
normalised to sum 1 (all zeros where the half has no pixels).
"""

from __future__ import annotations

import numpy as np

HUE_BINS, SAT_BINS, GREY_BINS = 12, 2, 4
HALF = HUE_BINS * SAT_BINS + GREY_BINS
SIZE = 2 * HALF  # floats per descriptor (upper half, lower half)
BODY_BANDS = ((0.15, 0.55), (0.55, 1.0))  # fractions of the box height: below the head to the hips, hips down
MIN_SATURATION, MIN_VALUE = 0.25, 0.2  # below either, a pixel is a grey


def _histogram(hsv: np.ndarray) -> np.ndarray:
    """hsv: N x 3 floats (hue 0-360, saturation and value 0-1)."""
    out = np.zeros(HALF, np.float64)
    if len(hsv) == 0:
        return out
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    grey = (s < MIN_SATURATION) | (v < MIN_VALUE)
    colour = ~grey
    hue_bin = np.minimum((h[colour] / 360 * HUE_BINS).astype(int), HUE_BINS - 1)
    sat_bin = np.minimum(((s[colour] - MIN_SATURATION) / (1 - MIN_SATURATION) * SAT_BINS).astype(int), SAT_BINS - 1)
    np.add.at(out, hue_bin * SAT_BINS + sat_bin, 1)
    np.add.at(out, HUE_BINS * SAT_BINS + np.minimum((v[grey] * GREY_BINS).astype(int), GREY_BINS - 1), 1)
    return out / len(hsv)


def describe(image: np.ndarray, box, mask: np.ndarray | None = None) -> list[float]:
    """The descriptor of the person in `box` (x0, y0, x1, y1) of an RGB uint8 image; only
    mask pixels count where a mask is given (else the middle 60% of the box's width)."""
    import cv2

    height, width = image.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    halves = []
    for top, bottom in BODY_BANDS:
        ya, yb = y0 + int((y1 - y0) * top), y0 + int(np.ceil((y1 - y0) * bottom))
        if mask is not None:
            keep = mask[ya:yb, x0:x1]
        else:
            keep = np.zeros((max(0, yb - ya), max(0, x1 - x0)), bool)
            margin = int(0.2 * keep.shape[1])
            keep[:, margin : keep.shape[1] - margin] = True
        pixels = image[ya:yb, x0:x1][keep]
        hsv = (
            cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.float32) / 255, cv2.COLOR_RGB2HSV).reshape(-1, 3)
            if len(pixels)
            else np.zeros((0, 3), np.float32)
        )
        halves.append(_histogram(hsv))
    return [round(float(v), 4) for v in np.concatenate(halves)]


def similarity(a, b) -> float | None:
    """Bhattacharyya coefficient averaged over the body halves both descriptors have: 1 for
    the same colours, 0 for no colour in common; None when either is missing or empty."""
    if a is None or b is None or len(a) != SIZE or len(b) != SIZE:
        return None
    a, b = np.asarray(a, np.float64).reshape(2, HALF), np.asarray(b, np.float64).reshape(2, HALF)
    both = (a.sum(1) > 0) & (b.sum(1) > 0)
    if not both.any():
        return None
    a, b = a[both] / a[both].sum(1, keepdims=True), b[both] / b[both].sum(1, keepdims=True)
    return float(np.sqrt(a * b).sum(1).mean())


def blend(old, new, weight: float = 0.3) -> list[float]:
    """A track's running descriptor: the new observation mixed in with `weight`."""
    if old is None or len(old) != SIZE:
        return new
    if new is None or len(new) != SIZE:
        return old
    return [(1 - weight) * o + weight * n for o, n in zip(old, new)]
