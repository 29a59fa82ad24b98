"""NanoDet-g 416 (COCO 80 classes, GFL head), converted to ONNX: preprocess -> run -> postprocess.

- preprocess: letterbox into 416x416 (ratio kept, image at the top-left, black padding), BGR,
  (x - mean) / std with the values NanoDet was trained with (RGB/255 gives junk);
- run: onnxruntime, every view of every image of the actor's batch (full frames, tiles, video
  regions) letterboxed alike and run in batches of up to `max_batch`;
- postprocess: per stride 8/16/32, class scores (sigmoid already in the graph) and 4 sides x
  11 distance bins: softmax over the bins, expectation, times the stride, from the cell
  centre; class-wise NMS at IoU 0.6.

Small people: the model sees every image at 416 px, so a person under ~28 px there is lost.
`plan_zoom` decides per image from its size and the smallest person height wanted whether the
whole image is seen once more, larger (a zoom view: the graph is fully convolutional, its
declared 416 px input is made free at load, `any_input_size`); with zoom off
(`max_input_side` 416), `plan_tiles` plans overlapping tiles seen at 416 px instead. Either
way `merge_tiles` keeps a full-frame box over the pieces of the same object that a tile cut
or that the zoom view, too large for NanoDet's largest box, saw apart; a person only the zoom
view finds scores a little less (ZOOM_ONLY_DISCOUNT).

Candidates: with a `candidate_floor` under the person threshold, the same views also give the
persons scored between the two (`person_candidates`): users who filter by score get them, the
confident persons are exactly those a run without the floor finds.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fashion_ray.boxes import box_iou_matrix
from fashion_ray.models import onnx

INPUT_SIDE = 416
STRIDES = (8, 16, 32)
REG_BINS = 11  # reg_max 10: distances 0..10 strides
MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)
NMS_IOU = 0.6
# the input height (px) from which NanoDet-g finds people reliably (measured: 60-90 px people
# in 768 px street frames are found at full frame, 31-43 px ones with 2x2 tiles)
MIN_INPUT_PERSON = 28.0
TILE_OVERLAP = 0.25  # of a tile's side: a person shorter than that is whole in some tile
CLAIM_SCORE_RATIO = 0.5  # a box takes a tile box as its piece only when it scores at least half as high
# full frames of tiled (or zoomed) images keep boxes down to this share of the threshold for
# merge_tiles: 0.4 of 0.5 is the candidate floor, where a tall woman's whole box was (0.23)
FAINT_RATIO = 0.4
# a person only the zoom view finds (no full-frame box down to the candidate floor at IoU 0.5)
# scores its zoom score / 1.2: on COCO128 + Penn-Fudan such persons at 0.5-0.6 were 3 right of 14,
# at 0.6 and over 15 of 18 (the rest of the zoom's persons: 80 % right)
ZOOM_ONLY_DISCOUNT = 1.2

# COCO's 0-based class index of what the cascade uses
COCO_CLASSES = {0: "person", 24: "backpack", 25: "umbrella", 26: "handbag", 27: "tie", 28: "suitcase"}


def letterbox(image: np.ndarray, side: int = INPUT_SIDE, *, tight: bool = False) -> tuple[np.ndarray, float]:
    """RGB HxWx3 uint8 -> (1x3xSxS float32 normalised BGR, scale); image x = input x / scale.
    `tight`: the canvas is the resized image rounded up to the largest stride (1x3xHxW, long
    side S), not a square: a zoom view of a landscape photo pays for no padding."""
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ch, cw = _input_shape(image.shape, side, tight=tight)
    canvas = np.empty((3, ch, cw), np.float32)
    canvas[:] = (-MEAN_BGR / STD_BGR)[:, None, None]  # padding is black, as in training
    for c in range(3):  # plane by plane, in place: a 1280 px zoom view in 6 ms instead of 36
        plane = canvas[c, :nh, :nw]
        np.subtract(resized[..., 2 - c], MEAN_BGR[c], out=plane, dtype=np.float32)  # BGR from RGB
        np.divide(plane, STD_BGR[c], out=plane)
    return canvas[None], scale


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _input_shape(image_shape: tuple[int, ...], side: int, *, tight: bool = True) -> tuple[int, int]:
    """The (height, width) of letterbox's canvas for an image of `image_shape` at `side`."""
    if not tight:
        return side, side
    h, w = image_shape[:2]
    scale = side / max(h, w)
    return _round_up(max(1, round(h * scale)), STRIDES[-1]), _round_up(max(1, round(w * scale)), STRIDES[-1])


