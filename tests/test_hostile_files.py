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

import pytest
from PIL import Image

import hostile_files
from fashion_ray import config, media
from fashion_ray.video import decoding
from helpers import encode_image, read_rows


def test_frame_sampling_is_computed_not_counted():
    """fps sampling over a frame at 10^13 s: the next target is computed, not stepped to."""
    sampling = config.VideoSampling(fps=1.0)
    start = time.perf_counter()
    assert decoding.select_frames([0.0, 0.5, 1.0, 1e13, 1e13 + 0.2, 1e13 + 1.0], sampling) == [0, 2, 3, 5]
    assert time.perf_counter() - start < 1.0
    assert decoding.select_frames([0.0, 0.4, 0.9, 1.0, 2.6, 2.9, 3.0], sampling) == [0, 3, 4, 6]


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
    plan = decoding.plan_frames(str(path), config.VideoSampling(), 64_000_000)
    assert [(index, seconds) for index, _, seconds in plan["frames"]] == [(0, None), (1, None)]
    decoded = list(
        decoding.decode_frames(str(path), [offset for _, offset, _ in plan["frames"]], max_pixels=64_000_000)
    )
    assert decoded[0][2] is None and decoded[0][1].shape == (24, 32, 3)
    assert decoded[1][2] == "too_large" and "12000x12000" in decoded[1][3]
    # byte-flipped multi-page TIFFs and GIFs: a reason per frame, never an exception
    seeds = hostile_files.seeds(str(tmp_path))
    for fmt in ("tif", "gif", "webp"):
        for k, case in enumerate(hostile_files.fuzz(seeds[fmt], 150, seed=11)):
            name = tmp_path / f"fuzz{k}.{fmt}"
            name.write_bytes(case)
            plan = decoding.plan_frames(str(name), config.VideoSampling(), 64_000_000)
            if plan and plan["frames"]:
                for _, image, reason, detail in decoding.decode_frames(
                    str(name), [p for _, p, _ in plan["frames"]], max_pixels=64_000_000, timeout_s=5
                ):
                    assert (image is None) == (reason in media.ERROR_REASONS), (fmt, k, reason, detail)
            media.decode_image(case, max_pixels=64_000_000, max_side=1280)  # never raises either


def test_many_pages_are_counted_under_the_deadline_capped_and_opened_in_place(tmp_path):
    """The review's 32,000-page TIFF (3.3 MB): Pillow's n_frames takes ~10 s on it and a
    segment's decode walked every page before its own; 250,000 pages passed the stall timeout."""
    path = tmp_path / "pages.tif"
    path.write_bytes(hostile_files._many_pages_tiff(32_000))
    start = time.perf_counter()
    plan = decoding.plan_frames(str(path), config.VideoSampling(), 64_000_000)
    assert time.perf_counter() - start < 3.0
    assert len(plan["frames"]) == 10_000 and plan["frames"][-1][0] == 9_999
    assert plan["error"] == "too_many_frames" and "more than 10000 pages" in plan["detail"]
    start = time.perf_counter()
    last = list(decoding.decode_frames(str(path), [p for _, p, _ in plan["frames"][-3:]], max_pixels=64_000_000))
    assert time.perf_counter() - start < 1.0  # walking 9,997 pages first takes seconds
    assert [(image.shape, reason) for _, image, reason, _ in last] == [((1, 1, 3), None)] * 3
    # past the cap, the deadline: a "timeout" row, never a stuck probe
    unbounded = config.VideoSampling(max_frames_per_file=10**7, timeout_s=0.01)
    assert decoding.plan_frames(str(path), unbounded, 64_000_000)["error"] == "timeout"
    # a cap of 40 with --video-max-frames 5: the user's own cap leaves nothing unsaid
    few = decoding.plan_frames(str(path), config.VideoSampling(max_frames_per_file=40, max_frames=5), 64_000_000)
    assert len(few["frames"]) == 5 and few["error"] is None


