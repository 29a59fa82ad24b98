"""Hostile files cannot stop a run: each ends as a row (or a counted skip) within a bound.

The job is run (CLI, real Ray) over tests/hostile_files.py's corpus: the security review's
files (a video whose last frame claims 10^13 s, 2,000 one-pixel GIF frames on a 3000x3000
canvas, a TIFF with a 12000x12000 second page, 8192x8192 video frames) and byte-flip fuzz of
every format the job reads, beside good photos that must still be labelled.
"""

from __future__ import annotations

import io
import os
import time

import hostile_files
import pytest
from helpers import encode_image, read_rows
from PIL import Image

from fashion_ray import media, video


def test_frame_sampling_is_computed_not_counted():
    """fps sampling over a frame at 10^13 s: the next target is computed, not stepped to."""
    sampling = video.VideoSampling(fps=1.0)
    start = time.perf_counter()
    assert video.select_frames([0.0, 0.5, 1.0, 1e13, 1e13 + 0.2, 1e13 + 1.0], sampling) == [0, 2, 3, 5]
    assert time.perf_counter() - start < 1.0
    assert video.select_frames([0.0, 0.4, 0.9, 1.0, 2.6, 2.9, 3.0], sampling) == [0, 3, 4, 6]


def test_gif_frames_are_read_from_block_headers():
    frames = [Image.new("RGB", (20, 10), (40 * k, 0, 0)) for k in range(5)]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[30, 40, 50, 60, 70])
    durations = media.gif_frame_durations(io.BytesIO(data), media.Deadline(5))
    assert durations == [30, 40, 50, 60, 70] and len(durations) == Image.open(io.BytesIO(data)).n_frames
    assert media.gif_frame_durations(io.BytesIO(data[: len(data) // 2]), media.Deadline(5)) == [30, 40]
    big = hostile_files._tiny_frames_gif(2000, 3000)
    start = time.perf_counter()
    assert len(media.gif_frame_durations(io.BytesIO(big), media.Deadline(5))) == 2000
    assert time.perf_counter() - start < 2.0  # Pillow's n_frames takes ~50 s on this file


def test_pages_are_held_to_the_pixel_limit_and_never_raise(tmp_path):
    path = tmp_path / "pages.tif"
    path.write_bytes(hostile_files._huge_later_page_tiff(12000))
    decoded = list(video.decode_frames(str(path), [0, 1], max_pixels=64_000_000))
    assert decoded[0][2] is None and decoded[0][1].shape == (24, 32, 3)
    assert decoded[1][2] == "too_large" and "12000x12000" in decoded[1][3]
    # byte-flipped multi-page TIFFs and GIFs: a reason per frame, never an exception
    seeds = hostile_files.seeds(str(tmp_path))
    for fmt in ("tif", "gif", "webp"):
        for k, case in enumerate(hostile_files.fuzz(seeds[fmt], 150, seed=11)):
            name = tmp_path / f"fuzz{k}.{fmt}"
            name.write_bytes(case)
            plan = video.plan_frames(str(name), video.VideoSampling(), 64_000_000)
            if plan and plan["frames"]:
                for _, image, reason, detail in video.decode_frames(str(name), [p for _, p, _ in plan["frames"]],
                                                                    max_pixels=64_000_000, timeout_s=5):
                    assert (image is None) == (reason in media.ERROR_REASONS), (fmt, k, reason, detail)
            media.decode_image(case, max_pixels=64_000_000, max_side=1280)  # never raises either


@pytest.mark.slow
def test_the_job_labels_around_hostile_files(tmp_path):
    """Every listed file a row, the run exits 0 inside the bound, the good photos labelled."""
    built = hostile_files.build(str(tmp_path / "files"), cases=12)
    bound_s = 420
    ran = hostile_files.run_job(str(tmp_path / "files"), str(tmp_path / "labels"), bound_s,
                                ["--stages", "person", "--num-cpus", "2", "--file-timeout", "5"])
    assert ran["exit_code"] == 0, ran["stderr_tail"]
    found = hostile_files.check(str(tmp_path / "labels"), built)
    assert found["files_without_row_count"] == 0, found["files_without_row"]
    assert found["good_photos_labelled"] and found["skipped"] == {"hidden": 1}
    rows = {}
    for row in read_rows(tmp_path / "labels"):
        rows.setdefault(os.path.basename(row["uri"]), []).append(row)
    assert [(r["status"], r["error"]) for r in rows["huge_frames.mkv"]] == [("error", "too_large")]
    pages = sorted(rows["huge_second_page.tif"], key=lambda r: r["frame_index"])
    assert [(r["frame_index"], r["status"], r["error"]) for r in pages] == [(0, "ok", None), (1, "error", "too_large")]
    assert all(r["status"] == "ok" for r in rows["far_last_frame.mkv"])
    # the GIF's frames are labelled or end as timeouts: never a stuck task
    assert {r["error"] for r in rows["tiny_frames_big_canvas.gif"]} <= {None, "timeout"}
    assert found["rows"] == sum(len(v) for v in rows.values())
    assert set(found["errors_by_reason"]) <= set(media.ERROR_REASONS) | {"no_frames_in_window"}
