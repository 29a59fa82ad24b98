"""One request through the cascade the way the batch job takes an image.

A request becomes a `Request` (decoded exactly as `pipeline.load_media` decodes: same limits,
same working resolution), each stage deployment runs `run_stage` on a Serve batch of them
with the batch job's own stage classes, and `label_row` turns the result into the row the
job writes to Parquet (same schema, same float32 rounding, original pixel coordinates).
Errors carry the error rows' reasons; `HTTP_STATUS` maps each to a 4xx code. What a client
learns of an object it named is generic (no server paths, sizes or storage errors: those go
to the server's log), so the answers cannot map what the server can read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
from PIL import Image

from fashion_ray import media, preview, storage
from fashion_ray.config import ServeConfig
from fashion_ray.formats.schema import LABEL_SCHEMA, with_attribute_maps
from fashion_ray.formats.shards import assemble_rows
from fashion_ray.stages import persons_column

log = logging.getLogger(__name__)

# error reasons (media.ERROR_REASONS, "model_error", and the request's own) -> HTTP status
HTTP_STATUS = {
    "too_large": 413,
    "unsupported": 415,
    "undecodable": 422,
    "truncated": 422,
    "unreadable": 422,
    "model_error": 422,
    "bad_request": 400,
    "forbidden_uri": 403,
}


@dataclass
class Request:
    """An image on its way through the stages (what a Ray Data row holds in the batch job)."""

    id: int
    uri: str
    size: int
    etag: str
    mtime: datetime | None = None
    width: int = 0
    height: int = 0
    scale: float = 1.0
    image: np.ndarray | None = None  # working resolution, what the models see
    status: str = "ok"
    error: str = ""
    error_detail: str = ""
    persons: list[dict] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)  # accessories no person holds
    served: dict[str, tuple[int, float]] = field(default_factory=dict)  # step -> (batch size, seconds)

    def fail(self, reason: str, detail: str) -> "Request":
        self.status, self.error, self.error_detail, self.image = "error", reason, detail, None
        return self


def uploaded(data: bytes) -> Request:
    """A request for bytes sent in the body: named by their content, as no object holds them."""
    digest = hashlib.sha256(data).hexdigest()
    uri = f"upload:sha256:{digest}"
    return Request(id=storage.stable_id(uri), uri=uri, size=len(data), etag=digest)


def refused(reason: str, detail: str, size: int = 0, uri: str = "upload") -> Request:
    """A request turned away before it has an image (too large, malformed, unreadable)."""
    return Request(id=0, uri=uri, size=size, etag="").fail(reason, detail)


def check_uri(uri: str, cfg: ServeConfig) -> Request:
    """A request for an object the server reads itself; only under the allowed prefixes."""
    resolved = storage.allowed_uri(uri, cfg.allow_uris)
    if resolved is None:
        detail = (
            "this server may not read that URI (only objects under its configured prefixes)"
            if cfg.allow_uris
            else "this server reads no URIs: send the image bytes"
        )
        return Request(id=storage.stable_id(uri), uri=uri, size=0, etag="").fail("forbidden_uri", detail)
    try:
        entry = storage.stat_objects([resolved], cfg.storage)[0]  # what is read is what was checked (links followed)
    except Exception as exc:  # a bad scheme or bucket name, a missing object: a reason, not a 500
        log.warning("stat %s: %s: %s", uri, type(exc).__name__, exc)
        return Request(id=storage.stable_id(uri), uri=uri, size=0, etag="").fail("unreadable", UNREADABLE)
    request = Request(**entry)
    if request.size > cfg.max_bytes:
        request.fail("too_large", f"the object exceeds the limit of {cfg.max_bytes} bytes")
    return request


UNREADABLE = "the object could not be read"


def fetch(request: Request, cfg: ServeConfig) -> bytes | None:
    try:
        data = storage.fetch_bounded(request.uri, cfg.max_bytes, cfg.storage)
    except Exception as exc:
        log.warning("fetch %s: %s: %s", request.uri, type(exc).__name__, exc)
        request.fail("unreadable", UNREADABLE)
        return None
    if len(data) > cfg.max_bytes:  # it grew after it was listed
        request.fail("too_large", f"the object exceeds the limit of {cfg.max_bytes} bytes")
        return None
    return data


def decode(request: Request, data: bytes, cfg: ServeConfig, keep_original: bool = False) -> np.ndarray | None:
    """Fill the request's working image; returns the original-size image when asked (for the
    overlay), else None: the full-size pixels then never outlive the decode."""
    decoded = media.decode_image(data, max_pixels=cfg.max_pixels, max_side=None if keep_original else cfg.work_max_side)
    request.width, request.height = decoded.width, decoded.height
    if decoded.error:
        request.fail(decoded.error, decoded.detail)
        return None
    if not keep_original:  # decoded as the batch job decodes: at working resolution
        request.image, request.scale = decoded.image, decoded.scale
        return None
    # the batch job decodes with max_side set, which is this same resize of the same pixels
    work = media.fit_to_side(decoded.image, cfg.work_max_side)
    request.image, request.scale = work.image, work.scale
    return decoded.image


# Peak memory of a decode (and the overlay drawn at full size) per pixel of the original:
# an 8000x8000 palette PNG with transparency peaks at ~11 bytes a pixel at full size.
DECODE_BYTES_PER_PIXEL = 12


def decode_bytes(data: bytes) -> int:
    """What decoding `data` may hold at its peak, from the image header alone (0 when the
    header does not parse: nothing large is decoded, and the decoder names the reason)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:
        return 0
    return width * height * DECODE_BYTES_PER_PIXEL