def test_animation_frames_are_read_from_headers_and_capped(tmp_path):
    webp = tmp_path / "many.webp"
    webp.write_bytes(hostile_files._many_frames("WEBP", 3_000))  # 10 ms a frame: 30 s
    assert media.webp_frame_durations(io.BytesIO(webp.read_bytes()), media.Deadline(5)) == [10.0] * 3_000
    plan = decoding.plan_frames(str(webp), config.VideoSampling(fps=10), 64_000_000)
    assert len(plan["frames"]) == 300 and plan["frames"][:3] == [(0, 0, 0.0), (10, 10, 0.1), (20, 20, 0.2)]
    capped = decoding.plan_frames(str(webp), config.VideoSampling(fps=10, max_frames_per_file=100), 64_000_000)
    assert len(capped["frames"]) == 100 and capped["error"] == "too_many_frames"
    assert capped["detail"] == "300 frames were sampled; the first 100 are labelled (--max-frames-per-file)"
    gif = tmp_path / "many.gif"
    gif.write_bytes(hostile_files._many_frames("GIF", 3_000))
    assert (
        len(decoding.plan_frames(str(gif), config.VideoSampling(fps=1, max_frames_per_file=20), 64_000_000)["frames"])
        == 20
    )
    # an APNG is labelled as the still image it shows first: its frames are never walked
    apng = hostile_files._many_frames("PNG", 3_000)
    assert Image.open(io.BytesIO(apng)).n_frames == 3_000
    decoded = media.decode_image(apng, max_pixels=64_000_000, max_side=1280)
    assert decoded.error is None and decoded.image.shape == (2, 2, 3)
    # a video: sampled frames past the cap are one row that says so
    clip = tmp_path / "clip.mkv"
    clip.write_bytes(hostile_files._video(str(tmp_path / "enc.mkv"), [k * 0.1 for k in range(60)], size=(16, 16)))
    plan = decoding.plan_frames(str(clip), config.VideoSampling(every_n=1, max_frames_per_file=25), 64_000_000)
    assert [f[0] for f in plan["frames"]] == list(range(25)) and plan["error"] == "too_many_frames"


def test_planning_that_stops_becomes_a_row_per_file(ray_session, tmp_path):
    """No node can run the probes (a custom resource nobody has): planning stalls, and each
    file it did not plan gets a "timeout" row instead of the run failing with a traceback."""
    from fashion_ray import config, pipeline

    pa = pytest.importorskip("pyarrow")
    names = [tmp_path / "a.gif", tmp_path / "b.tif"]
    for name in names:
        name.write_bytes(hostile_files.seeds(str(tmp_path))[name.suffix.lstrip(".")])
    cfg = config.LabelJobConfig(
        inputs=(str(tmp_path),), output=str(tmp_path / "out"), cpu_node_resource="nowhere", stall_timeout_s=3
    )
    plans = pipeline.probe_videos(cfg, pa.table({"id": [1, 2], "uri": [str(n) for n in names]}))
    assert {vid: (plan["error"], plan["frames"]) for vid, plan in plans.items()} == {
        1: ("timeout", []),
        2: ("timeout", []),
    }
    assert "planning made no progress for 3 s" in plans[1]["detail"]


@pytest.mark.slow
def test_the_job_labels_around_hostile_files(ray_session, tmp_path):
    """Every listed file a row, the run exits 0 inside the bound, the good photos labelled. The
    CLI joins the tests' Ray (`--ray-address`, as on a cluster): the files are what is tested."""
    built = hostile_files.build(str(tmp_path / "files"), cases=12)
    bound_s = 420
    ray_address = ray_session.get_runtime_context().gcs_address
    ran = hostile_files.run_job(
        str(tmp_path / "files"),
        str(tmp_path / "labels"),
        bound_s,
        ["--stages", "person", "--ray-address", ray_address, "--file-timeout", "5", "--max-frames-per-file", "40"],
    )
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
    # 32,000 pages: the first 40 labelled, one row for the rest; 3,000 WebP frames in 30 s: 30 sampled
    pages = [(r["frame_index"], r["status"], r["error"]) for r in rows["many_pages.tif"]]
    assert (
        set(pages) == {(None, "error", "too_many_frames")} | {(k, "ok", None) for k in range(40)} and len(pages) == 41
    )
    assert sorted(r["frame_index"] for r in rows["many_frames.webp"]) == list(range(0, 3_000, 100))
    assert [(r["status"], r["frame_index"]) for r in rows["many_frames_apng.png"]] == [("ok", None)]
    assert found["rows"] == sum(len(v) for v in rows.values())
    assert set(found["errors_by_reason"]) <= set(media.ERROR_REASONS) | {"no_frames_in_window", "too_many_frames"}
