"""The garment parser: real garment classes per pixel on each person crop, then instances.

    person crop -> a view (v2: 384x256 portrait; 1.1: 256x256 square) -> network -> parse map
    (taxonomy.GARMENT_PARSE) + presence per class (v2) -> classes the person does not wear
    dropped (presence gate) -> one outfit (settle_pieces) -> one garment per class present
    (each connected component for shoes and bags: two shoes, two garments), none for a class
    whose body part is out of view or that the landmarks place where it cannot be (misplaced)
    -> top / outwear / dress named by sleeve length from the arm landmarks (DeepFashion2).

Networks: v2 (`efficientnet_garment_parser`, models/efficientnet_lite.py) is one model trained
end to end from ImageNet weights; 1.1's (`blazepose_garment_parser`) is a small head on
BlazePose heavy's frozen features (the person stage's own pose model), kept for bundles that
name it. docs/evaluation.md, "Garments", compares both on the same photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fashion_ray import taxonomy
from fashion_ray.models import onnx

VIEW_SIDE = 256  # BlazePose's input
# BlazePose heavy tensors the head reads (names from the converted graph): decoder at 1/4
# (fused, pose-aware), encoder at 1/4, 1/16 and 1/32, the mask decoder at 1/2, the 39 landmark
# heatmaps at 1/4 and the person mask.
TRUNK_OUTPUTS = {
    "decoder4": "StatefulPartitionedCall/model/add_25/add:0",
    "encoder4": "StatefulPartitionedCall/model/add_2/add:0",
    "encoder16": "StatefulPartitionedCall/model/add_15/add:0",
    "encoder32": "StatefulPartitionedCall/model/add_22/add:0",
    "mask2": "StatefulPartitionedCall/model/add_70/add:0",
    "heatmap": "StatefulPartitionedCall/model/activation_heatmap/Sigmoid:0",
    "mask": "StatefulPartitionedCall/model/activation_segmentation/Sigmoid:0",
}
PERSON_REACH = 0.04  # of the crop's long side: how far past the person mask a garment may reach
MIN_INSTANCE_FRACTION = 0.001  # of the crop's long side squared: specks below this are not garments
GARMENT_VALUES = [v for v, name in enumerate(taxonomy.GARMENT_PARSE) if name not in taxonomy.NOT_GARMENTS]
# the garment categories the parser writes (its classes are parse classes; these are what rows hold)
WRITTEN = tuple(
    dict.fromkeys(
        taxonomy.SLEEVED[name][sleeve] if name in taxonomy.SLEEVED else name
        for name in (taxonomy.GARMENT_PARSE[v] for v in GARMENT_VALUES)
        for sleeve in ("none", "short", "long")
    )
)


@dataclass(frozen=True)
class View:
    """Where a crop sits in the parser's input: crop pixels (x, y) -> ((x - x0) * scale, (y - y0) * scale)."""

    x0: float
    y0: float
    scale: float
    height: int  # the input's size in pixels
    width: int

    def matrix(self) -> np.ndarray:
        k = self.scale
        return np.array([[k, 0, -self.x0 * k], [0, k, -self.y0 * k]], np.float32)


def view_of(
    height: int,
    width: int,
    out_height: int = VIEW_SIDE,
    out_width: int | None = None,
    zoom: float = 1.0,
    shift=(0.0, 0.0),
) -> View:
    """The whole crop fitted into an out_height x out_width input, aspect kept, centred;
    zoom < 1 shows more around it, shift moves it (fractions of the input; training jitter)."""
    out_width = out_width or out_height
    scale = min(out_height / max(height, 1), out_width / max(width, 1)) * zoom
    x0 = (width - out_width / scale) / 2 - shift[0] * out_width / scale
    y0 = (height - out_height / scale) / 2 - shift[1] * out_height / scale
    return View(x0, y0, scale, out_height, out_width)


def warp_to_view(image: np.ndarray, view: View, nearest: bool = False, fill: int = 0) -> np.ndarray:
    import cv2

    return cv2.warpAffine(
        image,
        view.matrix(),
        (view.width, view.height),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderValue=fill,
    )