class MemoryBudget:
    """Bytes that requests being decoded may hold at once: requests take their share
    (decode_bytes) in arrival order, each waiting until it fits; one larger than the whole
    budget waits to run alone. A few KB of PNG can claim 64 megapixels, so a count of
    requests alone does not bound memory."""

    def __init__(self, total: int):
        self.total = self.free = total
        self.waiting: list[object] = []  # tickets, first come first served: a large share is not starved
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int):
        amount, ticket = min(amount, self.total), object()
        async with self.changed:
            self.waiting.append(ticket)
            try:
                await self.changed.wait_for(lambda: self.waiting[0] is ticket and self.free >= amount)
            finally:  # admitted or cancelled: the next in line may go
                self.waiting.remove(ticket)
                self.changed.notify_all()
            self.free -= amount
        try:
            yield
        finally:
            async with self.changed:
                self.free += amount
                self.changed.notify_all()


def run_stage(stage, requests: list[Request]) -> list[Request]:
    """Run one stage object (stages.STAGE_CLASSES) over a batch of requests, in place."""
    n = len(requests)
    batch = {
        "status": np.array([r.status for r in requests], dtype=object),
        "error": np.array([r.error for r in requests], dtype=object),
        "error_detail": np.array([r.error_detail for r in requests], dtype=object),
        "image": np.empty(n, dtype=object),
        "persons": persons_column([r.persons for r in requests], [r.objects for r in requests]),
    }
    batch["image"][:] = [r.image if r.image is not None else np.zeros((1, 1, 3), np.uint8) for r in requests]
    out = stage(batch)
    for i, r in enumerate(requests):
        r.status, r.error, r.error_detail = str(out["status"][i]), str(out["error"][i]), str(out["error_detail"][i])
        r.persons, r.objects = out["persons"][i].items, out["persons"][i].objects
    return requests


def label_row(request: Request, *, bundle_name: str, bundle_version: str, stages: list[str]) -> dict:
    """The request as the batch job's Parquet row (read back through the label schema)."""
    batch = {
        "id": [request.id],
        "uri": [request.uri],
        "size": [request.size],
        "etag": [request.etag],
        "mtime": [request.mtime.timestamp() if request.mtime else float("nan")],
        "frame_index": [-1],
        "timestamp_s": [float("nan")],
        "width": [request.width],
        "height": [request.height],
        "status": [request.status],
        "error": [request.error],
        "error_detail": [request.error_detail],
        "scale": [request.scale],
        "persons": persons_column([request.persons], [request.objects]),
    }
    rows = assemble_rows(batch, bundle_name=bundle_name, bundle_version=bundle_version, stages=stages)
    return with_attribute_maps(pa.Table.from_pylist(with_attribute_maps(rows), schema=LABEL_SCHEMA).to_pylist())[0]


def row_json(row: dict) -> dict:
    """JSON-safe row: timestamps as ISO 8601, everything else as Parquet gives it."""
    return json.loads(json.dumps(row, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def overlay_png(image: np.ndarray, row: dict) -> str:
    """The overlay the preview job draws, as base64 PNG."""
    buf = io.BytesIO()
    preview.render(image, row).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
