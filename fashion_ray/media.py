"""Image decoding with the failure modes of real corpora turned into reasons, not crashes.

decode_image never raises on bad input: it returns a DecodedImage whose `error` is one of
ERROR_REASONS, with a human-readable detail. Everything a photo can be (EXIF-rotated,
grayscale, palette, alpha, CMYK, 16-bit) comes out as 8-bit RGB.

Plain JPEGs can instead be decoded where the person model runs (decode_jpegs: batched
nvJPEG on a GPU): jpeg_for_device says which ones, from the header, in the CPU task.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from fashion_ray.errors import FashionRayError

# "timeout": a file (a probe, a segment's decode) that took longer than its deadline
ERROR_REASONS = ("unreadable", "undecodable", "truncated", "too_large", "unsupported", "timeout")
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO", "GIF"}

# We enforce our own pixel limit (max_pixels) from the header of every image, page and frame,
# before its pixels are decoded; Pillow's own guard (Image.MAX_IMAGE_PIXELS) stays on behind
# it, so that a code path we do not check still refuses bombs.


class Deadline:
    """A per-file time budget, checked between frames and packets: a hostile file whose
    frames are cheap to claim and dear to walk ends as a "timeout" row, not a stuck task."""

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if time.monotonic() > self.end:
            raise DeadlineExceeded(f"gave up after {self.seconds:g} s {doing}")


class DeadlineExceeded(FashionRayError):
    """Raised by Deadline.check; its message is the error row's detail."""


def over_pixel_limit(width: int, height: int, max_pixels: int | None) -> str | None:
    """The "too_large" detail for an image, page or frame over max_pixels (None: within it, or no limit)."""
    if max_pixels and width * height > max_pixels:
        return f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
    return None