def warp_from_view(values: np.ndarray, view: View, height: int, width: int, nearest: bool = False) -> np.ndarray:
    import cv2

    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(values, view.matrix(), (width, height), flags=flags)


def trunk_model(pose_onnx: bytes) -> bytes:
    """The BlazePose graph with the head's feature tensors as its outputs (nothing retrained)."""
    model = onnx.model_proto(pose_onnx)
    del model.graph.output[:]
    for name in TRUNK_OUTPUTS.values():
        model.graph.output.add(name=name).type.tensor_type.elem_type = onnx.FLOAT  # shape left to the runtime
    return model.SerializeToString()


class BlazePoseTrunk:
    """Frozen features of BlazePose heavy for batches of 256x256 RGB uint8 views."""

    def __init__(self, pose_onnx: bytes, *, device: str = "cpu", threads: int = 1, max_batch: int = 8):
        self.session = onnx.session(trunk_model(pose_onnx), device, threads)
        self.max_batch = max(1, max_batch)

    def __call__(self, views: np.ndarray) -> dict[str, np.ndarray]:
        out = onnx.run_batched(self.session, views.astype(np.float32) / 255.0, self.max_batch)
        return {key: out[name] for key, name in TRUNK_OUTPUTS.items()}


def build_head(num_classes: int = len(taxonomy.GARMENT_PARSE)):
    """GarmentHead: fuses the trunk's scales at 1/4, refines at 1/2 with the mask decoder and RGB."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(cin, cout, k=3, dilation=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class GarmentHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fine = block(48 + 32 + 39 + 1, 64, 1)
            self.context16 = block(160, 64, 1)
            self.context32 = block(272, 64, 1)
            self.fuse = nn.Sequential(block(64, 64), block(64, 64, dilation=2), block(64, 64, dilation=4))
            self.classify4 = nn.Conv2d(64, num_classes, 1)
            self.refine = nn.Sequential(block(num_classes + 8 + 3, 32), nn.Conv2d(32, num_classes, 3, padding=1))

        def forward(self, f: dict) -> "torch.Tensor":
            """Logits at half the view's resolution (128x128)."""
            quarter = f["decoder4"].shape[-2:]
            mask4 = F.interpolate(f["mask"], size=quarter, mode="bilinear", align_corners=False)
            x = self.fine(torch.cat([f["decoder4"], f["encoder4"], f["heatmap"], mask4], 1))
            c = self.context16(f["encoder16"]) + F.interpolate(
                self.context32(f["encoder32"]), scale_factor=2.0, mode="bilinear", align_corners=False
            )
            x = self.fuse(x + F.interpolate(c, size=quarter, mode="bilinear", align_corners=False))
            coarse = F.interpolate(self.classify4(x), scale_factor=2.0, mode="bilinear", align_corners=False)
            rgb = F.interpolate(f["rgb"], size=coarse.shape[-2:], mode="bilinear", align_corners=False)
            return coarse + self.refine(torch.cat([coarse, f["mask2"], rgb], 1))

    return GarmentHead()


def head_inputs(trunk: BlazePoseTrunk, views: np.ndarray, device) -> dict:
    """Trunk features + the views themselves (normalised RGB) as torch tensors on `device`."""
    import torch

    features = {k: torch.from_numpy(v).to(device) for k, v in trunk(views).items()}
    features["rgb"] = torch.from_numpy(views).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return features


# garment instances -----------------------------------------------------------------------------

# MediaPipe landmark indices (subject's left / right): shoulder, elbow, wrist
ARMS = ((11, 13, 15), (12, 14, 16))
VISIBLE = 0.5


def _coverage_along(mask: np.ndarray, a, b, samples: int = 12) -> float:
    """Fraction of points on the segment a -> b (its middle 80 %) that fall inside `mask`."""
    h, w = mask.shape
    t = np.linspace(0.1, 0.9, samples)[:, None]
    pts = (np.asarray(a)[None] * (1 - t) + np.asarray(b)[None] * t).round().astype(int)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    if not inside.any():
        return 0.0
    pts = pts[inside]
    return float(mask[pts[:, 1], pts[:, 0]].mean())


