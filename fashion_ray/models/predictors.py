"""Predictor interface shared by torchvision models and the bootstrap (pose-based) models.

A predictor is built once per Ray actor and called on a list of RGB uint8 images:

- detector.predict(images, context) -> one dict per image:
    boxes (N,4 float xyxy), scores (N,), labels (list[str]), masks (N,H,W bool) or None,
    keypoints (N,K,3) or None
- segmenter.predict(images, context) -> one dict per image:
    parts (H,W uint8, 0 = background, 1..6 = taxonomy.PARTS), sides (H,W uint8: 0 unknown,
    1 left, 2 right) or None

`context` carries, per image, what earlier stages know about the person in a crop
(its mask and keypoints in crop coordinates); models that do not need it ignore it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Predictor(Protocol):
    kind: str  # "detector" | "segmenter"

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]: ...