@dataclass
class DecodedImage:
    image: np.ndarray | None  # HxWx3 uint8 at working resolution
    width: int = 0  # original (post-EXIF) size
    height: int = 0
    scale: float = 1.0  # working / original
    error: str | None = None
    detail: str = ""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        peak = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        gray = (arr * 255 // max(peak, 1)).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        span = float(arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) * 255 / span).astype(np.uint8), "L").convert("RGB")
    # Transparent pixels are composited on white: product cut-outs are shot on white in catalogs.
    if img.mode == "P" and "transparency" in img.info:
        return _palette_on_white(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # pasted through its alpha onto a white RGB canvas: one RGB and one alpha plane on top of
        # the image (an RGBA composite held three more full-size RGBA planes)
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, RGB


def _palette_on_white(img: Image.Image) -> Image.Image:
    """A palette image with transparency, composited on white in its palette (256 colours)
    before it becomes RGB: an 8000x8000 palette PNG of 8 KB took 1.3 GB through RGBA."""
    palette = np.array(img.getpalette("RGB") or [], np.float32).reshape(-1, 3)
    palette = np.vstack([palette, np.zeros((256 - len(palette), 3), np.float32)])
    alpha = np.full(256, 255, np.float32)
    transparency = img.info["transparency"]
    if isinstance(transparency, bytes):  # an alpha per palette entry
        alpha[: len(transparency)] = np.frombuffer(transparency[:256], np.uint8)
    elif isinstance(transparency, int) and 0 <= transparency < 256:  # one transparent entry
        alpha[transparency] = 0
    on_white = palette * alpha[:, None] / 255 + 255 * (1 - alpha[:, None] / 255)
    flat = img.copy()  # one byte a pixel; the caller's image (an animation's frame) keeps its palette
    flat.info.pop("transparency", None)
    flat.putpalette(np.round(on_white).astype(np.uint8).tobytes(), "RGB")
    return flat.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int, max_side: int | None) -> DecodedImage:
    """Decode bytes to RGB at working resolution (longest side <= max_side)."""
    if not data:
        return DecodedImage(None, error="undecodable", detail="empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return DecodedImage(None, error="too_large", detail=str(exc))
    except Image.UnidentifiedImageError:  # its message names a BytesIO's address: a detail that changed every run
        return DecodedImage(None, error="undecodable", detail="not an image: its first bytes match no image format")
    except Exception as exc:  # PIL raises many types for garbage input
        return DecodedImage(None, error="undecodable", detail=f"not an image: {type(exc).__name__}: {exc}"[:300])
    if img.format not in SUPPORTED_FORMATS:
        return DecodedImage(
            None,
            error="unsupported",
            detail=f"format {img.format} is not supported (supported: jpg, png, webp, bmp, tiff, gif)",
        )
    w, h = img.size
    if too_many := over_pixel_limit(w, h, max_pixels):
        return DecodedImage(None, width=w, height=h, error="too_large", detail=too_many)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except OSError as exc:
        reason = (
            "truncated" if "truncat" in str(exc).lower() or "broken data stream" in str(exc).lower() else "undecodable"
        )
        return DecodedImage(None, width=w, height=h, error=reason, detail=str(exc)[:300])
    except Exception as exc:
        return DecodedImage(None, width=w, height=h, error="undecodable", detail=f"{type(exc).__name__}: {exc}"[:300])
    return fit_to_side(rgb, max_side)


def gif_frame_durations(handle, deadline: Deadline) -> list[float]:
    """Each frame's duration (ms) of a GIF, from its blocks alone: Pillow's n_frames seeks
    through every frame, compositing each onto the full canvas (2,000 one-pixel frames on a
    3000x3000 canvas: 48 s). Stops at the first block that does not parse (truncated file)."""
    head = handle.read(13)
    if len(head) < 13 or not head.startswith(b"GIF"):
        return []
    if head[10] & 0x80:
        handle.read(3 << ((head[10] & 7) + 1))
    durations, delay = [], 0.0

    def skip_sub_blocks() -> bool:
        while True:
            size = handle.read(1)
            if not size:
                return False
            if size[0] == 0:
                return True
            if len(handle.read(size[0])) < size[0]:
                return False

    while True:
        deadline.check("reading the GIF's frame headers")
        kind = handle.read(1)
        if kind == b"\x21":  # extension: a graphic control block holds the next frame's delay
            label = handle.read(1)
            if label == b"\xf9":
                block = handle.read(6)
                if len(block) < 6:
                    return durations
                delay = struct.unpack("<H", block[2:4])[0] * 10.0
                if block[5] != 0 and not skip_sub_blocks():
                    return durations
            elif not skip_sub_blocks():
                return durations
        elif kind == b"\x2c":  # an image: descriptor, local colour table, LZW data
            descriptor = handle.read(9)
            if len(descriptor) < 9:
                return durations
            if descriptor[8] & 0x80:
                handle.read(3 << ((descriptor[8] & 7) + 1))
            if not handle.read(1) or not skip_sub_blocks():
                return durations
            durations.append(delay)
            delay = 0.0
        else:  # the trailer (0x3b), or garbage
            return durations


@dataclass
class FramePlan:
    """What a multi-frame image holds, read from its container's headers (no pixel decoded)."""

    times: list[float] | None = None  # each frame's start (s) on an animation's time line; None for pages
    offsets: list[int] | None = None  # each TIFF page's IFD offset: a page is decoded by seeking straight to it
    more: bool = False  # a TIFF holds pages past the `limit` walked (count == limit then)

    @property
    def count(self) -> int:
        """Frames or pages."""
        return len(self.offsets if self.offsets is not None else self.times)


def webp_frame_durations(handle, deadline: Deadline) -> list[float]:
    """Each frame's duration (ms) of an animated WebP, from its ANMF chunk headers ([] for a
    still WebP): Pillow learns a frame's duration only by decoding it. Stops at the first
    chunk that does not parse (truncated file)."""
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return []
    durations = []
    while True:
        deadline.check("reading the WebP's frame headers")
        chunk = handle.read(8)
        if len(chunk) < 8:
            return durations
        size = struct.unpack("<I", chunk[4:8])[0]
        if chunk[:4] == b"ANMF":
            frame = handle.read(16)
            if len(frame) < 16:
                return durations
            durations.append(float(int.from_bytes(frame[12:15], "little")))
            size -= 16
        handle.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to an even size


def _tiff_header(head: bytes) -> tuple[str, bool] | None:
    """(struct byte order, whether BigTIFF) from a TIFF's first 16 bytes; None if it is neither."""
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 8:
        return None
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 43 and len(head) == 16:
        return order, True
    return (order, False) if magic == 42 else None


def tiff_page_offsets(handle, deadline: Deadline, limit: int) -> tuple[list[int], bool]:
    """(each page's IFD offset, whether there are pages past `limit`) of a TIFF or BigTIFF,
    from the IFD chain alone. Pillow's n_frames loads every page's tags and checks each new
    offset against a list of all before it (32,000 pages: 9.4 s); this reads three numbers a
    page. A chain that loops or points past the end stops there."""
    head = handle.read(16)
    header = _tiff_header(head)
    if header is None:
        return [], False
    order, big = header
    # BigTIFF: 8-byte offsets and entry counts, 20-byte entries, the first offset at byte 8
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    first = struct.unpack(order + offset_format, head[8:16] if big else head[4:8])[0]
    count_size, offset_size = struct.calcsize(count_format), struct.calcsize(offset_format)
    offsets, seen, next_offset = [], set(), first
    while next_offset and next_offset not in seen:
        if len(offsets) == limit:
            return offsets, True
        deadline.check(f"reading the TIFF's page headers ({len(offsets)} so far)")
        handle.seek(next_offset)
        raw = handle.read(count_size)
        if len(raw) < count_size:
            break
        entries = struct.unpack(order + count_format, raw)[0]
        handle.seek(next_offset + count_size + entries * entry_size)
        raw = handle.read(offset_size)
        seen.add(next_offset)
        offsets.append(next_offset)
        if len(raw) < offset_size:
            break
        next_offset = struct.unpack(order + offset_format, raw)[0]
    return offsets, False


def frame_plan(img: Image.Image, handle, deadline: Deadline, limit: int) -> FramePlan:
    """What an open GIF, WebP or TIFF holds, read from `handle` (rewound) under the deadline.

    Animated GIF/WebP frames carry durations (a time line, sampled like a video); TIFF pages
    have none: every page is a row, in page order, and at most `limit` of them are walked.
    """
    handle.seek(0)
    if img.format == "TIFF":
        offsets, more = tiff_page_offsets(handle, deadline, limit)
        return FramePlan(offsets=offsets, more=more)
    durations = gif_frame_durations(handle, deadline) if img.format == "GIF" else webp_frame_durations(handle, deadline)
    times, t = [], 0.0
    for duration in durations:
        times.append(round(t, 6))
        # at least 10 ms a frame, so times rise strictly (browsers show 0-10 ms frames for 100 ms)
        t += max(duration, 10.0) / 1000
    return FramePlan(times=times)


class _FirstPageAt(io.RawIOBase):
    """A TIFF file read through a header whose first-IFD offset is another page's: Pillow
    then opens that page as page 0, without walking the pages before it."""

    def __init__(self, handle, ifd_offset: int):
        self.handle = handle
        handle.seek(0)
        head = bytearray(handle.read(16))
        order, big = _tiff_header(bytes(head)) or ("<", False)  # not a TIFF: Pillow then says so
        if big:
            head[8:16] = struct.pack(order + "Q", ifd_offset)
        else:
            head[4:8] = struct.pack(order + "I", ifd_offset)
        self.head = bytes(head)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def readinto(self, buffer) -> int:
        position = self.handle.tell()
        data = self.handle.read(len(buffer))
        if position < len(self.head):  # the patched header over the file's own
            overlap = self.head[position : position + len(data)]
            data = overlap + data[len(overlap) :]
        buffer[: len(data)] = data
        return len(data)


def tiff_page_rgb(
    handle, ifd_offset: int, max_pixels: int | None, deadline: Deadline
) -> tuple[np.ndarray | None, str | None, str]:
    """The TIFF page whose IFD starts at ifd_offset (FramePlan.offsets), like frame_rgb: the
    page is opened where it is, never walked to. Never raises."""
    page_name = f"the page at byte {ifd_offset}"
    try:
        deadline.check(f"before {page_name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's bomb warning: our own limit is checked here
            with Image.open(io.BufferedReader(_FirstPageAt(handle, ifd_offset))) as page:
                if too_many := over_pixel_limit(*page.size, max_pixels):
                    return None, "too_large", f"{page_name}: {too_many}"
                return np.asarray(_to_rgb(page), dtype=np.uint8), None, ""
    except Exception as exc:
        return (None, *_failure(exc, page_name))


def _failure(exc: Exception, what: str) -> tuple[str, str]:
    """(reason, detail) of a frame or page that failed: Pillow raises many types for corrupt
    ones (TypeError, SyntaxError, KeyError, ...)."""
    if isinstance(exc, DeadlineExceeded):
        return "timeout", f"{what}: {exc}"
    reason = "truncated" if isinstance(exc, EOFError) or "truncat" in str(exc).lower() else "undecodable"
    return reason, f"{what}: {type(exc).__name__}: {exc}"[:300]


def frame_rgb(
    img: Image.Image, index: int, max_pixels: int | None, deadline: Deadline
) -> tuple[np.ndarray | None, str | None, str]:
    """Frame `index` of an open GIF/WebP animation: (RGB array, None, "") or (None, reason, detail).
    Frames build on the ones before them, so the animation is walked one frame at a time
    under the deadline; each is held to max_pixels. Never raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = img.tell() + 1 if img.tell() < index else index
            for step in range(start, index + 1):  # Pillow would walk these frames too, unchecked
                deadline.check(f"walking to frame {index}")
                img.seek(step)
            if too_many := over_pixel_limit(*img.size, max_pixels):
                return None, "too_large", f"frame {index}: {too_many}"
            return np.asarray(_to_rgb(img), dtype=np.uint8), None, ""
    except Exception as exc:
        return (None, *_failure(exc, f"frame {index}"))


def working_size(width: int, height: int, max_side: int | None) -> tuple[int, int, float]:
    """(width, height, scale) the models see: the longest side at most max_side."""
    if not max_side or max(width, height) <= max_side:
        return width, height, 1.0
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def fit_to_side(rgb: Image.Image | np.ndarray, max_side: int | None) -> DecodedImage:
    """Scale an RGB image (PIL or HxWx3 array) so its longest side is at most max_side."""
    if isinstance(rgb, np.ndarray):
        rgb = Image.fromarray(rgb)
    width, height = rgb.size
    work_width, work_height, scale = working_size(width, height, max_side)
    if scale != 1.0:
        rgb = rgb.resize((work_width, work_height), Image.BILINEAR)
    return DecodedImage(np.asarray(rgb, dtype=np.uint8), width=width, height=height, scale=scale)


def jpeg_for_device(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of a JPEG that decode_jpegs can take as it is, else None.

    That is a complete file (ends with the EOI marker: a truncated one is left to
    decode_image, which names it), 8-bit RGB or grayscale (nvJPEG has no CMYK), upright
    (no EXIF rotation to apply) and within max_pixels. Reads the header only.
    """
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return None
    try:
        img = Image.open(io.BytesIO(data))
        upright = img.getexif().get(0x0112, 1) == 1  # EXIF Orientation
    except Exception:
        return None
    width, height = img.size
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or not upright or width * height > max_pixels:
        return None
    return width, height


def decode_jpegs(
    payloads: list[bytes], sizes: list[tuple[int, int]], max_side: int | None, device: str
) -> list[np.ndarray | None]:
    """Decode JPEGs on `device` in one batch (nvJPEG on CUDA, libjpeg-turbo on CPU) and scale
    them like fit_to_side(), as HxWx3 uint8 arrays; None for one that fails or whose size is not the
    header's (the caller decodes those with decode_image, which gives the reason)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in payloads]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one to find it
        decoded = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    images = []
    for image, (width, height) in zip(decoded, sizes):
        if image is None or tuple(image.shape[1:]) != (height, width):
            images.append(None)
            continue
        work_width, work_height, scale = working_size(width, height, max_side)
        if scale != 1.0:  # antialiased uint8 bilinear: within 1 level of PIL's resize in fit_to_side()
            image = resize(image, [work_height, work_width], antialias=True)
        images.append(image.permute(1, 2, 0).cpu().numpy())
    return images
