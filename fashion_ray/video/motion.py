"""Where something moves in a static-camera video: candidate regions for the person stage.

A video segment's sampled frames (one decode task's worth) give their own background: the
per-pixel median over the frames, which a walker occupies in few of them. Pixels far from
it are foreground; joined up and split into components, they are boxes around moving
things, which the person stage looks at as extra candidates (a pedestrian too small or too
turned away for the pose model to anchor on in the whole image). A moving camera, a cut or
a light change turns most pixels foreground; such frames give no regions rather than
hundreds. Boxes are in the frames' own pixel coordinates.

`camera_shifts` measures the other case: how far the whole scene moved between consecutive
frames, the camera's pan that the actions stage takes out of a person's motion before it
calls them walking. Where the frame's border did not change the camera stood still (people
cross the middle; a pan changes the edges too); otherwise phase correlation of the frames'
grey levels gives the shift. The border test matters where the scene is plain: a textured
person moving over a flat wall is all phase correlation sees.
"""

from __future__ import annotations

import numpy as np

MIN_FRAMES = 5  # fewer frames make no trustworthy median
WORK_SIDE = 320  # long side the frames are reduced to (cheap, and denoises)
THRESHOLD = 30  # grey levels from the background that count as foreground
MAX_FOREGROUND = 0.25  # a frame with more foreground than this is not a static scene
MAX_REGIONS = 8  # per frame, largest first: bounds the person stage's extra work


def moving_regions(frames: list[np.ndarray]) -> list[list[list[float]]]:
    """For each RGB frame (all of one size, in time order), boxes [x0, y0, x1, y1] around what moves."""
    import cv2

    if len(frames) < MIN_FRAMES or len({f.shape for f in frames}) != 1:
        return [[] for _ in frames]
    height, width = frames[0].shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = np.stack(
        [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA) for f in frames]
    )
    background = np.median(grey, axis=0).astype(np.uint8)
    opening = np.ones((3, 3), np.uint8)
    joining = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 9))  # taller than wide: a body's parts join up
    out = []
    for frame in grey:
        foreground = (cv2.absdiff(frame, background) > THRESHOLD).astype(np.uint8)
        if foreground.mean() > MAX_FOREGROUND:
            out.append([])
            continue
        foreground = cv2.dilate(cv2.morphologyEx(foreground, cv2.MORPH_OPEN, opening), joining)
        n, _, stats, _ = cv2.connectedComponentsWithStats(foreground)
        blobs = sorted((s for s in stats[1:n] if s[3] >= 6 and s[4] >= 16), key=lambda s: -s[4])[:MAX_REGIONS]
        out.append(
            [
                [
                    float(x / scale),
                    float(y / scale),
                    float(min(width, (x + w) / scale)),
                    float(min(height, (y + h) / scale)),
                ]
                for x, y, w, h, _ in blobs
            ]
        )
    return out


MIN_RESPONSE = 0.05  # phase correlation's peak below this: no one shift explains the frames (a cut)
# share of the frame's outer tenth changed by more than BORDER_LEVELS grey levels below which
# the camera stood still (jobs/make_action_videos.py's videos, frames 1 s apart: static
# cameras <= 0.08, pans >= 0.29)
BORDER_LEVELS, STILL_BORDER = 15, 0.15


def _border(values: np.ndarray) -> np.ndarray:
    k = max(1, min(values.shape) // 10)
    return np.concatenate(
        [values[:k].ravel(), values[-k:].ravel(), values[k:-k, :k].ravel(), values[k:-k, -k:].ravel()]
    )


def camera_shifts(frames: list[np.ndarray]) -> list[tuple[float, float] | None]:
    """For each RGB frame (time order), how far (dx, dy px) the scene moved since the frame
    before: content at x in that frame is at x + dx in this one. None for the first frame,
    across a size change, or where no single shift fits (a cut, a flash)."""
    import cv2

    out: list[tuple[float, float] | None] = []
    previous, window = None, None
    for frame in frames:
        height, width = frame.shape[:2]
        scale = min(1.0, WORK_SIDE / max(height, width))
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        grey = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(
            np.float32
        )
        shift = None
        if previous is not None and previous.shape == grey.shape:
            if (_border(np.abs(grey - previous)) > BORDER_LEVELS).mean() < STILL_BORDER:
                shift = (0.0, 0.0)
            else:
                if window is None or window.shape != grey.shape:
                    window = cv2.createHanningWindow(size, cv2.CV_32F)  # edges do not wrap into the estimate
                (dx, dy), response = cv2.phaseCorrelate(previous, grey, window)
                if response >= MIN_RESPONSE:
                    shift = (float(dx) * width / size[0], float(dy) * height / size[1])
        out.append(shift)
        previous = grey
    return out
