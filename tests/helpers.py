"""Test helpers: the CLI, output readers, a faulty S3 proxy, and catalogues of bad and moving media."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CORPUS = os.path.join(ROOT, "fashion_ray", "assets", "sample_corpus")
RAY_CLI = os.path.join(os.path.dirname(sys.executable), "ray")  # the environment's own `ray`
SECRET_MARKER = "fr-secret-7Qx9-never-written"  # the default run's AWS secret key; must appear nowhere


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


NO_CUDA_REASON = "no CUDA device on this machine: this checks a GPU path and runs where torch.cuda.is_available()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_16bit(width: int, height: int) -> bytes:
    ramp = (np.arange(width) * (65535 // (width - 1))).astype(">u2")  # 0 .. 65535 left to right
    raw = b"".join(b"\x00" + ramp.tobytes() for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny file declaring a huge 1-bit image (the classic decompression bomb shape)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def encode_image(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bad_file_catalogue() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected error reason or None when it must decode fine)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    jpeg = encode_image(photo, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 64x48 becomes 48x64 upright
    rgba = Image.new("RGBA", (32, 24), (255, 0, 0, 0))
    return {
        "zero_bytes.jpg": (b"", "undecodable"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "text_named.jpg": (b"this is not an image, it is a text file\n" * 4, "undecodable"),
        "huge_declared.png": (_bomb_png(20000, 20000), "too_large"),
        "favicon.png": (encode_image(photo, "ICO"), "unsupported"),  # an icon file under a photo's name
        "gray16.png": (_png_16bit(40, 30), None),
        "cmyk.jpg": (encode_image(photo.convert("CMYK"), "JPEG"), None),
        "exif_rotated.jpg": (encode_image(photo, "JPEG", exif=exif.tobytes()), None),
        "alpha.png": (encode_image(rgba, "PNG"), None),
        "palette.png": (encode_image(photo.convert("P"), "PNG"), None),
    }


def scanless_jpeg() -> bytes:
    """A JPEG whose header and end marker are intact but which has no image data: it passes
    media.jpeg_for_device's header check and fails in the decoder itself."""
    data = encode_image(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG")
    return data[: data.index(b"\xff\xda")] + b"\xff\xd9"


@dataclass(frozen=True)
class RayHead:
    """A `ray start --head` for the tests: its CLI, job-submission (dashboard) and GCS
    addresses, and the environment to run the CLI in."""

    cli: str
    dashboard: str
    gcs: str
    env: dict


def short_temp_dir(prefix: str) -> str:
    """A fresh folder for a Ray head's sockets: Unix socket paths may not exceed 107 bytes, and
    pytest's tmp_path under a long TMPDIR (macOS gives one) is past that already."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None)


def start_ray_head(temp, env: dict, *flags: str):
    """`ray start --head --block` with `flags`, its files under `temp` (a short folder: Unix
    socket paths), its output in temp/head.log, in its own process group so that
    stop_process_group stops it and everything it started; returns (process, log)."""
    log = open(os.path.join(temp, "head.log"), "w")
    head = subprocess.Popen(
        [RAY_CLI, "start", "--head", "--block", f"--temp-dir={temp}", *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return head, log


def stop_process_group(proc, log) -> None:
    """Stop a process started with start_new_session and everything it started (a `ray start
    --block` head with its workers, a Label Studio server). Killed at once: nothing of the
    tests' throwaway servers needs keeping, and Ray's graceful stop costs half a minute."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # gone already
        pass
    proc.wait(timeout=60)
    log.close()


def shut_down(cluster) -> None:
    """Kill a ray.cluster_utils.Cluster's nodes (Cluster.shutdown() stops each process
    gracefully, about 30 s here; the tests' clusters are throwaway), then reset what
    shutdown() resets."""
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node, allow_graceful=False)
    if cluster.head_node is not None:
        cluster.remove_node(cluster.head_node, allow_graceful=False)
    cluster.shutdown()


# the parts run that resume tests compare with: killed and resumed, on any nodes, a run must
# end with these weights
STRAIGHT_TRAINING = [
    "--task",
    "parts",
    "--workers",
    "2",
    "--steps",
    "16",
    "--batch-size",
    "2",
    "--input-size",
    "48",
    "--checkpoint-every",
    "4",
    "--base-bundle",
    "",
]


def registered_checkpoints(run_dir) -> list:
    """The checkpoint folders Ray Train has registered (listed in the run's
    checkpoint_manager_snapshot.json), oldest first: the ones a restart resumes from. A folder
    appears before its registration, and one cut off by a killed node is never registered."""
    import json

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or being rewritten
        return []
    return [run_dir / result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]]


def final_checkpoint_state(run_dir) -> dict:
    """The state a finished training run registered last."""
    import torch

    return torch.load(registered_checkpoints(run_dir)[-1] / "state.pt", weights_only=True)


_JOBS: dict = {}