def sleeve_length(garment: np.ndarray, keypoints: np.ndarray | None, default: str = "long") -> str:
    """ "none" | "short" | "long" from where the garment covers the arms' bones.

    Per visible arm: the forearm (elbow -> wrist) mostly covered = long; else the upper arm
    (shoulder -> elbow) partly covered = short; else none. The arm with the longest sleeve
    wins (the other may be hidden behind the body or a bag). No visible arm: `default`.
    """
    if keypoints is None:
        return default
    order = {"none": 0, "short": 1, "long": 2}
    found = []
    for shoulder, elbow, wrist in ARMS:
        if keypoints[shoulder, 2] < VISIBLE or keypoints[elbow, 2] < VISIBLE:
            continue
        upper = _coverage_along(garment, keypoints[shoulder, :2], keypoints[elbow, :2])
        lower = (
            _coverage_along(garment, keypoints[elbow, :2], keypoints[wrist, :2])
            if keypoints[wrist, 2] >= VISIBLE
            else None
        )
        if lower is not None and lower >= 0.5:
            found.append("long")
        elif upper >= 0.4:
            found.append("short")
        else:
            found.append("none")
    return max(found, key=order.get) if found else default


# classes a person wears more than one of: each connected component is a garment (two shoes);
# any other class is one garment per person, its pieces (a top cut in two by a bag strap) together
PAIRED = ("shoes", "bag")
MIN_PIECE_SHARE = 0.1  # of the class's largest piece: smaller pieces are specks of another class
# where a class can be, from the person's landmarks: the body part it sits on must be in view
NEEDS_LANDMARKS = {
    "skirt": (23, 24),
    "shorts": (23, 24),
    "trousers": (23, 24),
    "shoes": (27, 28, 29, 30, 31, 32),
    "glasses": (2, 5),
    "hat": (0, 2, 5, 7, 8),
}


def _in_view(keypoints: np.ndarray | None, indices, height: int, width: int) -> bool:
    """Any of the landmarks visible and inside the crop (no keypoints: nothing to say against it)."""
    if keypoints is None:
        return True
    kp = keypoints[list(indices)]
    return bool(
        ((kp[:, 2] >= VISIBLE) & (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)).any()
    )


def _seen_y(keypoints: np.ndarray, indices) -> float | None:
    """Mean height (y) of the visible landmarks among `indices`, or None."""
    kp = keypoints[list(indices)]
    kp = kp[kp[:, 2] >= VISIBLE]
    return float(kp[:, 1].mean()) if len(kp) else None


EYES, MOUTH, SHOULDERS, HIPS = (2, 5), (9, 10), (11, 12), (23, 24)


def _face_unit(keypoints: np.ndarray, eyes: float | None, mouth: float | None) -> float | None:
    """Eyes-to-mouth height (about a third of a face), or the eyes' spacing when the mouth is
    hidden; `eyes` and `mouth` are their mean heights (_seen_y)."""
    if eyes is not None and mouth is not None and mouth > eyes:
        return mouth - eyes
    if (keypoints[list(EYES), 2] >= VISIBLE).all():
        return float(abs(keypoints[EYES[0], 0] - keypoints[EYES[1], 0])) or None
    return None


HAT_TOP_ABOVE_EYES = 1.4  # face units: a hat reaches the top of the head; a forehead stops ~1 unit up
SCARF_BELOW_MOUTH = 0.8  # face units: a scarf's middle is at the neck or lower, not the chin


