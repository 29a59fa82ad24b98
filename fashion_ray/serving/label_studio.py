"""Label Studio's ML backend protocol: the cascade's rows as pre-annotations.

Label Studio calls <backend>/health, /setup (project, labelling config, its own URL and an
API token) and /predict (tasks + labelling config). The labelling config decides what we
return: every RectangleLabels / PolygonLabels control aimed at the Image gets a region for
each person, garment or body part whose name is one of its labels ("person", the garment
categories, body parts; case, spaces and hyphens do not matter). Boxes become rectangles,
masks polygons, both in percent of the original image as Label Studio expects.

Task images are read from the Label Studio the server is configured with (label_studio_url
and label_studio_token_file, or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY; what /setup sends
is never used: a caller cannot point the server at another host or learn its token), without
following redirects to other hosts; from data: URIs; or from the URIs the server is allowed
to read. Never from anywhere else.
"""

from __future__ import annotations

import base64
import os
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import cv2
import numpy as np
import requests

from fashion_ray import storage, taxonomy
from fashion_ray.formats import masks as rle

CONTROL_TYPES = {"RectangleLabels": "rectanglelabels", "PolygonLabels": "polygonlabels"}
MIN_POLYGON_AREA = 16  # pixels: specks of a mask are not worth a region
MAX_REDIRECTS = 3


