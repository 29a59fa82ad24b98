"""torchvision architectures with weights from a bundle (never downloaded unless asked).

ARCHITECTURES maps an architecture name to (kind, builder). Builders take keyword-only
arguments and return an untrained model sized for the bundle's classes; weights always come
from the bundle's state dict, so nothing here needs a model hub. (Users with a network can
turn torchvision's pretrained weights into a bundle with models.bundle.save_bundle.)
"""

from __future__ import annotations

import numpy as np

from fashion_ray.config import Device
from fashion_ray.models.bundle import load_state_dict

DETECTOR_OPTIONS = (
    "num_keypoints",
    "box_detections_per_img",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test",
    "box_nms_thresh",
    "detections_per_img",
)


def _detector(fn_name: str):
    def build(*, num_classes: int, input_size: int, model_options: dict):
        from torchvision.models import detection

        kwargs = {
            "weights": None,
            "weights_backbone": None,
            "num_classes": num_classes,
            "min_size": input_size,
            "max_size": int(input_size * 1333 / 800),
        }
        # e.g. num_keypoints, box_detections_per_img (cap on instances per image), rpn_*_top_n_test
        kwargs.update({k: v for k, v in model_options.items() if k in DETECTOR_OPTIONS})
        return getattr(detection, fn_name)(**kwargs)

    return build


