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

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Predictor(Protocol):
    kind: str  # "detector" | "segmenter"

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]: ...


@dataclass(frozen=True)
class Device:
    """Where a stage runs. AMP is used only on CUDA, where fp16 autocast is safe for inference."""

    name: str = "cpu"  # "cpu" | "cuda"
    amp: bool = True
    torch_threads: int = 1

    def setup(self):
        import torch

        torch.set_num_threads(max(1, self.torch_threads))
        if self.name == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("stage configured for device 'cuda' but this actor sees no GPU (set num_gpus > 0)")
        return torch.device(self.name)

    def autocast(self):
        import contextlib

        import torch

        if self.name == "cuda" and self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()