def misplaced(name: str, mask: np.ndarray, keypoints: np.ndarray | None) -> str | None:
    """Why a garment cannot be where its mask is on this person's body, or None.

    From the person's own landmarks: a hat reaches above the forehead (a forehead is not a
    hat), a scarf's middle is below the chin (a face or chin is not a scarf), glasses sit
    over an eye, and trousers, shorts and skirts below the waist. No landmarks (none found,
    or a collapsed pose): nothing to say against it.
    """
    if keypoints is None:
        return None
    ys, xs = np.nonzero(mask)
    centre_y = float(ys.mean())
    eyes, mouth = _seen_y(keypoints, EYES), _seen_y(keypoints, MOUTH)
    unit = _face_unit(keypoints, eyes, mouth)
    if name == "hat" and eyes is not None and unit and (centre_y > eyes or ys.min() > eyes - HAT_TOP_ABOVE_EYES * unit):
        return "a hat on the face or forehead"
    if name == "scarf" and mouth is not None and unit and centre_y < mouth + SCARF_BELOW_MOUTH * unit:
        return "a scarf on the face or chin"
    if name == "glasses":
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        pad = 0.3 * max(x1 - x0, y1 - y0, 1)
        seen = keypoints[list(EYES)]
        seen = seen[seen[:, 2] >= VISIBLE]
        if (
            len(seen)
            and not (
                (seen[:, 0] >= x0 - pad)
                & (seen[:, 0] <= x1 + pad)
                & (seen[:, 1] >= y0 - pad)
                & (seen[:, 1] <= y1 + pad)
            ).any()
        ):
            return "glasses away from the eyes"
    if name in ("trousers", "shorts", "skirt"):
        shoulders, hips = _seen_y(keypoints, SHOULDERS), _seen_y(keypoints, HIPS)
        if shoulders is not None and hips is not None and hips > shoulders and centre_y < (shoulders + hips) / 2:
            return "legwear above the waist"
    return None


def settle_pieces(parse: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
    """One outfit, not two at once: a dress beside a skirt is one garment, the larger of the
    two (a dress's skirt part read as skirt, or a skirt's top read as dress); a "dress" that
    ends above the person's hips is a top."""
    dress, skirt, top = (taxonomy.GARMENT_PARSE.index(c) for c in ("dress", "skirt", "top"))
    has_dress, has_skirt = (parse == dress).sum(), (parse == skirt).sum()
    if has_dress and has_skirt:
        loser, winner = (skirt, dress) if has_dress >= has_skirt else (dress, skirt)
        parse = np.where(parse == loser, winner, parse)
    hips = _seen_y(keypoints, HIPS) if keypoints is not None else None
    rows = np.nonzero((parse == dress).any(1))[0]
    if hips is not None and len(rows) and rows[-1] < hips:
        parse = np.where(parse == dress, top, parse)
    return parse


def garment_instances(
    parse: np.ndarray, confidence: np.ndarray, keypoints: np.ndarray | None, min_pixels: int, score_threshold: float
) -> dict:
    """Parse map (crop pixels) -> detector output: a garment per class, or per connected
    component for PAIRED classes; a class whose body part is out of view is left out (a
    waist-up portrait has no trousers, whatever the pixels at its bottom edge look like), and
    so is one the person's landmarks place where it cannot be (`misplaced`)."""
    import cv2

    h, w = parse.shape
    parse = settle_pieces(parse, keypoints)
    boxes, scores, labels, masks, attributes = [], [], [], [], []
    for value in GARMENT_VALUES:
        present = parse == value
        name = taxonomy.GARMENT_PARSE[value]
        out_of_view = name in NEEDS_LANDMARKS and not _in_view(keypoints, NEEDS_LANDMARKS[name], h, w)
        if present.sum() < min_pixels or out_of_view:
            continue
        n, components, stats, _ = cv2.connectedComponentsWithStats(present.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = [c + 1 for c, area in enumerate(areas) if area >= max(min_pixels, MIN_PIECE_SHARE * areas.max())]
        if not keep:  # enough pixels, but all of them specks
            continue
        worn = np.isin(components, keep)
        if misplaced(name, worn, keypoints):
            continue
        pieces = [components == c for c in keep] if name in PAIRED else [worn]
        sleeve = sleeve_length(worn, keypoints) if name in taxonomy.SLEEVED else None
        for mask in pieces:
            score = float(confidence[mask].mean())
            if score < score_threshold:
                continue
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            scores.append(score)
            labels.append(taxonomy.SLEEVED[name][sleeve] if sleeve else name)
            masks.append(mask)
            attributes.append([f"sleeve:{sleeve}"] if sleeve else [])
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "labels": labels,
        "masks": np.stack(masks) if masks else np.zeros((0, h, w), bool),
        "keypoints": None,
        "attributes": attributes,
    }


def _grown(mask: np.ndarray, pixels: float) -> np.ndarray:
    import cv2

    k = max(1, int(round(pixels))) * 2 + 1
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)