def _maskrcnn_mobilenet(*, num_classes: int, input_size: int, model_options: dict):
    """Mask R-CNN on the MobileNetV3-Large FPN backbone: the fast CPU/student clothing model."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", fpn=True, weights=None, trainable_layers=6)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    kwargs = {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05}
    kwargs.update({k: v for k, v in model_options.items() if k in DETECTOR_OPTIONS})
    return MaskRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=anchors,
        min_size=input_size,
        max_size=int(input_size * 1333 / 800),
        **kwargs,
    )


def _segmenter(fn_name: str):
    def build(*, num_classes: int, input_size: int, model_options: dict):
        from torchvision.models import segmentation

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if fn_name != PART_SEGMENTER:
            kwargs["aux_loss"] = False
        return getattr(segmentation, fn_name)(**kwargs)

    return build


# the small ones each stage trains by default (jobs/train.py) and the random-weight benchmark bundle uses
PERSON_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
GARMENT_DETECTOR = "maskrcnn_mobilenet_v3_large_fpn"
PART_SEGMENTER = "lraspp_mobilenet_v3_large"

ARCHITECTURES = {
    "fasterrcnn_resnet50_fpn": ("detector", _detector("fasterrcnn_resnet50_fpn")),
    "fasterrcnn_resnet50_fpn_v2": ("detector", _detector("fasterrcnn_resnet50_fpn_v2")),
    "fasterrcnn_mobilenet_v3_large_fpn": ("detector", _detector("fasterrcnn_mobilenet_v3_large_fpn")),
    PERSON_DETECTOR: ("detector", _detector(PERSON_DETECTOR)),
    "maskrcnn_resnet50_fpn": ("detector", _detector("maskrcnn_resnet50_fpn")),
    "maskrcnn_resnet50_fpn_v2": ("detector", _detector("maskrcnn_resnet50_fpn_v2")),
    GARMENT_DETECTOR: ("detector", _maskrcnn_mobilenet),
    "keypointrcnn_resnet50_fpn": ("detector", _detector("keypointrcnn_resnet50_fpn")),
    "retinanet_resnet50_fpn": ("detector", _detector("retinanet_resnet50_fpn")),
    "retinanet_resnet50_fpn_v2": ("detector", _detector("retinanet_resnet50_fpn_v2")),
    "fcos_resnet50_fpn": ("detector", _detector("fcos_resnet50_fpn")),
    "deeplabv3_resnet50": ("segmenter", _segmenter("deeplabv3_resnet50")),
    "deeplabv3_mobilenet_v3_large": ("segmenter", _segmenter("deeplabv3_mobilenet_v3_large")),
    PART_SEGMENTER: ("segmenter", _segmenter(PART_SEGMENTER)),
    "fcn_resnet50": ("segmenter", _segmenter("fcn_resnet50")),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(architecture: str, *, num_classes: int, input_size: int, model_options: dict | None = None):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (valid: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[architecture][1](
        num_classes=num_classes, input_size=input_size, model_options=model_options or {}
    )


class TorchvisionDetector:
    """Runs a torchvision detection model; classes[i] is label i + 1 (0 is background)."""

    kind = "detector"

    def __init__(self, model, classes, *, score_threshold: float, mask_threshold: float, device: Device):
        self.device_cfg = device
        self.device = device.setup()
        self.model = model.eval().to(self.device)
        self.classes = tuple(classes)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        import torch

        if not images:
            return []
        with torch.inference_mode(), self.device_cfg.autocast():
            tensors = [
                torch.from_numpy(np.array(img)).to(self.device, non_blocking=True).permute(2, 0, 1).float().div_(255)
                for img in images
            ]
            outputs = self.model(tensors)
        results = []
        for out in outputs:
            keep = (out["scores"] >= self.score_threshold).nonzero().flatten()
            labels = out["labels"][keep].tolist()
            valid = [i for i, lab in enumerate(labels) if 1 <= lab <= len(self.classes)]
            keep = keep[valid]
            masks = out.get("masks")
            kps = out.get("keypoints")
            results.append(
                {
                    "boxes": out["boxes"][keep].float().cpu().numpy(),
                    "scores": out["scores"][keep].float().cpu().numpy(),
                    "labels": [self.classes[labels[i] - 1] for i in valid],
                    "masks": (masks[keep, 0] >= self.mask_threshold).cpu().numpy() if masks is not None else None,
                    "keypoints": kps[keep].float().cpu().numpy() if kps is not None else None,
                }
            )
        return results


class TorchvisionSegmenter:
    """Runs a torchvision semantic segmentation model at input_size x input_size."""

    kind = "segmenter"

    def __init__(self, model, classes, *, input_size: int, device: Device):
        import torch

        self.device_cfg = device
        self.device = device.setup()
        self.model = model.eval().to(self.device)
        self.classes = tuple(classes)
        self.input_size = input_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        import torch
        import torch.nn.functional as F

        if not images:
            return []
        size = (self.input_size, self.input_size)
        with torch.inference_mode(), self.device_cfg.autocast():
            batch = torch.stack(
                [
                    F.interpolate(
                        torch.from_numpy(np.array(img)).to(self.device).permute(2, 0, 1)[None].float().div_(255),
                        size=size,
                        mode="bilinear",
                        align_corners=False,
                    )[0]
                    for img in images
                ]
            )
            logits = self.model((batch - self.mean) / self.std)["out"].float()
        results = []
        for img, lg in zip(images, logits):
            up = F.interpolate(lg[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
            results.append({"parts": up.argmax(0).to(torch.uint8).cpu().numpy(), "sides": None})
        return results


def build_predictor(bundle, spec, *, device: Device, storage_options=None):
    """A predictor of a bundle's stage, its weights sha256-checked and loaded weights_only."""
    state_dict = load_state_dict(bundle, spec, storage_options) if spec.weights else None
    kind = ARCHITECTURES[spec.architecture][0]
    # detectors count background; segmenters' classes already include it as label 0
    num_classes = len(spec.classes) + 1
    model = build_model(
        spec.architecture, num_classes=num_classes, input_size=spec.input_size, model_options=spec.model_options
    )
    if state_dict is not None:
        model.load_state_dict(state_dict)
    if kind == "detector":
        return TorchvisionDetector(
            model, spec.classes, score_threshold=spec.score_threshold, mask_threshold=spec.mask_threshold, device=device
        )
    return TorchvisionSegmenter(model, spec.classes, input_size=spec.input_size, device=device)
