"""Video inputs: probe, frame sampling by true presentation times, streamed segment decode.

A video becomes one row per sampled frame. A probe task demuxes (does not decode) the
video stream to learn every frame's presentation time; sampling picks frames by those
times, so variable frame rate videos get true timestamps. The picked frames are cut into
segments of `frames_per_task`, and each segment is decoded by its own task, which seeks to
the keyframe before its first frame and decodes forward. Bytes are read through fsspec file
objects (ranged reads on object stores): no task holds a whole video, and one long video
spreads over many tasks. PyAV bundles FFmpeg, so nothing is needed from the system.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fashion_ray import media, storage
from fashion_ray.config import VideoSampling
from fashion_ray.storage import MULTI_FRAME_EXTENSIONS, VIDEO_EXTENSIONS


def is_video(uri: str) -> bool:
    return uri.lower().endswith(VIDEO_EXTENSIONS)


def may_have_frames(uri: str) -> bool:
    """A video, or an image format that can hold several frames or pages (probed the same way)."""
    return uri.lower().endswith(VIDEO_EXTENSIONS + MULTI_FRAME_EXTENSIONS)


def probe_image_frames(uri: str, sampling: VideoSampling, max_pixels: int, options=None) -> dict | None:
    """Plan an animated GIF/WebP (frames on their time line, sampled as a video is) or a
    multi-page TIFF (every page, page index as frame index, no timestamp; the page's IFD
    offset stands where a video frame's pts does, so its decode opens it in place).

    None when the file is a still image, or one the image decoder should judge (unreadable,
    corrupt, too large): it then becomes one image row with that reason.
    """
    try:
        handle, img = _open_image(uri, options)
    except Exception:
        return None
    with handle, img:
        try:
            if img.format not in ("GIF", "WEBP", "TIFF") or img.width * img.height > max_pixels:
                return None
            plan = media.frame_plan(img, handle, media.Deadline(sampling.timeout_s), sampling.max_frames_per_file)
        except media.DeadlineExceeded as exc:
            return _error("timeout", str(exc))
        except Exception:  # a corrupt header: the image decoder names it
            return None
        if plan.count < 2:
            return None
        if plan.times is None:
            frames = [(i, offset, None) for i, offset in enumerate(plan.offsets)][: sampling.max_frames]
            # (a --video-max-frames below the walk's limit leaves nothing unsaid)
            left_out = f"the TIFF holds more than {plan.count} pages" if plan.more and len(frames) == plan.count else ""
        else:
            frames = [(i, i, plan.times[i]) for i in select_frames(plan.times, sampling)]
            if not frames:
                return _error(
                    "no_frames_in_window", f"no frame in the window (the animation spans 0-{plan.times[-1]:.3f} s)"
                )
            left_out = ""
        return _capped(
            {"error": None, "detail": "", "width": img.width, "height": img.height, "frames": frames},
            sampling.max_frames_per_file,
            left_out,
        )


def _capped(plan: dict, limit: int, left_out: str = "") -> dict:
    """A plan with at most `limit` frames; what it leaves out is said in its error row
    ("too_many_frames", or joined to the reason it has already: one error row a file)."""
    frames = plan["frames"]
    if len(frames) <= limit and not left_out:
        return plan
    said = f"{left_out or f'{len(frames)} frames were sampled'}; the first {limit} are labelled (--max-frames-per-file)"
    if plan["error"]:
        return plan | {"frames": frames[:limit], "detail": f"{plan['detail']}; {said}"[-300:]}
    return plan | {"frames": frames[:limit], "error": "too_many_frames", "detail": said}


def decode_image_frames(
    uri: str,
    positions: list[int],
    options=None,
    *,
    max_pixels: int | None = None,
    timeout_s: float = VideoSampling.timeout_s,
):
    """Frames of an animation (positions: frame indexes) or pages of a TIFF (positions: IFD
    offsets, probe_image_frames); yields (position, RGB array | None, error, detail) in the
    order given, like decode_segment."""
    try:
        handle, img = _open_image(uri, options)
    except Exception as exc:
        for position in positions:
            yield position, None, "undecodable", f"{type(exc).__name__}: {exc}"[:300]
        return
    deadline = media.Deadline(timeout_s)
    with handle, img:
        for position in positions:
            if img.format == "TIFF":
                yield (position, *media.tiff_page_rgb(handle, position, max_pixels, deadline))
            else:
                yield (position, *media.frame_rgb(img, position, max_pixels, deadline))


def select_frames(times: list[float], sampling: VideoSampling) -> list[int]:
    """Indexes (presentation order) of the frames to keep.

    With fps: for each target time start, start + 1/fps, ... the first frame at or after it
    (a frame is kept once even if several targets fall before the next frame).
    """
    eps = 1e-6
    window = [
        i
        for i, t in enumerate(times)
        if t >= sampling.start_s - eps and (sampling.end_s is None or t < sampling.end_s - eps)
    ]
    if sampling.every_n:
        picked = window[:: sampling.every_n]
    else:
        picked, k = [], 0
        for i in window:
            target = sampling.start_s + k / sampling.fps
            if times[i] >= target - eps:
                picked.append(i)
                # the next target after this frame, computed: a frame at 10^13 s must not be counted up to
                k = max(k + 1, math.floor((times[i] + eps - sampling.start_s) * sampling.fps) + 1)
    return picked[: sampling.max_frames] if sampling.max_frames else picked


def _open(uri: str, options, opener=None):
    """(file handle, container) with the handle closed if the container cannot be opened.
    `opener` takes the handle; PyAV's demuxer by default."""
    import av

    fs, path = storage.filesystem(uri, options)
    handle = storage.open_regular_file(path) if storage.split_uri(uri)[0] == "file" else fs.open(path, "rb")
    try:
        return handle, opener(handle) if opener else av.open(handle, mode="r", metadata_errors="ignore")
    except Exception:
        handle.close()
        raise


def _open_image(uri: str, options):
    from PIL import Image

    return _open(uri, options, Image.open)


def plan_frames(uri: str, sampling: VideoSampling, max_pixels: int, options=None) -> dict | None:
    """The frames to label in a video (probe) or a multi-frame image (probe_image_frames)."""
    if is_video(uri):
        return probe(uri, sampling, options, max_pixels=max_pixels)
    return probe_image_frames(uri, sampling, max_pixels, options)


def decode_frames(
    uri: str,
    pts_wanted: list[int],
    options=None,
    *,
    max_pixels: int | None = None,
    timeout_s: float = VideoSampling.timeout_s,
):
    """The frames a plan picked, from a video (decode_segment) or a multi-frame image (decode_image_frames)."""
    decode = decode_segment if is_video(uri) else decode_image_frames
    return decode(uri, pts_wanted, options, max_pixels=max_pixels, timeout_s=timeout_s)


def _error(reason: str, detail: str) -> dict:
    return {"error": reason, "detail": detail[:300], "frames": []}


def probe(uri: str, sampling: VideoSampling, options=None, *, max_pixels: int | None = None) -> dict:
    """Plan a video: sampled frames as (index, pts, seconds), or an error reason.

    Returns {"error", "detail", "frames", "width", "height"}; a video that stops mid-stream
    keeps the frames before the break and reports "truncated" as well, and so does one whose
    demux outlasts sampling.timeout_s ("timeout": the frames listed until then are kept).
    """
    import av

    try:
        handle, container = _open(uri, options)
    except FileNotFoundError as exc:
        return _error("unreadable", f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        return _error("undecodable", f"not a readable video: {type(exc).__name__}: {exc}")
    error, detail, pts = None, "", []
    deadline = media.Deadline(sampling.timeout_s)
    try:
        with handle, container:
            if not container.streams.video:
                return _error("undecodable", "the file has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec is None or not codec.name:
                return _error("unsupported", "the video codec is not one FFmpeg can decode")
            width, height, base = codec.width, codec.height, stream.time_base
            if too_many := media.over_pixel_limit(width, height, max_pixels):
                return _error("too_large", f"each frame: {too_many}")
            try:
                # the deadline counts packets, not frames: a stream of empty packets is walked too
                for n, packet in enumerate(container.demux(stream)):
                    value = packet.pts if packet.pts is not None else packet.dts
                    if packet.size and value is not None:
                        pts.append(value)
                    if n % 256 == 0:
                        deadline.check(f"listing the video's frames ({len(pts)} so far)")
            except media.DeadlineExceeded as exc:
                error, detail = "timeout", f"{exc}: the frames listed until then are labelled"
            except (av.FFmpegError, OSError) as exc:
                error, detail = "truncated", f"the stream breaks after {len(pts)} frames: {exc}"
            declared = container.duration / 1e6 if container.duration else None
    except Exception as exc:
        return _error("undecodable", f"{type(exc).__name__}: {exc}")
    if not pts:
        if error is None and declared:
            error, detail = "truncated", f"the stream ends before its first frame (declared {declared:.3f} s)"
        return _error(error or "undecodable", detail or "the video stream holds no frames")
    pts.sort()
    times = [float(p * base) for p in pts]  # the container's presentation times, as AVA counts them
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    if error is None and declared and declared - times[-1] > max(1.0, 3 * step):
        # FFmpeg ends a cut-off stream quietly; the duration in the header tells
        error, detail = "truncated", f"the stream ends at {times[-1]:.3f} s of a declared {declared:.3f} s"
    picked = select_frames(times, sampling)
    if not picked and error is None:
        window = f"[{sampling.start_s}, {sampling.end_s if sampling.end_s is not None else 'end'})"
        return _error(
            "no_frames_in_window",
            f"no frame in the window {window} s (the video spans {times[0]:.3f}-{times[-1]:.3f} s)",
        )
    return _capped(
        {
            "error": error,
            "detail": detail,
            "width": width,
            "height": height,
            "frames": [(i, pts[i], round(times[i], 6)) for i in picked],
        },
        sampling.max_frames_per_file,
    )


def decode_segment(
    uri: str,
    pts_wanted: list[int],
    options=None,
    *,
    max_pixels: int | None = None,
    timeout_s: float = VideoSampling.timeout_s,
):
    """Decode the frames with these presentation timestamps; yields (pts, RGB array | None, error, detail).
    A frame over max_pixels (a stream may change size midway) is a "too_large" row; a segment
    that outlasts timeout_s keeps the frames decoded until then."""
    wanted = sorted(pts_wanted)
    got: dict[int, np.ndarray | tuple[str, str]] = {}
    failure = ("truncated", "the stream ended before this frame")
    deadline = media.Deadline(timeout_s)
    try:
        handle, container = _open(uri, options)
        with handle, container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
            for attempt in range(2):
                for frame in container.decode(stream):
                    deadline.check("decoding the segment")
                    if frame.pts is None:
                        continue
                    if attempt == 0 and not got and frame.pts > wanted[0]:
                        break  # the seek landed past the first frame (some containers): decode from the start
                    if frame.pts in pts_wanted:
                        too_many = media.over_pixel_limit(frame.width, frame.height, max_pixels)
                        got[frame.pts] = ("too_large", too_many) if too_many else frame.to_ndarray(format="rgb24")
                    if frame.pts >= wanted[-1]:
                        break
                if got or attempt == 1:
                    break
                container.seek(0, stream=stream, backward=True, any_frame=False)
    except media.DeadlineExceeded as exc:
        failure = ("timeout", str(exc))
    except Exception as exc:  # any failure of a hostile stream is this segment's rows, never the task's
        failure = ("truncated" if got else "undecodable", f"{type(exc).__name__}: {exc}"[:300])
    for p in wanted:
        image = got.get(p)
        if isinstance(image, np.ndarray):
            yield p, image, None, ""
        else:
            yield (p, None, *(image or failure))


def encode_video(path: str, frames, times_s: list[float], codec: str = "libx264") -> None:
    """Write frames at the given presentation times (variable frame rate allowed).

    For tests and benchmarks: videos with known content and known timestamps.
    """
    import fractions

    import av

    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)  # pts in milliseconds
        if codec == "libx264":
            stream.options = {
                "g": "8",
                "bf": "2",
            }  # keyframes every 8 frames, B-frames: seeks and reordering get exercised
        for image, t in zip(itertools.chain([first], frames), times_s):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