class GarmentParser:
    """Clothing stage predictor: person crops (+ their landmarks from context) -> garments.

    `network` maps a batch of uint8 views to per-pixel class probabilities (N, C, H, W) and,
    for parsers that have one, per-class presence probabilities (N, C); a class whose presence
    is under `presence_threshold` is not written, whatever its pixels say.
    """

    kind = "detector"

    def __init__(
        self, network, view_hw: tuple[int, int], *, score_threshold: float = 0.0, presence_threshold: float = 0.0
    ):
        self.network, self.view_hw = network, view_hw
        self.score_threshold, self.presence_threshold = score_threshold, presence_threshold

    def parse(self, crops: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(parse map, confidence, presence or None) per crop, in crop pixels."""
        if not crops:
            return []
        views = [view_of(*c.shape[:2], *self.view_hw) for c in crops]
        prob, presence = self.network(np.stack([warp_to_view(c, v) for c, v in zip(crops, views)]))
        labels, confidence = prob.argmax(1), prob.max(1)
        presence = [None] * len(crops) if presence is None else presence
        out = []
        for crop, view, lab, conf, pres in zip(crops, views, labels, confidence, presence):
            h, w = crop.shape[:2]
            out.append(
                (
                    warp_from_view(lab.astype(np.uint8), view, h, w, nearest=True),
                    warp_from_view(conf.astype(np.float32), view, h, w),
                    pres,
                )
            )
        return out

    def predict(self, images: list[np.ndarray], context: list[dict] | None = None) -> list[dict]:
        contexts = context or [{}] * len(images)
        results = []
        for image, ctx, (parse, confidence, presence) in zip(images, contexts, self.parse(images)):
            h, w = image.shape[:2]
            if ctx.get("mask") is not None and ctx["mask"].any():
                # a neighbour inside the crop wears their own clothes: keep what touches this
                # person (the mask grown a little: a bag held out, a hat brim)
                parse = np.where(_grown(ctx["mask"], PERSON_REACH * max(h, w)), parse, 0)
            absent = []
            if presence is not None:  # classes the person does not wear, whatever their pixels
                absent = [v for v in GARMENT_VALUES if presence[v] < self.presence_threshold]
                parse = np.where(np.isin(parse, absent), 0, parse)
            min_pixels = max(8, int(MIN_INSTANCE_FRACTION * max(h, w) ** 2))
            result = garment_instances(parse, confidence, ctx.get("keypoints"), min_pixels, self.score_threshold)
            # the person detector's bags of this person go too (stages.attach_garments); its ties
            # stay: 13 of the 703 training photos have one, too few for the head to tell
            result["absent"] = [
                taxonomy.GARMENT_PARSE[v] for v in absent if taxonomy.GARMENT_PARSE[v] in GATES_DETECTOR
            ]
            results.append(result)
        return results


# A parser's network: uint8 NHWC views -> (per-pixel class probabilities N x C x H x W, per-class
# presence probabilities N x C or None), float32 numpy arrays whichever runtime computed them


def blazepose_network(trunk: BlazePoseTrunk, head, device):
    """1.1's parser as a network: the head on the frozen trunk's features; no presence."""
    import torch

    def run(views: np.ndarray):
        with torch.inference_mode():
            logits = head(head_inputs(trunk, views, device))
            prob = torch.nn.functional.interpolate(
                logits.float(), size=views.shape[1:3], mode="bilinear", align_corners=False
            ).softmax(1)
            return prob.cpu().numpy(), None

    return run


def efficientnet_network(model, device):
    """Parser v2 as a network: one end-to-end model, pixels and presence."""
    import torch

    from fashion_ray.models.efficientnet_lite import normalise

    def run(views: np.ndarray):
        with torch.inference_mode():
            out = model(torch.from_numpy(normalise(views)).to(device))
            return out["out"].float().softmax(1).cpu().numpy(), torch.sigmoid(out["presence"].float()).cpu().numpy()

    return run


def efficientnet_onnx_network(session, max_batch: int):
    """Parser v2 exported to ONNX (on CPUs): the same outputs as efficientnet_network, and no torch
    in the process (a clothing actor starts 2.4 CPU-s cheaper and a few hundred MB smaller)."""
    from fashion_ray.models.efficientnet_lite import normalise

    def run(views: np.ndarray):
        out = onnx.run_batched(session, normalise(views), max_batch)
        logits = out["out"] - out["out"].max(1, keepdims=True)  # a softmax over classes that cannot overflow
        prob = np.exp(logits)
        prob /= prob.sum(1, keepdims=True)
        return prob, 1.0 / (1.0 + np.exp(-out["presence"]))

    return run


BLAZEPOSE_PARSER = "blazepose_garment_parser"
EFFICIENTNET_PARSER = "efficientnet_garment_parser"
ARCHITECTURES = (BLAZEPOSE_PARSER, EFFICIENTNET_PARSER)
PRESENCE_THRESHOLD = 0.5  # bundle option presence_threshold overrides it
GATES_DETECTOR = ("bag",)  # absent classes whose person-detector accessories are removed too


def parser_view(architecture: str, input_size: int) -> tuple[int, int]:
    """(height, width) of a parser's input: 1.1 sees BlazePose's square; v2 a portrait of
    input_size x 2/3 of it, the shape of a standing person's crop (more pixels on the person
    than a square of the same cost)."""
    return (input_size, input_size) if architecture == BLAZEPOSE_PARSER else (input_size, input_size * 2 // 3)


def build_predictor(bundle, spec, *, device, storage_options=None):
    """The parser of a bundle's clothing stage, its files sha256-checked and loaded weights_only."""
    import io

    from fashion_ray.models.bundle import BundleError, read_checked

    if not spec.weights:
        raise BundleError(f"bundle {bundle.label}: {spec.architecture} needs weights")
    # read (and its sha256 checked) whichever path runs: the ONNX parser is made from these weights
    weights = read_checked(bundle, spec.weights, spec.sha256, storage_options)

    def state():
        import torch

        return torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)

    view = parser_view(spec.architecture, spec.input_size or VIEW_SIDE)
    if spec.architecture == EFFICIENTNET_PARSER:
        graph = spec.model_options.get("files", {}).get("parser_onnx")
        if device.name == "cpu" and graph and spec.model_options.get("cpu_onnx", True):
            # the same parser exported by jobs/make_cpu_models.py: onnxruntime makes the stage
            # 1.33x cheaper on one CPU thread, the same garments (GPUs keep torch, for AMP)
            session = onnx.session(
                read_checked(bundle, graph["path"], graph["sha256"], storage_options), "cpu", device.torch_threads
            )
            network = efficientnet_onnx_network(session, int(spec.model_options.get("max_batch", 8)))
        else:
            from fashion_ray.models.efficientnet_lite import build_parser

            torch_device = device.setup()
            model = build_parser(len(spec.classes))
            model.load_state_dict(state())
            network = efficientnet_network(model.eval().to(torch_device), torch_device)
        return GarmentParser(
            network,
            view,
            score_threshold=spec.score_threshold,
            presence_threshold=float(spec.model_options.get("presence_threshold", PRESENCE_THRESHOLD)),
        )
    trunk_file = spec.model_options.get("files", {}).get("trunk")
    if not trunk_file:
        raise BundleError(f"bundle {bundle.label}: {BLAZEPOSE_PARSER} needs options.files.trunk")
    trunk = BlazePoseTrunk(
        read_checked(bundle, trunk_file["path"], trunk_file["sha256"], storage_options),
        device=device.name,
        threads=device.torch_threads,
        max_batch=int(spec.model_options.get("max_batch", 8)),
    )
    torch_device = device.setup()
    head = build_head(len(spec.classes))
    head.load_state_dict(state())
    return GarmentParser(
        blazepose_network(trunk, head.eval().to(torch_device), torch_device), view, score_threshold=spec.score_threshold
    )
