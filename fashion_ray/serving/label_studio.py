"""Label Studio's ML backend protocol: the cascade's rows as pre-annotations.

Label Studio calls <backend>/health, /setup (project, labelling config) and /predict (tasks
+ labelling config). The labelling config decides what we return: every RectangleLabels,
PolygonLabels or BrushLabels control gets, on the Image it points at, a region for each
person, garment or body part whose name is one of its labels ("person", the garment
categories, body parts; case, spaces and hyphens do not matter) or is named in a label's
`predicted_values` ("Top" predicted_values="long_sleeve_top,short_sleeve_top"); regions
under the control's `model_score_threshold` are left out, and so are candidate persons (under
the person threshold: pre-annotations are labels). Boxes become rectangles, masks
polygons or brush strokes (Label Studio's own RLE), in percent of the original image. A
config with nothing we can fill (a new project's `<View></View>`) is accepted and predicted
nothing for, with the reason logged.

Task images are read from the Label Studio the server is configured with (label_studio_url
and label_studio_token_file, or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY; what /setup sends
is never used: a caller cannot point the server at another host or learn its token), without
following redirects to other hosts; from data: URIs; or from the URIs the server is allowed
to read. Never from anywhere else.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
import requests

from fashion_ray import masks as rle
from fashion_ray import storage, taxonomy
from fashion_ray.errors import InputError
from fashion_ray.formats.schema import is_confident

CONTROL_TYPES = {"RectangleLabels": "rectanglelabels", "PolygonLabels": "polygonlabels", "BrushLabels": "brushlabels"}
MIN_POLYGON_AREA = 16  # pixels: specks of a mask are not worth a region
MAX_REDIRECTS = 3


class ProtocolError(InputError):
    """A Label Studio request we cannot serve; the app answers `status` (400) with the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class LabelConfigError(ProtocolError):
    """A labelling config that is not XML."""


@dataclass(frozen=True)
class Control:
    name: str
    type: str  # "rectanglelabels" | "polygonlabels" | "brushlabels"
    labels: dict[str, str]  # our name -> the config's label value
    score_threshold: float = 0.0  # the control's model_score_threshold


@dataclass(frozen=True)
class ImageTarget:
    name: str
    key: str  # the task data field that holds the image
    controls: tuple[Control, ...]


@dataclass(frozen=True)
class Targets:
    images: tuple[ImageTarget, ...]  # every Image a control of ours points at
    unserved: str = ""  # why nothing can be predicted, when `images` is empty


def _ours(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_")


OUR_LABELS = {c["name"] for c in taxonomy.COCO_CATEGORIES}


def _label_map(control: ET.Element) -> dict[str, str]:
    """Our names -> this control's label values: a label named like one of ours, and every
    one of ours its predicted_values lists (the reference backend's label map)."""
    out = {}
    for label in control.iter("Label"):
        value = label.get("value", "")
        for name in [value, *label.get("predicted_values", "").split(",")]:
            if _ours(name) in OUR_LABELS:
                out.setdefault(_ours(name), value)
    return out


def parse_label_config(xml) -> Targets:
    """What a labelling config asks of us. Not XML (or not text) -> LabelConfigError; XML we
    cannot fill (no Image, no control with our labels) -> Targets with no images and the reason."""
    if not isinstance(xml, str):
        raise LabelConfigError(f"the labelling config is XML text, not a {type(xml).__name__}")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labelling config is not XML: {exc}") from None
    images = {el.get("name", ""): el for el in root.iter("Image")}
    if not images:
        return Targets((), "the labelling config has no <Image> tag")
    controls: dict[str, list[Control]] = {}
    for tag, kind in CONTROL_TYPES.items():
        for el in root.iter(tag):
            labels = _label_map(el)
            if el.get("toName") in images and labels:
                try:
                    threshold = float(el.get("model_score_threshold") or 0.0)
                except ValueError:
                    threshold = 0.0
                controls.setdefault(el.get("toName"), []).append(Control(el.get("name", ""), kind, labels, threshold))
    if not controls:
        return Targets(
            (),
            "no RectangleLabels, PolygonLabels or BrushLabels control on an Image has one of our "
            f"labels ({', '.join(sorted(OUR_LABELS))}) or lists them in predicted_values",
        )
    return Targets(
        tuple(
            ImageTarget(name, images[name].get("value", "$image").lstrip("$"), tuple(found))
            for name, found in controls.items()
        )
    )


def recommended_config(garments: tuple[str, ...]) -> str:
    """A labelling config that takes everything the cascade finds: person and garment boxes
    (the bundle's garment classes), garment and body-part polygons."""

    def labels(names):  # a bundle's class names are data: quoted as XML attributes
        return "".join(f"<Label value={quoteattr(n)}/>" for n in names)

    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <RectangleLabels name="boxes" toName="image">{labels((taxonomy.PERSON, *garments))}</RectangleLabels>\n'
        f'  <PolygonLabels name="masks" toName="image">{labels((*garments, *taxonomy.PARTS))}</PolygonLabels>\n'
        "</View>\n"
    )