def any_input_size(model: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """The converted graph is fully convolutional (its reshapes keep the cell axis free, its
    upsampling goes by scale) but declares a 416 x 416 input: declare height and width free so
    that zoom views run at their own size (weights untouched; the file's sha256 is checked
    before). Returns that model and its (scores [N, HW, 80], distances [N, HW, 44]) output
    names per stride, paired by their cell count at 416."""
    proto = onnx.model_proto(model)
    graph = proto.graph
    by_cells: dict[int, dict[int, str]] = {}
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        by_cells.setdefault(dims[1].dim_value, {})[dims[2].dim_value] = out.name
        dims[1].dim_param = "cells"
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.value_info[:]  # the inner tensors' 416-based shapes
    pairs = [(by_cells[(INPUT_SIDE // s) ** 2][80], by_cells[(INPUT_SIDE // s) ** 2][4 * REG_BINS]) for s in STRIDES]
    return proto.SerializeToString(), pairs


@functools.lru_cache(maxsize=16)
def _cells(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and stride of every cell of strides 8, 16, 32, in the heads' order."""
    cx, cy, stride = [], [], []
    for s in STRIDES:
        ys, xs = np.divmod(np.arange((height // s) * (width // s)), width // s)
        cx.append((xs + 0.5) * s)
        cy.append((ys + 0.5) * s)
        stride.append(np.full(len(xs), s))
    return tuple(np.concatenate(v).astype(np.float32) for v in (cx, cy, stride))


def decode(
    outputs: list[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int] = (INPUT_SIDE, INPUT_SIDE),
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """[(class scores [HW, C], distances [HW, 4 * 11]) per stride 8, 16, 32] of an input of
    `shape` (height, width) -> (boxes [N, 4] xyxy in input pixels, scores [N, C]), one row per
    cell of every stride, or per cell in `rows` (indices in that order: decoding only the
    candidates is most of the saving)."""
    cx, cy, stride = _cells(*shape)
    scores = np.concatenate([cls for cls, _ in outputs])
    reg = np.concatenate([r for _, r in outputs])
    if rows is not None:
        cx, cy, stride, scores, reg = cx[rows], cy[rows], stride[rows], scores[rows], reg[rows]
    logits = reg.reshape(-1, 4, REG_BINS)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    dist = (prob * np.arange(REG_BINS, dtype=np.float32)).sum(-1) * stride[:, None]  # left, top, right, bottom
    boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
    return boxes.astype(np.float32), scores.astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by class-wise greedy NMS, highest score first."""
    keep: list[int] = []
    for label in np.unique(labels):
        order = np.flatnonzero(labels == label)
        order = order[np.argsort(-scores[order], kind="stable")]
        overlaps = box_iou_matrix(boxes[order], boxes[order]) > iou
        suppressed = np.zeros(len(order), bool)
        for a in range(len(order)):
            if not suppressed[a]:
                keep.append(int(order[a]))
                suppressed |= overlaps[a]
    keep_array = np.array(keep, np.int64)
    return keep_array[np.argsort(-scores[keep_array], kind="stable")] if len(keep) else keep_array


def plan_tiles(
    width: int, height: int, min_person_height: float, *, max_per_side: int = 3, side: int = INPUT_SIDE
) -> list[tuple[int, int, int, int]]:
    """Overlapping square tiles (x0, y0, x1, y1) for an image whose smallest wanted person is
    `min_person_height` px tall; [] where the full frame already shows such a person at
    MIN_INPUT_PERSON px or more. Tiles per side grow until the person reaches that height in
    a tile, capped at `max_per_side` (cost grows with its square)."""
    long_side = max(width, height)
    if min_person_height * side / long_side >= MIN_INPUT_PERSON or max_per_side < 2:
        return []
    largest_tile = min_person_height * side / MIN_INPUT_PERSON  # a tile's side at which the person is big enough
    per_side = min(max_per_side, max(2, math.ceil(long_side * (1 + TILE_OVERLAP) / largest_tile)))
    tile = min(round(long_side * (1 + TILE_OVERLAP) / per_side), long_side)
    tile = max(tile, min(width, height) // per_side, 1)

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        count = max(2, math.ceil((length - tile) / (tile * (1 - TILE_OVERLAP))) + 1)
        return sorted({round(k * (length - tile) / (count - 1)) for k in range(count)})

    return [(x, y, min(width, x + tile), min(height, y + tile)) for y in starts(height) for x in starts(width)]


def plan_coarse_tiles(
    width: int, height: int, min_person_height: float, tiles: list[tuple[int, int, int, int]]
) -> list[tuple[int, int, int, int]]:
    """Where `tiles` (plan_tiles') are finer than 2 x 2, the 2 x 2 grid, read for persons only:
    a large person whom the finer tiles cut into pieces is whole in one of its views (measured
    on ../shared/data: docs/evaluation.md). Their accessories are dropped: the first ones seen
    were false (an astronaut's helmet as a backpack on a sample photo); so are the persons a fine
    tile holds whole (whole_in_a_tile)."""
    return plan_tiles(width, height, min_person_height, max_per_side=2) if len(tiles) > 4 else []


def plan_zoom(width: int, height: int, min_person_height: float, max_input_side: int) -> int | None:
    """The long side (px, in strides of 32) at which to see the whole image once more so that a
    person of `min_person_height` is MIN_INPUT_PERSON px tall at the model's input, at most
    `max_input_side`; None where the full frame at INPUT_SIDE already shows them so, or zoom is
    off (`max_input_side` INPUT_SIDE: tiles instead).

    The zoom view of a 640 x 480 photo for 14 px people is 1280 x 960: 7 full frames' worth of
    pixels, where 3 x 3 tiles and the coarse 2 x 2 grid cost 13 views (tiles overlap, and the
    persons they cut need the coarse grid) and magnify less. Past `max_input_side`
    (a large photo of tiny people) the view magnifies as much as capped tiles did, with no
    overlap."""
    long_side = max(width, height)
    if max_input_side <= INPUT_SIDE or min_person_height * INPUT_SIDE / long_side >= MIN_INPUT_PERSON:
        return None
    return min(_round_up(math.ceil(long_side * MIN_INPUT_PERSON / min_person_height), STRIDES[-1]), max_input_side)


def merge_tiles(
    full: tuple[np.ndarray, np.ndarray, np.ndarray],
    tiles: list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple]],
    *,
    faint: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    contained: float = 0.6,
    iou: float = NMS_IOU,
    person: int = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-frame and tile detections (boxes in image coordinates, scores, labels; each tile with
    its region (x0, y0, x1, y1, image width, image height); a zoom view is a tile whose region
    is the whole image) -> one set.

    A tile box mostly inside a full-frame box of the same class is a part of that object (a
    tile edge cut a large person in half): the full-frame box wins. A tile box cut by its
    tile's inner edge that lies mostly inside a larger box of another tile is the same kind
    of part, and so is a zoom box the full frame would see whole (`_pieces`). Either claim
    needs the claiming box to score at least CLAIM_SCORE_RATIO of the piece's score. What is
    left goes through class-wise NMS together.

    `faint`: full-frame boxes scored under the threshold. NanoDet scores a person who fills a
    tall frame low (0.45 for a full-body street photo) while each tile sees a confident piece
    of them (0.86, 0.80, 0.71: three "persons"). A faint box that holds pieces cut by their
    tile's inner edge (parts, not whole small people) is that person: it is kept, scored as
    its surest piece, and the pieces go. The zoom view's pieces of a tall person vouch alike;
    `person` is the class whose halves vouch together (_promote_faint).
    """
    tiles = [t for t in tiles if len(t[0])]
    if not tiles:
        return full
    boxes = np.concatenate([t[0] for t in tiles]).astype(np.float32)
    scores = np.concatenate([t[1] for t in tiles]).astype(np.float32)
    labels = np.concatenate([t[2] for t in tiles]).astype(np.int64)
    regions = np.concatenate([np.tile(np.array(t[3], np.float32), (len(t[0]), 1)) for t in tiles])
    if faint is not None and len(faint[0]):
        full = _promote_faint(full, faint, boxes, scores, labels, regions, contained, person)
    # only a box about as sure as the piece can claim it: a faint full-frame box over a group
    # must not erase a confident tile box of one small person inside it
    claims_full = (labels[:, None] == full[2][None, :]) & (full[1][None, :] >= CLAIM_SCORE_RATIO * scores[:, None])
    part_of_full = ((_share_inside(boxes, full[0]) >= contained) & claims_full).any(1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    claims_tile = (labels[:, None] == labels[None, :]) & (scores[None, :] >= CLAIM_SCORE_RATIO * scores[:, None])
    inside_larger = (_share_inside(boxes, boxes) >= contained) & claims_tile & (area[None, :] > area[:, None])
    part_of_tile_box = _pieces(boxes, regions) & inside_larger.any(1)
    kept = ~(part_of_full | part_of_tile_box)
    b = np.concatenate([full[0], boxes[kept]]).reshape(-1, 4)
    s = np.concatenate([full[1], scores[kept]])
    lab = np.concatenate([full[2], labels[kept]]).astype(np.int64)
    keep = nms(b, s, lab, iou)
    return b[keep], s[keep], lab[keep]


def _promote_faint(full, faint, boxes, scores, labels, regions, contained: float, person: int):
    """Full-frame detections plus the faint boxes that tile pieces cut by their tile's edge vouch for.

    A piece vouches alone where the faint box scores at least CLAIM_SCORE_RATIO of it. Person
    pieces in both the faint box's upper and lower half (a tall person's head-to-waist and
    legs, which the zoom view sees apart) vouch together whatever it scores: on CCP's street
    photos the whole person scored 0.23 where their two halves scored 0.74 and 0.63. A faint
    box inside a sure one is not raised by halves."""
    inside = (
        (_share_inside(boxes, faint[0]) >= contained)
        & (labels[:, None] == faint[2][None, :])
        & _pieces(boxes, regions)[:, None]
    )
    middle = (boxes[:, 1] + boxes[:, 3])[:, None] < (faint[0][:, 1] + faint[0][:, 3])[None, :]
    halves = (inside & middle).any(0) & (inside & ~middle).any(0) & (faint[2] == person)
    # ... unless the faint box is itself a piece of a sure one (an astronaut's legs, 0.27,
    # inside her 0.73 box): its halves are hers
    same_class = faint[2][:, None] == full[2][None, :]
    halves &= ~((_share_inside(faint[0], full[0]) >= contained) & same_class).any(1)
    vouches = inside & ((faint[1][None, :] >= CLAIM_SCORE_RATIO * scores[:, None]) | halves[None, :])
    promoted = vouches.any(0)
    if not promoted.any():
        return full
    raised = np.maximum(faint[1], np.where(vouches, scores[:, None], 0).max(0))[promoted]
    return (
        np.concatenate([full[0], faint[0][promoted]]).reshape(-1, 4).astype(np.float32),
        np.concatenate([full[1], raised]).astype(np.float32),
        np.concatenate([full[2], faint[2][promoted]]).astype(np.int64),
    )


def weigh_zoom(zoom, full, long_side: int, *, person: int, floor: float):
    """A zoom view's detections against its full frame's (boxes in image pixels, scores, COCO
    class indices; the image's long side) -> (zoom's, full frame's).

    A person the full frame sees whole (2 x MIN_INPUT_PERSON there) and found too (IoU 0.5,
    down to the candidate floor) keeps the full frame's box, scored the better of the two:
    the zoom adds confidence, the full frame places a large person better. A person no
    full-frame box overlaps scores / ZOOM_ONLY_DISCOUNT, and goes under `floor`."""
    boxes, scores, labels = zoom
    mine = np.flatnonzero(full[2] == person)
    overlap = box_iou_matrix(boxes, full[0][mine]) if len(boxes) and len(mine) else np.zeros((len(boxes), 0))
    seen = (labels == person) & (overlap.max(1, initial=0.0) >= 0.5)
    whole = _seen_whole(boxes, long_side)
    full_scores = full[1].copy()
    for k in np.flatnonzero(seen & whole):
        j = mine[int(overlap[k].argmax())]
        full_scores[j] = max(full_scores[j], scores[k])
    alone = (labels == person) & ~seen
    scores = np.where(alone, scores / ZOOM_ONLY_DISCOUNT, scores).astype(np.float32)
    keep = ~(seen & whole) & (~alone | (scores >= floor))
    return (boxes[keep], scores[keep], labels[keep]), (full[0], full_scores, full[2])


def person_candidates(
    confident: np.ndarray, boxes: np.ndarray, scores: np.ndarray, threshold: float, contained: float = 0.6
) -> np.ndarray:
    """Indices of the boxes (one class, every view's, in image pixels) that are persons of
    their own under `threshold`: after NMS among them, none that overlaps a confident person
    (IoU over NMS_IOU) or lies mostly inside one (a piece of them a tile saw). Best first."""
    low = np.flatnonzero(scores < threshold)
    if not len(low):
        return low
    low = low[nms(boxes[low], scores[low], np.zeros(len(low), np.int64))]
    if len(confident):
        near = (box_iou_matrix(boxes[low], confident) > NMS_IOU) | (_share_inside(boxes[low], confident) >= contained)
        low = low[~near.any(1)]
    return low


def _share_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[i, j] = the share of box a[i]'s area that lies inside box b[j]."""
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return w * h / np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-9)[:, None]


def _pieces(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Per box: what a larger box of the same thing may claim. A tile box cut by its tile's
    inner edge; a zoom view's box (its region is the whole image) tall enough that the full
    frame sees it whole (2 x MIN_INPUT_PERSON there): the zoom view meets NanoDet's largest box
    (10 strides of 32 each side of the centre, 640 px) sooner, so a tall person comes out of
    it as a head-to-waist and a legs box."""
    x0, y0, x1, y1, width, height = regions.T
    zoom = (x0 == 0) & (y0 == 0) & (x1 == width) & (y1 == height)
    return _cut_by_tile(boxes, regions) | (zoom & _seen_whole(boxes, np.maximum(width, height)))


def _seen_whole(boxes: np.ndarray, long_side) -> np.ndarray:
    """Per box: tall enough (2 x MIN_INPUT_PERSON at the full frame's 416 px) that the full
    frame sees it whole, in an image whose long side is `long_side`."""
    return (boxes[:, 3] - boxes[:, 1]) * INPUT_SIDE / long_side >= 2 * MIN_INPUT_PERSON


def _cut_by_tile(boxes: np.ndarray, regions: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """Per box: it touches an edge of its tile that lies inside the image (the tile cut it
    there), as opposed to the image's own border. regions rows: x0, y0, x1, y1, width, height."""
    x0, y0, x1, y1, width, height = regions.T
    return (
        ((boxes[:, 0] <= x0 + margin) & (x0 > 0))
        | ((boxes[:, 1] <= y0 + margin) & (y0 > 0))
        | ((boxes[:, 2] >= x1 - margin) & (x1 < width))
        | ((boxes[:, 3] >= y1 - margin) & (y1 < height))
    )


class NanoDet:
    """NanoDet-g on a batch of images: full frames, plus tiles and extra regions where they pay."""

    def __init__(
        self,
        model: bytes,
        *,
        classes: dict[int, str] = COCO_CLASSES,
        score_threshold: float,
        min_person_height: float,
        max_tiles_per_side: int = 3,
        max_batch: int = 8,
        device: str = "cpu",
        threads: int = 1,
        class_thresholds: dict[int, float] | None = None,
        candidate_floor: float | None = None,
        coarse_tiles: bool = False,
        max_input_side: int = INPUT_SIDE,
    ):
        self.int8 = b"QLinearConv" in model  # an op type is plain bytes in the file: no second parse
        model, self.output_pairs = any_input_size(model)
        self.session = onnx.session(model, device, threads)
        self.class_ids = np.array(sorted(classes), np.int64)
        self.class_names = classes
        # per class: score_threshold unless class_thresholds says otherwise
        self.thresholds = np.array(
            [(class_thresholds or {}).get(int(k), score_threshold) for k in self.class_ids], np.float32
        )
        # what the views are read down to: the thresholds, and the person candidates' floor
        self.person_index = next((k for k, c in enumerate(self.class_ids) if classes[int(c)] == "person"), None)
        self.floors = self.thresholds.copy()
        if candidate_floor is not None and self.person_index is not None:
            self.floors[self.person_index] = min(candidate_floor, self.thresholds[self.person_index])
        self.min_person_height = min_person_height
        self.max_tiles_per_side, self.coarse_tiles = max_tiles_per_side, coarse_tiles
        self.max_input_side = max(INPUT_SIDE, _round_up(max_input_side, STRIDES[-1]))
        self.max_batch = max(1, max_batch)

    def run(
        self,
        views: list[np.ndarray],
        scale_thresholds: list[float] | None = None,
        sides: list[int] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detections per view: (boxes in the view's pixels, scores, COCO class indices), each view's
        class thresholds times its `scale_thresholds` entry (1 by default), persons down to the
        candidate floor. A view's long side goes in at its `sides` entry (INPUT_SIDE by default,
        on a square canvas; other sides on a tight one); views of one input shape share a batch."""
        sides = sides or [INPUT_SIDE] * len(views)
        tight = [side != INPUT_SIDE for side in sides]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for k, view in enumerate(views):
            by_shape.setdefault(_input_shape(view.shape, sides[k], tight=tight[k]), []).append(k)
        found: list = [None] * len(views)
        for shape, members in by_shape.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                tensors, scales = zip(*(letterbox(views[k], sides[k], tight=tight[k]) for k in chunk))
                out = onnx.run(self.session, np.concatenate(tensors))
                for j, (k, scale) in enumerate(zip(chunk, scales)):
                    heads = [(out[c][j], out[r][j]) for c, r in self.output_pairs]
                    scores = np.concatenate([cls for cls, _ in heads])[:, self.class_ids]
                    factor = scale_thresholds[k] if scale_thresholds else 1.0
                    cell, col = np.nonzero(scores >= np.minimum(self.thresholds * factor, self.floors))
                    boxes, _ = decode(heads, shape, rows=cell)
                    found[k] = self._select(boxes / scale, scores[cell, col], self.class_ids[col], views[k].shape)
        return found

    @staticmethod
    def _select(boxes, conf, labels, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = nms(boxes, conf, labels)
        return boxes[keep], conf[keep], labels[keep]

    def detect(
        self, images: list[np.ndarray], regions: list[list] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Per image: (boxes xyxy in image pixels, scores, class names) after tiles and merging;
        the person candidates under the threshold last (see person_candidates)."""
        views, owners, sides = [], [], []  # owners: (image index, view box or None for the full frame)
        # coarse views: their persons that no fine tile holds whole (view index -> the fine tiles)
        coarse_views: dict[int, list[tuple[int, int, int, int]]] = {}
        zoom_views: dict[int, int] = {}  # zoom view index -> its image's full-frame view index
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            if min(h, w) < 1:
                raise ValueError(f"image {i} has no pixels ({w}x{h})")
            sides.append(INPUT_SIDE)
            views.append(image)
            owners.append((i, None))
            zoom, boxes, coarse = plan_zoom(w, h, self.min_person_height, self.max_input_side), [], []
            if zoom:  # the whole image again, larger: a "tile" with no inner edges
                zoom_views[len(views)] = len(views) - 1
                views.append(image)
                owners.append((i, (0, 0, w, h, w, h)))
                sides.append(zoom)
            elif self.max_input_side == INPUT_SIDE:
                boxes = plan_tiles(w, h, self.min_person_height, max_per_side=self.max_tiles_per_side)
                coarse = plan_coarse_tiles(w, h, self.min_person_height, boxes) if self.coarse_tiles else []
            boxes += [_square_view(r, w, h) for r in (regions[i] if regions else [])]  # moving things in video
            for x0, y0, x1, y1 in boxes + coarse:
                views.append(np.ascontiguousarray(image[y0:y1, x0:x1]))
                owners.append((i, (x0, y0, x1, y1, w, h)))
                sides.append(INPUT_SIDE)
            coarse_views.update(dict.fromkeys(range(len(views) - len(coarse), len(views)), boxes))
        # full frames of tiled images also report faint boxes (merge_tiles: a large person's extent)
        tiled = {i for i, box in owners if box is not None}
        factors = [FAINT_RATIO if box is None and i in tiled else 1.0 for i, box in owners]
        per_view = self.run(views, factors, sides)
        person = self.class_ids[self.person_index] if self.person_index is not None else -1
        for k, full in zoom_views.items():
            if self.person_index is not None:
                floor = float(self.floors[self.person_index])
                per_view[k], per_view[full] = weigh_zoom(
                    per_view[k], per_view[full], max(views[k].shape[:2]), person=person, floor=floor
                )
        for k, fine in coarse_views.items():
            x0, y0 = owners[k][1][:2]
            in_image = per_view[k][0] + np.array([x0, y0, x0, y0], np.float32)
            keep = (per_view[k][2] == person) & ~whole_in_a_tile(in_image, fine)
            per_view[k] = tuple(v[keep] for v in per_view[k])
        results = []
        for i in range(len(images)):
            mine = [(found, box, f) for found, (owner, box), f in zip(per_view, owners, factors) if owner == i]
            in_image = [
                (b + np.array(box[:2] * 2, np.float32), s, lab) if box else (b, s, lab) for (b, s, lab), box, _ in mine
            ]
            # each view at its own thresholds (as without a floor); the floor's extra persons join at the end
            above = [self._above(found, f) for found, (_, _, f) in zip(in_image, mine)]
            full, tiles = above[0], [(*found, box) for found, (_, box, _) in zip(above[1:], mine[1:])]
            if tiles:
                sure = full[1] >= self._threshold_of(full[2])
                boxes, scores, labels = merge_tiles(
                    tuple(v[sure] for v in full), tiles, faint=tuple(v[~sure] for v in full), person=person
                )
            else:
                boxes, scores, labels = full
            boxes, scores, labels = self._with_candidates((boxes, scores, labels), in_image)
            results.append((boxes, scores, [self.class_names[int(k)] for k in labels]))
        return results

    def _threshold_of(self, labels: np.ndarray) -> np.ndarray:
        return self.thresholds[np.searchsorted(self.class_ids, labels)]

    def _above(self, found, factor: float):
        keep = found[1] >= self._threshold_of(found[2]) * factor
        return tuple(v[keep] for v in found)

    def _with_candidates(self, merged, in_image):
        """The merged detections plus the person candidates of every view (person_candidates)."""
        if self.person_index is None or self.floors[self.person_index] >= self.thresholds[self.person_index]:
            return merged
        person = self.class_ids[self.person_index]
        boxes = np.concatenate([b[lab == person] for b, _, lab in in_image]).reshape(-1, 4)
        scores = np.concatenate([s[lab == person] for _, s, lab in in_image])
        picked = person_candidates(
            merged[0][merged[2] == person], boxes, scores, float(self.thresholds[self.person_index])
        )
        return (
            np.concatenate([merged[0], boxes[picked]]).reshape(-1, 4).astype(np.float32),
            np.concatenate([merged[1], scores[picked]]).astype(np.float32),
            np.concatenate([merged[2], np.full(len(picked), person)]).astype(np.int64),
        )


def whole_in_a_tile(boxes: np.ndarray, tiles: list[tuple[int, int, int, int]], margin: float = 2.0) -> np.ndarray:
    """Which boxes (image pixels) lie whole within one of the tiles, to `margin` px. A coarse
    view's person that a fine tile holds whole was seen there already, larger: the coarse views
    are for people the fine tiles cut (their copies of small people lost COCO128 AP_small
    0.319 -> 0.303, docs/evaluation.md)."""
    if not len(tiles) or not len(boxes):
        return np.zeros(len(boxes), bool)
    t = np.array(tiles, np.float32)[None, :, :]
    b = boxes[:, None, :]
    inside = (b[..., 0] >= t[..., 0] - margin) & (b[..., 1] >= t[..., 1] - margin)
    inside &= (b[..., 2] <= t[..., 2] + margin) & (b[..., 3] <= t[..., 3] + margin)
    return inside.any(1)


def _square_view(box, w: int, h: int, grow: float = 1.7) -> tuple[int, int, int, int]:
    """A square around a candidate box where it fills about 60% of the side."""
    side = max(grow * max(box[2] - box[0], box[3] - box[1]), 32.0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (
        max(0, int(cx - side / 2)),
        max(0, int(cy - side / 2)),
        min(w, int(math.ceil(cx + side / 2))),
        min(h, int(math.ceil(cy + side / 2))),
    )
