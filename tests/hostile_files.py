"""Hostile inputs for the labelling job, and a run of the job over them.

    python tests/hostile_files.py --out /tmp/hostile --cases 300       # build, label, check, print JSON
    python tests/hostile_files.py --out /tmp/hostile --cases 300 --build-only
    python tests/hostile_files.py --out /tmp/hostile --cases 300 --large -- --stages person --num-cpus 2

Builds the files a security review threw at the job (a video whose last frame claims 10^13 s,
a GIF of 2,000 tiny frames on a 3000x3000 canvas, a TIFF with a huge later page, absurd
frame counts and durations) and byte-flip fuzz of every format the job reads (`--cases` per
format), beside good photos. The run must exit 0 within the bound, give every input a row
(or count it as skipped) and label every good photo. tests/test_hostile_files.py runs this
with fewer cases per format.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import struct
import time

import numpy as np
from PIL import Image

from fashion_ray.bench.serving import palette_png
from helpers import encode_image, read_rows, run_cli


def _video(path: str, times: list[float], size=(64, 48), codec="libx264", flat=False) -> bytes:
    from fashion_ray.video import decoding

    rng = np.random.default_rng(len(times))
    frames = [
        np.full((size[1], size[0], 3), 90, np.uint8)
        if flat
        else rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for _ in times
    ]
    decoding.encode_video(path, frames, times, codec=codec)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def _tiny_frames_gif(frames: int, canvas: int) -> bytes:
    """`frames` 1x1 frames on a canvas x canvas screen, written by hand (30 bytes a frame):
    a small file in which every frame decodes to the whole canvas."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", canvas, canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for k in range(frames):
        out += b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control: keep the canvas, 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", k % canvas, (k // canvas) % canvas, 1, 1, 0)
        out += b"\x02\x02\x4c\x01\x00"  # LZW: clear, colour 1, end
    return bytes(out + b"\x3b")


def _huge_later_page_tiff(side: int) -> bytes:
    """A TIFF whose first page is small and whose second is side x side (deflated: small on disk)."""
    pages = [Image.new("RGB", (32, 24), (120, 80, 40)), Image.new("L", (side, side), 0)]
    return encode_image(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate")


def _many_pages_tiff(pages: int) -> bytes:
    """A TIFF of `pages` 1x1 grey pages, written by hand (102 bytes a page, all sharing one
    pixel): 32,000 pages in 3.3 MB, the review's file."""
    pixel_at, first = 8, 10
    out = bytearray(b"II*\x00" + struct.pack("<I", first) + b"\x80\x00")
    for k in range(pages):
        next_ifd = first + (k + 1) * 102 if k + 1 < pages else 0
        tags = [
            (256, 3, 1),
            (257, 3, 1),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, pixel_at),
            (278, 3, 1),
            (279, 4, 1),
        ]  # size, 8-bit, uncompressed, grey, one strip
        out += struct.pack("<H", len(tags))
        for tag, kind, value in tags:
            out += struct.pack("<HHI", tag, kind, 1) + (
                struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            )
        out += struct.pack("<I", next_ifd)
    return bytes(out)


def _many_frames(fmt: str, frames: int) -> bytes:
    """An animation of `frames` 2x2 frames (10 ms each, colours alternating so none merge)."""
    images = [Image.new("RGB", (2, 2), (255 * (k % 2), 0, 0)) for k in range(frames)]
    return encode_image(
        images[0],
        fmt,
        save_all=True,
        append_images=images[1:],
        duration=10,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )


def seeds(tmp: str) -> dict[str, bytes]:
    """One valid file per format: what the fuzz flips bytes of."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    frames = [Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)) for _ in range(3)]
    return {
        "jpg": encode_image(photo, "JPEG", quality=85),
        "png": encode_image(photo, "PNG"),
        "webp": encode_image(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100),
        "gif": encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "tif": encode_image(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "bmp": encode_image(photo, "BMP"),
        "mkv": _video(os.path.join(tmp, "seed.mkv"), [k * 0.5 for k in range(6)]),
        "mp4": _video(os.path.join(tmp, "seed.mp4"), [k * 0.5 for k in range(6)]),
    }


def named_cases(tmp: str) -> dict[str, bytes]:
    """The review's files and more of the same kind, by name."""
    return {
        "far_last_frame.mkv": _video(os.path.join(tmp, "far.mkv"), [0.0, 0.5, 1e13]),
        "thousands_of_frames.mkv": _video(
            os.path.join(tmp, "many.mkv"), [k * 0.001 for k in range(3000)], size=(16, 16)
        ),
        "tiny_frames_big_canvas.gif": _tiny_frames_gif(2000, 3000),
        "huge_second_page.tif": _huge_later_page_tiff(12000),
        "huge_frames.mkv": _video(os.path.join(tmp, "huge.mkv"), [0.0, 1.0], size=(8192, 8192), flat=True),
        "many_pages.tif": _many_pages_tiff(32_000),
        "many_frames.webp": _many_frames("WEBP", 3_000),
        "many_frames_apng.png": _many_frames("PNG", 3_000),
        "palette_bomb.png": palette_png(8000),  # 60 KB, 64 megapixels
    }