def _polygons(mask: np.ndarray, width: int, height: int) -> list[list[list[float]]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        if cv2.contourArea(contour) < MIN_POLYGON_AREA:
            continue
        points = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if len(points) >= 3:
            out.append([[float(x) * 100 / width, float(y) * 100 / height] for x, y in points])
    return out


# Label Studio's brush RLE (label-studio-converter's brush.py reads it): a bit stream of a
# 32-bit value count, the word size - 1 (5 bits), four run-length field sizes - 1 (4 bits
# each), then runs: a 1 bit (one value repeated), 2 bits choosing the length field, the
# length - 1, the 8-bit value. The values are the mask's RGBA bytes, row by row.
BRUSH_LENGTH_BITS = (3, 4, 8, 16)


def brush_rle(mask: np.ndarray) -> list[int]:
    """A boolean HxW mask as Label Studio brush RLE (every channel 255 where the mask is)."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4  # each pixel is 4 equal bytes
    values = np.where(flat[starts], 255, 0)
    bits = [f"{flat.size * 4:032b}", f"{8 - 1:05b}", "".join(f"{b - 1:04b}" for b in BRUSH_LENGTH_BITS)]
    limit = 1 << BRUSH_LENGTH_BITS[-1]
    for length, value in zip(lengths.tolist(), values.tolist()):
        while length > 0:
            piece = min(length, limit)
            index = next(i for i, b in enumerate(BRUSH_LENGTH_BITS) if piece <= 1 << b)
            bits.append(f"1{index:02b}{piece - 1:0{BRUSH_LENGTH_BITS[index]}b}{value:08b}")
            length -= piece
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def _regions(row: dict):
    """(our label, region id, score, box, mask) of everything in a row's confident persons
    (pre-annotations are labels: a candidate under the person threshold is not one) and of the
    confident accessories no person holds."""
    for person in filter(is_confident, row["persons"]):
        pid = f"p{person['person_id']}"
        yield "person", pid, person["score"], person["box"], person["mask"]
        for g in person["garments"]:
            yield g["category"], f"{pid}g{g['garment_id']}", g["score"], g["box"], g["mask"]
        for part in person["parts"]:
            yield part["part"], f"{pid}{part['part']}{part['side'] or ''}", 1.0, part["box"], part["mask"]
    for obj in filter(is_confident, row.get("objects") or []):  # accessories no person holds
        yield obj["category"], f"o{obj['object_id']}", obj["score"], obj["box"], None


def image_results(row: dict, image: ImageTarget) -> list[dict]:
    """The result regions for one Image of a task from the row the cascade gave its picture."""
    width, height = row["width"], row["height"]
    result = []
    for label, region_id, score, box, mask_rle in _regions(row):
        mask = None
        for control in image.controls:
            if label not in control.labels or score < control.score_threshold:
                continue
            common = {
                "from_name": control.name,
                "to_name": image.name,
                "type": control.type,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": round(float(score), 4),
            }
            value = control.labels[label]
            if control.type == "rectanglelabels" and box:
                x0, y0, x1, y1 = box
                result.append(
                    {
                        **common,
                        "id": f"{region_id}-{control.name}",
                        "value": {
                            "x": x0 * 100 / width,
                            "y": y0 * 100 / height,
                            "width": (x1 - x0) * 100 / width,
                            "height": (y1 - y0) * 100 / height,
                            "rotation": 0,
                            "rectanglelabels": [value],
                        },
                    }
                )
            elif control.type in ("polygonlabels", "brushlabels") and mask_rle:
                mask = rle.decode(mask_rle) if mask is None else mask
                if control.type == "brushlabels":
                    result.append(
                        {
                            **common,
                            "id": f"{region_id}-{control.name}",
                            "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [value]},
                        }
                    )
                    continue
                for k, points in enumerate(_polygons(mask, width, height)):
                    result.append(
                        {
                            **common,
                            "id": f"{region_id}-{control.name}-{k}",
                            "value": {"points": points, "closed": True, "polygonlabels": [value]},
                        }
                    )
    return result


def prediction(rows: dict[str, dict], targets: Targets, model_version: str) -> dict | None:
    """A task's prediction from the rows of its images ({image name: row}); None when an image
    could not be labelled: the task is then answered with no prediction at all, so Label
    Studio stores nothing and asks again next time (an empty prediction of this model version
    would be kept forever)."""
    if not targets.images or any(rows[image.name]["status"] != "ok" for image in targets.images):
        return None
    result = [region for image in targets.images for region in image_results(rows[image.name], image)]
    scores = [p["score"] for row in rows.values() for p in filter(is_confident, row["persons"])]
    return {
        "result": result,
        "score": round(float(np.mean(scores)), 4) if scores else 0.0,
        "model_version": model_version,
    }


@dataclass(frozen=True)
class Connection:
    """The Label Studio task images are read from, and its API token: the server's
    configuration, never a request's. A personal access token (a JWT refresh token) is
    traded for an access token once, and again only when that one is about to expire."""

    url: str = ""
    token: str = ""
    access: dict = field(default_factory=dict, compare=False, repr=False)  # {"token", "expires"}
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg) -> "Connection":
        """From a ServeConfig: label_studio_url / label_studio_token_file, else the environment."""
        from fashion_ray.serving.auth import read_secret

        token = (
            read_secret(cfg.label_studio_token_file, "label_studio_token_file")
            if cfg.label_studio_token_file
            else os.environ.get("LABEL_STUDIO_API_KEY", "")
        )
        return cls(cfg.label_studio_url or os.environ.get("LABEL_STUDIO_URL", ""), token)

    def same_origin(self, url: str) -> bool:
        here, there = urllib.parse.urlsplit(self.url), urllib.parse.urlsplit(url)
        return bool(self.url) and (here.scheme, here.netloc) == (there.scheme, there.netloc)

    def auth_header(self) -> dict:
        if not self.token:
            return {}
        if self.token.count(".") != 2:  # a legacy API token: sent as it is
            return {"Authorization": f"Token {self.token}"}
        with self.lock:  # image reads run in threads: one refresh for all of them
            if self.access.get("expires", 0) - time.time() < ACCESS_TOKEN_MARGIN_S:
                answer = requests.post(
                    urllib.parse.urljoin(self.url, "/api/token/refresh"),
                    json={"refresh": self.token},
                    timeout=10,
                    allow_redirects=False,
                )
                answer.raise_for_status()
                access = answer.json()["access"]
                self.access.update(token=access, expires=jwt_expiry(access))
            return {"Authorization": f"Bearer {self.access['token']}"}


ACCESS_TOKEN_MARGIN_S = 30  # an access token this close to its expiry is refreshed first
ACCESS_TOKEN_UNKNOWN_LIFETIME_S = 60  # kept this long when its expiry cannot be read


def jwt_expiry(token: str) -> float:
    """The `exp` (Unix time) of a JWT, read without verifying it: it only says when to ask
    Label Studio again, and Label Studio checks the token."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except Exception:
        return time.time() + ACCESS_TOKEN_UNKNOWN_LIFETIME_S


class TaskImageError(InputError):
    """A task image this backend will not or cannot read; the message says why."""


def task_image_source(
    task: dict, image: ImageTarget, connection: Connection, allow_uris: tuple[str, ...]
) -> tuple[str, str]:
    """("bytes", payload) for data: URIs, ("label_studio", url) for Label Studio's own files,
    ("uri", uri) for an allowed URI; anything else is refused."""
    ref = str((task.get("data") or {}).get(image.key) or "")
    if not ref:
        raise TaskImageError(f"the task has no {image.key!r} field")
    if ref.startswith("data:"):
        return "bytes", ref
    if storage.allowed_uri(ref, allow_uris) is not None:
        return "uri", ref
    target = urllib.parse.urljoin(connection.url or "http://unset/", ref)
    if connection.same_origin(target):
        return "label_studio", target
    raise TaskImageError(
        f"the image {ref!r} is neither in the configured Label Studio "
        f"({connection.url or 'none: set label_studio_url'}) nor under an allowed prefix"
    )


def read_task_image(kind: str, where: str, connection: Connection, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    """The bytes of a task image from task_image_source; too large, or not all there within
    timeout_s (the whole read, redirects included: a host that sends a byte every second
    cannot hold the reading thread) -> TaskImageError."""
    if kind == "bytes":
        payload = where.partition(",")[2]
        if len(payload) * 3 // 4 > max_bytes:
            raise TaskImageError(f"the image exceeds the limit of {max_bytes} bytes")
        return base64.b64decode(payload)
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TaskImageError(f"Label Studio did not send the image within {timeout_s:g} s")
        return left

    headers = connection.auth_header()
    for _ in range(MAX_REDIRECTS + 1):
        with requests.get(where, headers=headers, stream=True, timeout=remaining(), allow_redirects=False) as answer:
            if answer.is_redirect:  # followed within Label Studio only: its token goes nowhere else
                where = urllib.parse.urljoin(where, answer.headers["location"])
                if not connection.same_origin(where):
                    raise TaskImageError("Label Studio redirected the image to another host; not followed")
                continue
            answer.raise_for_status()
            data = bytearray()
            # read1 returns what has arrived (iter_content waits for a whole chunk): the deadline is
            # checked as bytes trickle in, and each wait is bounded by the socket's timeout
            while chunk := answer.raw.read1(1 << 16, decode_content=True):
                data += chunk
                if len(data) > max_bytes:
                    raise TaskImageError(f"the image exceeds the limit of {max_bytes} bytes")
                remaining()
            return bytes(data)
    raise TaskImageError(f"more than {MAX_REDIRECTS} redirects")