def job_main(name: str, *args: str) -> int:
    """jobs/NAME.py's main() in this process, on the flags its CLI takes: for tests of what a
    job does rather than of its process (the tests' Ray is reused instead of a fresh one)."""
    import importlib.util

    if name not in _JOBS:
        spec = importlib.util.spec_from_file_location(f"job_{name}", os.path.join(ROOT, "jobs", f"{name}.py"))
        _JOBS[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_JOBS[name])
    module = _JOBS[name]
    return module.main(module.get_args_parser().parse_args(list(args)))


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "label_corpus.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def read_rows(out) -> list[dict]:
    import json

    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    return [r for s in manifest["shards"] for r in pq.read_table(out / s["parquet"]).to_pylist()]


class FaultyS3Proxy:
    """A real HTTP proxy in front of the S3 server that answers every `every`-th request
    with 503 SlowDown (what S3 sends when it throttles) without forwarding it, and counts
    the requests it saw. Point a client's endpoint at `.endpoint`."""

    def __init__(self, upstream: str, every: int = 0):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.every, self.requests, self.faults = every, [], 0
        lock = threading.Lock()
        host, port = urlsplit(upstream).hostname, urlsplit(upstream).port
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.requests.append((self.command, self.path))
                    fault = proxy.every and len(proxy.requests) % proxy.every == 0
                    proxy.faults += bool(fault)
                if fault:
                    payload = (
                        b""
                        if self.command == "HEAD"
                        else (
                            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                            b"<Message>Please reduce your request rate.</Message></Error>"
                        )
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(host, port, timeout=60)
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def jpeg_bytes(seed: int, size=(64, 48)) -> bytes:
    """A small distinct JPEG per seed."""
    rng = np.random.default_rng(seed)
    return encode_image(
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)), "JPEG", quality=80
    )


def moving_photo_video(path, photo: str, size, canvas, step: int, count: int, interval_s: float) -> None:
    """A video of a real photo (people in it) sliding right by `step` px a frame, on a plain background."""
    from fashion_ray.video import decoding

    picture = Image.open(os.path.join(SAMPLE_CORPUS, photo)).convert("RGB").resize(size)
    frames = []
    for k in range(count):
        frame = Image.new("RGB", canvas, (90, 110, 120))
        frame.paste(picture, (20 + step * k, (canvas[1] - size[1]) // 2))
        frames.append(np.asarray(frame))
    decoding.encode_video(str(path), frames, [k * interval_s for k in range(count)])


def bad_video_catalogue(folder) -> dict[str, tuple[str, int]]:
    """Write broken videos into folder; name -> (error reason, frames that still become rows at 1 fps)."""
    from fashion_ray.video import decoding

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(20)]
    decoding.encode_video(str(folder / "whole.mkv"), noise, [k * 0.25 for k in range(20)])
    whole = (folder / "whole.mkv").read_bytes()
    (folder / "whole.mkv").unlink()
    (folder / "cut_off.mkv").write_bytes(whole[: int(len(whole) * 0.55)])  # frames 0-2.25 s of 4.75 s survive
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "text_named.mp4").write_bytes(b"this is a text file, not a video\n" * 8)
    decoding.encode_video(str(folder / "ffv1.avi"), noise[:4], [0, 0.5, 1, 1.5], codec="ffv1")
    avi = (folder / "ffv1.avi").read_bytes()
    (folder / "ffv1.avi").unlink()
    (folder / "unknown_codec.avi").write_bytes(avi.replace(b"FFV1", b"ZZZZ"))  # a FourCC no decoder knows
    decoding.encode_video(str(folder / "starts_late.mkv"), noise[:4], [12, 12.5, 13, 13.5])  # outside a 0-10 s window
    return {
        "cut_off.mkv": ("truncated", 3),
        "zero_bytes.mp4": ("undecodable", 0),
        "text_named.mp4": ("undecodable", 0),
        "unknown_codec.avi": ("unsupported", 0),
        "starts_late.mkv": ("no_frames_in_window", 0),
    }


DOC_FILES = ["README.md", *sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))]


def code_lines(text: str) -> list[str]:
    """The shell lines of a Markdown text's indented code blocks, continuation lines joined."""
    lines, current = [], ""
    for line in text.splitlines():
        if not (line.startswith("    ") or current):
            continue
        current += " " + line.strip().rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every `python jobs/...py` or `python tests/...py` command in README.md and
    docs/*.md: `&&` chains split, comments and redirections dropped; argv starts at the script."""
    import re
    import shlex

    found = []
    for name in DOC_FILES:
        text = open(os.path.join(ROOT, name)).read()
        spans = re.findall(r"`(python3? (?:jobs|tests)/[^`]+)`", " ".join(text.split("\n")))  # inline, maybe wrapped
        for line in code_lines(text) + spans:
            for part in line.split("&&"):
                match = re.search(r"\bpython3? ((?:jobs|tests)/\w+\.py\b.*)", part)
                if not match:
                    continue
                argv = shlex.split(match.group(1), comments=True)
                cut = next((i for i, a in enumerate(argv) if a[0] in ">|" or a.startswith("2>")), len(argv))
                found.append((name, argv[:cut]))
    return found