def large_cases(tmp: str) -> dict[str, bytes]:
    """Many pages, many frames and long videos at sizes a test would not wait for (--large)."""
    return {
        "pages_250k.tif": _many_pages_tiff(250_000),  # 25 MB: Pillow's page count passed the stall timeout
        "frames_20k.gif": _tiny_frames_gif(20_000, 64),
        "frames_20k.webp": _many_frames("WEBP", 20_000),
        "frames_20k_apng.png": _many_frames("PNG", 20_000),
        "video_10min_64x48.mkv": _video(
            os.path.join(tmp, "v1.mkv"), [k / 30 for k in range(18_000)], size=(64, 48), flat=True
        ),
        "video_1h_16x16.mkv": _video(
            os.path.join(tmp, "v2.mkv"), [k / 30 for k in range(108_000)], size=(16, 16), flat=True
        ),
        "video_20min_320x240.mp4": _video(
            os.path.join(tmp, "v3.mp4"), [k / 10 for k in range(12_000)], size=(320, 240), flat=True
        ),
    }


def fuzz(data: bytes, cases: int, seed: int) -> list[bytes]:
    """`cases` copies of data with 1-8 bytes flipped or a random cut (a third of them)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(cases):
        buf = bytearray(data)
        if k % 3 == 2:
            buf = buf[: int(rng.integers(1, len(buf)))]
        for _ in range(int(rng.integers(1, 9))):
            at = int(rng.integers(0, len(buf)))
            buf[at] = int(rng.integers(0, 256))
        out.append(bytes(buf))
    return out


def build(folder: str, cases: int, good: int = 4, large: bool = False) -> dict:
    """Write the hostile files and `good` good photos into folder; returns what was written."""
    os.makedirs(folder, exist_ok=True)
    written = {**named_cases(folder), **(large_cases(folder) if large else {})}
    for k, (fmt, data) in enumerate(seeds(folder).items()):
        for i, case in enumerate(fuzz(data, cases, seed=k)):
            written[f"fuzz_{fmt}_{i:03d}.{fmt}"] = case
    rng = np.random.default_rng(1)
    good_names = []
    for i in range(good):
        name = f"good_{i}.jpg"
        written[name] = encode_image(Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)), "JPEG")
        good_names.append(name)
    written[".hidden.jpg"] = written[good_names[0]]
    for name, data in written.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return {
        "files": sorted(written),
        "good": good_names,
        "named": sorted(set(written) - {n for n in written if n.startswith(("fuzz_", "good_", "."))}),
    }


def run_job(folder: str, output: str, timeout_s: float, extra: list[str] = ()) -> dict:
    """The labelling job (CLI) over the folder, extra flags appended; its exit code, time, peak
    memory (the job and every process it starts, Ray's included) and output."""
    from fashion_ray.samplers import PeakRSS

    start = time.perf_counter()
    with PeakRSS() as memory:
        proc = run_cli(
            "--input", folder, "--output", output, *extra, env={"RAY_AUTH_MODE": "disabled"}, timeout=timeout_s
        )
    return {
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(memory.peak / 2**30, 2),
        "stderr_tail": proc.stderr[-2000:],
        "stdout_tail": proc.stdout[-2000:],
    }


def check(output: str, built: dict) -> dict:
    """Every input a row (or counted as skipped), every good photo labelled."""
    rows = read_rows(pathlib.Path(output))
    by_file = {}
    for row in rows:
        by_file.setdefault(os.path.basename(row["uri"]), []).append(row)
    with open(os.path.join(output, "manifest.json")) as f:
        manifest = json.load(f)
    listed = [n for n in built["files"] if not n.startswith(".")]
    missing = [n for n in listed if n not in by_file]
    good_ok = all(by_file.get(n) and by_file[n][0]["status"] == "ok" for n in built["good"])
    reasons = {}
    for row in rows:
        if row["status"] != "ok":
            reasons[row["error"]] = reasons.get(row["error"], 0) + 1
    rows_of_named = {}  # the review's files: how many rows each became, by status or reason
    for name in built.get("named", []):
        counts = {}
        for row in by_file.get(name, []):
            counts[row["error"] or "ok"] = counts.get(row["error"] or "ok", 0) + 1
        rows_of_named[name] = dict(sorted(counts.items()))
    return {
        "files": len(built["files"]),
        "rows": len(rows),
        "files_without_row": missing[:20],
        "files_without_row_count": len(missing),
        "good_photos_labelled": good_ok,
        "skipped": manifest["last_run"].get("skipped", {}),
        "errors_by_reason": dict(sorted(reasons.items())),
        "rows_of_named_files": rows_of_named,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="a scratch folder: files go to OUT/files, labels to OUT/labels")
    p.add_argument("--cases", type=int, default=300, help="byte-flip fuzz cases per format")
    p.add_argument("--timeout", type=float, default=3600, help="the bound on the run, in seconds")
    p.add_argument("--build-only", action="store_true")
    p.add_argument(
        "--large",
        action="store_true",
        help="add 250,000 TIFF pages, 20,000-frame GIF/WebP/APNG and long videos (10 min to 1 h)",
    )
    p.add_argument("job_args", nargs="*", help="extra labelling job flags after --, e.g. -- --bundle /path/to/bundle")
    return p


def main(args) -> dict:
    built = build(os.path.join(args.out, "files"), args.cases, large=args.large)
    if args.build_only:
        return {"files": len(built["files"])}
    ran = run_job(os.path.join(args.out, "files"), os.path.join(args.out, "labels"), args.timeout, args.job_args)
    result = {**ran, **(check(os.path.join(args.out, "labels"), built) if ran["exit_code"] == 0 else {})}
    return result


if __name__ == "__main__":
    print(json.dumps(main(get_args_parser().parse_args()), indent=1))