class ProtocolError(ValueError):
    """A Label Studio request we cannot serve; the app answers `status` (400) with the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class LabelConfigError(ProtocolError):
    """A labelling config we cannot serve (no Image, no control we fill)."""


@dataclass(frozen=True)
class Control:
    name: str
    type: str  # "rectanglelabels" | "polygonlabels"
    labels: dict[str, str]  # our name -> the config's spelling


@dataclass(frozen=True)
class Targets:
    image_name: str
    image_key: str  # the task data field that holds the image
    controls: tuple[Control, ...]


def _ours(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_")


OUR_LABELS = {c["name"] for c in taxonomy.COCO_CATEGORIES}


def parse_label_config(xml: str) -> Targets:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labelling config is not XML: {exc}") from None
    images = [el for el in root.iter("Image")]
    if not images:
        raise LabelConfigError("the labelling config has no <Image> tag")
    image = images[0]
    controls = []
    for tag, kind in CONTROL_TYPES.items():
        for el in root.iter(tag):
            if el.get("toName") != image.get("name"):
                continue
            labels = {_ours(lb.get("value", "")): lb.get("value", "") for lb in el.iter("Label")}
            labels = {k: v for k, v in labels.items() if k in OUR_LABELS}
            if labels:
                controls.append(Control(el.get("name", ""), kind, labels))
    if not controls:
        raise LabelConfigError("no RectangleLabels or PolygonLabels control on the image has one of our labels "
                               f"({', '.join(sorted(OUR_LABELS))})")
    return Targets(image.get("name", "image"), image.get("value", "$image").lstrip("$"), tuple(controls))


def recommended_config(garments: tuple[str, ...]) -> str:
    """A labelling config that takes everything the cascade finds: person and garment boxes
    (the bundle's garment classes), garment and body-part polygons."""
    def labels(names):
        return "".join(f'<Label value="{n}"/>' for n in names)

    return ('<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="boxes" toName="image">{labels((taxonomy.PERSON, *garments))}</RectangleLabels>\n'
            f'  <PolygonLabels name="masks" toName="image">{labels((*garments, *taxonomy.PARTS))}</PolygonLabels>\n'
            '</View>\n')


def _polygons(mask_rle: dict, width: int, height: int) -> list[list[list[float]]]:
    mask = rle.decode(mask_rle).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        if cv2.contourArea(contour) < MIN_POLYGON_AREA:
            continue
        points = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if len(points) >= 3:
            out.append([[float(x) * 100 / width, float(y) * 100 / height] for x, y in points])
    return out


def _regions(row: dict):
    """(our label, region id, score, box, mask) of everything in a row."""
    for person in row["persons"]:
        pid = f"p{person['person_id']}"
        yield "person", pid, person["score"], person["box"], person["mask"]
        for g in person["garments"]:
            yield g["category"], f"{pid}g{g['garment_id']}", g["score"], g["box"], g["mask"]
        for part in person["parts"]:
            yield part["part"], f"{pid}{part['part']}{part['side'] or ''}", 1.0, part["box"], part["mask"]


def prediction(row: dict, targets: Targets, model_version: str) -> dict:
    """One Label Studio prediction for a labelled row (an error row predicts nothing)."""
    width, height = row["width"], row["height"]
    result = []
    for label, region_id, score, box, mask in _regions(row):
        for control in targets.controls:
            if label not in control.labels:
                continue
            common = {"from_name": control.name, "to_name": targets.image_name, "type": control.type,
                      "original_width": width, "original_height": height, "image_rotation": 0,
                      "score": round(float(score), 4)}
            if control.type == "rectanglelabels" and box:
                x0, y0, x1, y1 = box
                result.append({**common, "id": f"{region_id}-{control.name}", "value": {
                    "x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                    "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [control.labels[label]]}})
            elif control.type == "polygonlabels" and mask:
                for k, points in enumerate(_polygons(mask, width, height)):
                    result.append({**common, "id": f"{region_id}-{control.name}-{k}", "value": {
                        "points": points, "closed": True, "polygonlabels": [control.labels[label]]}})
    scores = [p["score"] for p in row["persons"]]
    return {"result": result, "score": round(float(np.mean(scores)), 4) if scores else 0.0, "model_version": model_version}


@dataclass(frozen=True)
class Connection:
    """The Label Studio task images are read from, and its API token: the server's
    configuration, never a request's."""

    url: str = ""
    token: str = ""

    @classmethod
    def from_config(cls, cfg) -> "Connection":
        """From a ServeConfig: label_studio_url / label_studio_token_file, else the environment."""
        from fashion_ray.serving.auth import read_secret

        token = (read_secret(cfg.label_studio_token_file, "label_studio_token_file") if cfg.label_studio_token_file
                 else os.environ.get("LABEL_STUDIO_API_KEY", ""))
        return cls(cfg.label_studio_url or os.environ.get("LABEL_STUDIO_URL", ""), token)

    def same_origin(self, url: str) -> bool:
        here, there = urllib.parse.urlsplit(self.url), urllib.parse.urlsplit(url)
        return bool(self.url) and (here.scheme, here.netloc) == (there.scheme, there.netloc)

    def auth_header(self) -> dict:
        if not self.token:
            return {}
        if self.token.count(".") == 2:  # a personal access token (JWT refresh token): trade it for an access token
            answer = requests.post(urllib.parse.urljoin(self.url, "/api/token/refresh"), json={"refresh": self.token},
                                   timeout=10, allow_redirects=False)
            answer.raise_for_status()
            return {"Authorization": f"Bearer {answer.json()['access']}"}
        return {"Authorization": f"Token {self.token}"}


class TaskImageError(ValueError):
    """A task image this backend will not or cannot read; the message says why."""


def task_image_source(task: dict, targets: Targets, connection: Connection, allow_uris: tuple[str, ...]) -> tuple[str, str]:
    """("bytes", payload) for data: URIs, ("label_studio", url) for Label Studio's own files,
    ("uri", uri) for an allowed URI; anything else is refused."""
    ref = str((task.get("data") or {}).get(targets.image_key) or "")
    if not ref:
        raise TaskImageError(f"the task has no {targets.image_key!r} field")
    if ref.startswith("data:"):
        return "bytes", ref
    if storage.allowed_uri(ref, allow_uris) is not None:
        return "uri", ref
    target = urllib.parse.urljoin(connection.url or "http://unset/", ref)
    if connection.same_origin(target):
        return "label_studio", target
    raise TaskImageError(f"the image {ref!r} is neither in the configured Label Studio "
                         f"({connection.url or 'none: set label_studio_url'}) nor under an allowed prefix")


def read_task_image(kind: str, where: str, connection: Connection, max_bytes: int) -> bytes:
    """The bytes of a task image from task_image_source; too large -> TaskImageError."""
    if kind == "bytes":
        payload = where.partition(",")[2]
        if len(payload) * 3 // 4 > max_bytes:
            raise TaskImageError(f"the image exceeds the limit of {max_bytes} bytes")
        return base64.b64decode(payload)
    headers = connection.auth_header()
    for _ in range(MAX_REDIRECTS + 1):
        with requests.get(where, headers=headers, stream=True, timeout=30, allow_redirects=False) as answer:
            if answer.is_redirect:  # followed within Label Studio only: its token goes nowhere else
                where = urllib.parse.urljoin(where, answer.headers["location"])
                if not connection.same_origin(where):
                    raise TaskImageError("Label Studio redirected the image to another host; not followed")
                continue
            answer.raise_for_status()
            data = bytearray()
            for chunk in answer.iter_content(1 << 16):
                data += chunk
                if len(data) > max_bytes:
                    raise TaskImageError(f"the image exceeds the limit of {max_bytes} bytes")
            return bytes(data)
    raise TaskImageError(f"more than {MAX_REDIRECTS} redirects")
