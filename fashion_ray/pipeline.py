"""The Ray Data plan of a labelling run; the only place Ray resources are set.

videos -> probe_videos (CPU tasks: demux, sample) -> work items (driver)
work items -> load_media (CPU tasks: fetch + decode images, decode video segments)
  -> PersonStage -> ClothingStage -> PartsStage -> ActionsStage (actor pools, per-stage resources)
  -> write_shard (CPU tasks: Parquet + COCO shard per batch, a Shard record back)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray

from fashion_ray import media, storage
from fashion_ray.config import LabelJobConfig, VideoSampling
from fashion_ray.formats.shards import Shard, assemble_rows, write_rows
from fashion_ray.models import Bundle
from fashion_ray.placement import add_ran_on, count_placement, ran_on_label, stage_remote_args, task_remote_args
from fashion_ray.stages import STAGE_CLASSES, persons_column
from fashion_ray.taxonomy import ACTIONS_STAGE, PERSON_STAGE
from fashion_ray.video import decoding, motion
from fashion_ray.video.tracking import track_shards

PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), np.uint8)  # error rows carry no pixels
WORK_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.float64()),
        ("source", pa.int64()),
        ("kind", pa.string()),
        ("frames", pa.string()),
        ("error", pa.string()),
        ("error_detail", pa.string()),
    ]
)


def _error_row(item: dict, reason: str, detail: str, **extra) -> dict:
    return {**item, "status": "error", "error": reason, "error_detail": detail, **extra}


def _image_rows(
    items: list[dict], *, max_pixels: int, max_bytes: int, max_side: int, storage_options, jpeg_on_device: bool
) -> list[dict]:
    rows = {}
    fetch = [it for it in items if it["size"] <= max_bytes]
    for it in items:
        if it["size"] > max_bytes:
            rows[it["id"]] = _error_row(it, "too_large", f"{it['size']} bytes exceeds the limit of {max_bytes}")
    payloads = storage.fetch_many([it["uri"] for it in fetch], storage_options) if fetch else []
    for it, data in zip(fetch, payloads):
        if isinstance(data, Exception):
            rows[it["id"]] = _error_row(it, "unreadable", f"{type(data).__name__}: {data}"[:300])
            continue
        size = media.jpeg_for_device(data, max_pixels) if jpeg_on_device else None
        if size:  # the person actor decodes it (stages.PersonStage): the row carries the file
            rows[it["id"]] = {
                **it,
                "width": size[0],
                "height": size[1],
                "jpeg": data,
                "scale": media.working_size(*size, max_side)[2],
            }
            continue
        decoded = media.decode_image(data, max_pixels=max_pixels, max_side=max_side)
        size = {"width": decoded.width, "height": decoded.height}
        rows[it["id"]] = (
            _error_row(it, decoded.error, decoded.detail, **size)
            if decoded.error
            else {**it, **size, "image": decoded.image, "scale": decoded.scale}
        )
    return [rows[it["id"]] for it in items]


def _frame_item(item: dict, index: int, seconds: float | None) -> dict:
    """The row of frame `index` of a segment item, before its pixels."""
    return {
        **item,
        "id": storage.stable_id(item["uri"], index),
        "frame_index": index,
        "timestamp_s": math.nan if seconds is None else seconds,
    }  # TIFF pages have no time


def _frame_rows(item: dict, *, max_pixels: int, max_side: int, timeout_s: float, storage_options) -> list[dict]:
    frames = json.loads(item["frames"])
    rows = []
    decoded = decoding.decode_frames(
        item["uri"], [pts for _, pts, _ in frames], storage_options, max_pixels=max_pixels, timeout_s=timeout_s
    )
    for (index, _, seconds), (_, image, reason, detail) in zip(frames, decoded):
        frame = _frame_item(item, index, seconds)
        if image is None:
            rows.append(_error_row(frame, reason, detail))
        else:
            fitted = media.fit_to_side(image, max_side)
            rows.append(
                {**frame, "image": fitted.image, "scale": fitted.scale, "width": fitted.width, "height": fitted.height}
            )
    timed = [r for r in rows if "image" in r and not math.isnan(r["timestamp_s"])]  # video/animation frames, not pages
    images = [r["image"] for r in timed]
    for row, regions, shift in zip(timed, motion.moving_regions(images), motion.camera_shifts(images)):
        row["regions"] = regions
        if shift is not None:
            row["camera_dx"], row["camera_dy"] = shift
    return rows


ROW_DEFAULTS = {
    "status": "ok",
    "error": "",
    "error_detail": "",
    "width": 0,
    "height": 0,
    "scale": 1.0,
    "frame_index": -1,
    "timestamp_s": math.nan,
    "camera_dx": math.nan,
    "camera_dy": math.nan,
}


def _unexpected(exc: Exception, doing: str = "decoding") -> str:
    return f"unexpected {type(exc).__name__} while {doing}: {exc}"[:300]


def _frame_rows_or_errors(item: dict, **kwargs) -> list[dict]:
    """_frame_rows, or one error row per planned frame if decoding fails in a way nothing
    below caught: a hostile file costs its own rows, never the task (and with it the run)."""
    try:
        return _frame_rows(item, **kwargs)
    except Exception as exc:
        return [
            _error_row(_frame_item(item, index, seconds), "undecodable", _unexpected(exc))
            for index, _, seconds in json.loads(item["frames"])
        ]


def load_media(
    batch: dict[str, np.ndarray],
    *,
    max_pixels: int,
    max_bytes: int,
    max_side: int,
    timeout_s: float = VideoSampling.timeout_s,
    storage_options=None,
    jpeg_on_device: bool = False,
) -> dict[str, np.ndarray]:
    """Fetch and decode a batch of work items into rows; failures become error rows.

    An item is an image (one row), a segment of a video's sampled frames (one row per
    frame, with the segment's moving regions as candidates for the person stage), or a
    video the probe refused (one error row with its reason). With jpeg_on_device, a plain
    JPEG's row carries the file's bytes in a "jpeg" column instead of pixels.
    """
    items = [
        {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in batch.items()}
        for i in range(len(batch["id"]))
    ]
    images = [it for it in items if it["kind"] == "image"]
    try:
        by_image = iter(
            _image_rows(
                images,
                max_pixels=max_pixels,
                max_bytes=max_bytes,
                max_side=max_side,
                storage_options=storage_options,
                jpeg_on_device=jpeg_on_device,
            )
            if images
            else []
        )
    except Exception as exc:  # decode_image never raises; this is the last line if something below it does
        by_image = iter([_error_row(it, "undecodable", _unexpected(exc)) for it in images])
    rows = []
    for it in items:
        if it["kind"] == "image":
            rows.append(next(by_image))
        elif it["kind"] == "frames":
            rows += _frame_rows_or_errors(
                it, max_pixels=max_pixels, max_side=max_side, timeout_s=timeout_s, storage_options=storage_options
            )
        else:
            rows.append(_error_row(it, it["error"], it["error_detail"]))
    rows = [{**ROW_DEFAULTS, **r} for r in rows]
    out = {
        k: np.array([r[k] for r in rows])
        for k in (
            "id",
            "source",
            "size",
            "mtime",
            "width",
            "height",
            "scale",
            "frame_index",
            "timestamp_s",
            "camera_dx",
            "camera_dy",
        )
    }
    out.update(
        {
            k: np.array([str(r[k]) for r in rows], dtype=object)
            for k in ("uri", "etag", "status", "error", "error_detail")
        }
    )
    out["image"] = np.empty(len(rows), dtype=object)
    out["image"][:] = [r.get("image", PLACEHOLDER_IMAGE) for r in rows]
    if jpeg_on_device:
        out["jpeg"] = np.array([r.get("jpeg", b"") for r in rows], dtype=object)
    out["ran_on"] = np.array([ran_on_label("decode")] * len(rows), dtype=object)
    out["regions"] = np.array([json.dumps(r.get("regions", [])) for r in rows], dtype=object)
    out["persons"] = persons_column([[] for _ in rows])
    return out


def _probe(
    batch: dict[str, np.ndarray], *, sampling: VideoSampling, max_pixels: int, storage_options=None
) -> dict[str, np.ndarray]:
    plans = []
    for uri in batch["uri"]:
        try:
            plan = decoding.plan_frames(str(uri), sampling, max_pixels, storage_options)
        except Exception as exc:  # the probes catch what files do; this keeps one bug from failing the run
            plan = {"error": "undecodable", "detail": _unexpected(exc, "probing"), "frames": []}
        plans.append(json.dumps(plan))
    return {"id": batch["id"], "plan": np.array(plans, dtype=object)}


def probe_videos(cfg: LabelJobConfig, videos: pa.Table) -> dict[int, dict]:
    """Plan every video and multi-frame image in parallel tasks (demux / header only);
    returns {id: plan} (decoding.plan_frames); a still image among them gets no plan."""
    if videos.num_rows == 0:
        return {}
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = cfg.stall_timeout_s
    ds = ray.data.from_arrow([videos.slice(i, 1) for i in range(videos.num_rows)])
    ds = ds.map_batches(
        _probe,
        batch_size=None,
        **task_remote_args(cfg, cfg.decode_num_cpus),
        fn_kwargs={"sampling": cfg.video, "max_pixels": cfg.max_pixels, "storage_options": cfg.storage},
    )
    plans = {}
    try:
        for row in ds.iter_rows():
            plans[int(row["id"])] = json.loads(row["plan"])
    except Exception as exc:  # planning stopped (stalled, a worker lost): a row each for the files it left
        from ray.data.exceptions import ExecutionTimeoutError

        stalled = isinstance(exc, ExecutionTimeoutError)
        detail = (
            f"planning made no progress for {cfg.stall_timeout_s:g} s before this file's probe came back"
            if stalled
            else _unexpected(exc, "planning")
        )
        for vid in videos["id"].to_pylist():
            plans.setdefault(
                vid, {"error": "timeout" if stalled else "undecodable", "detail": detail[:300], "frames": []}
            )
    return {vid: plan for vid, plan in plans.items() if plan is not None}


def work_items(cfg: LabelJobConfig, todo: pa.Table, plans: dict[int, dict]) -> tuple[list[pa.Table], dict[int, int]]:
    """Blocks of work for the plan and the ids of the rows they will produce -> their input's id.

    Images: blocks of read_batch_size. A video: a block per segment of frames_per_task
    sampled frames (one long video spreads over many tasks), plus an error item when the
    probe refused it or the stream broke.
    """
    blocks, rows_of = [], {}
    images, items = [], []
    for entry in todo.to_pylist():
        base = {
            **entry,
            "mtime": entry["mtime"].timestamp() if entry["mtime"] else math.nan,
            "source": entry["id"],
            "kind": "image",
            "frames": "",
            "error": "",
            "error_detail": "",
        }
        plan = plans.get(entry["id"])
        if plan is None:
            images.append(base)
            rows_of[entry["id"]] = entry["id"]
            continue
        frames = plan["frames"]
        for start in range(0, len(frames), cfg.video.frames_per_task):
            chunk = frames[start : start + cfg.video.frames_per_task]
            items.append(
                base
                | {"id": storage.stable_id(entry["uri"], chunk[0][0]), "kind": "frames", "frames": json.dumps(chunk)}
            )
            rows_of.update({storage.stable_id(entry["uri"], index): entry["id"] for index, _, _ in chunk})
        if plan["error"]:
            items.append(base | {"kind": "error", "error": plan["error"], "error_detail": plan["detail"]})
            rows_of[entry["id"]] = entry["id"]
    for start in range(0, len(images), cfg.read_batch_size):
        blocks.append(pa.Table.from_pylist(images[start : start + cfg.read_batch_size], schema=WORK_SCHEMA))
    blocks += [pa.Table.from_pylist([item], schema=WORK_SCHEMA) for item in items]
    return blocks, rows_of


def label_shards(cfg: LabelJobConfig, blocks: list[pa.Table], bundle: Bundle, run_id: str) -> Iterator[Shard]:
    """Run the plan over these blocks of work; yields each shard as soon as it is written."""
    for row in build_plan(cfg, blocks, bundle, run_id).iter_rows():
        yield row["shard"]


def build_plan(cfg: LabelJobConfig, blocks: list[pa.Table], bundle: Bundle, run_id: str) -> ray.data.Dataset:
    """Assemble the lazy Ray Data plan; executing it writes shards and yields one row per shard."""
    # A block per read batch or video segment, and a task per block (batch_size=None), so
    # fetching and decoding overlap with the model stages from the start.
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = cfg.stall_timeout_s
    ds = ray.data.from_arrow(blocks)
    # decoding stops getting ahead of the models at this bound, so peak memory stays flat with
    # the corpus (the plan's own copy of Ray Data's context: other datasets of the process keep theirs)
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(object_store_memory=cfg.in_flight_budget_mb() * 2**20)
    ds = ds.map_batches(
        load_media,
        batch_size=None,
        **task_remote_args(cfg, cfg.decode_num_cpus),
        fn_kwargs={
            "max_pixels": cfg.max_pixels,
            "max_bytes": cfg.max_bytes,
            "max_side": cfg.work_max_side,
            "timeout_s": cfg.video.timeout_s,
            "storage_options": cfg.storage,
            "jpeg_on_device": cfg.jpeg_decode == "person",
        },
    )
    for stage in cfg.stages:
        res = cfg.resources[stage]
        ds = ds.map_batches(
            STAGE_CLASSES[stage],
            fn_constructor_kwargs={
                "bundle_uri": bundle.ref,
                "device": res.runs_on,
                "batch_size": res.batch_size,
                "storage_options": cfg.storage,
                "score_threshold": cfg.score_thresholds.get(stage),
                # pixels stop at the last stage that reads them; the writer needs labels only
                "emit_image": any(STAGE_CLASSES[s].needs_image for s in cfg.stages[cfg.stages.index(stage) + 1 :]),
                **(
                    {"jpeg_max_side": cfg.work_max_side}
                    if stage == PERSON_STAGE and cfg.jpeg_decode == "person"
                    else {}
                ),
            },
            batch_size=res.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            **stage_remote_args(cfg, stage),
        )
    return ds.map_batches(
        write_shard,
        batch_size=cfg.rows_per_shard,
        **task_remote_args(cfg, cfg.write_num_cpus),
        fn_kwargs={
            "output": cfg.output,
            "bundle_name": bundle.name,
            "bundle_version": bundle.version,
            "stages": list(cfg.stages),
            "run_id": run_id,
            "storage_options": cfg.storage,
        },
    )


def track_videos(cfg: LabelJobConfig, shards: list[dict], run_id: str, bundle: Bundle) -> dict[str, Shard]:
    """Person tracks over every video's frames, and their actions, in one Ray task (tracking.track_shards)."""
    task = ray.remote(track_shards).options(**task_remote_args(cfg, cfg.write_num_cpus))
    return ray.get(
        task.remote(
            cfg.output,
            shards,
            run_id,
            cfg.storage,
            actions_bundle=bundle.ref if ACTIONS_STAGE in cfg.stages else None,
            action_threshold=cfg.score_thresholds.get(ACTIONS_STAGE),
        )
    )


def write_shard(
    batch: dict[str, np.ndarray],
    *,
    output: str,
    bundle_name: str,
    bundle_version: str,
    stages: list[str],
    run_id: str = "",
    storage_options=None,
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: write one shard; its `Shard` record is the only row it returns."""
    rows = assemble_rows(batch, bundle_name=bundle_name, bundle_version=bundle_version, stages=stages)
    shard = write_rows(
        rows,
        output=output,
        salt=run_id,
        storage_options=storage_options,
        info={"description": "fashion-ray labels", "bundle": f"{bundle_name}@{bundle_version}"},
    )
    ran_on = add_ran_on(batch["ran_on"], "write") if "ran_on" in batch else []
    return as_batch(dataclasses.replace(shard, placement=count_placement(ran_on)))


def as_batch(shard: Shard) -> dict[str, np.ndarray]:
    """A one-row Ray batch holding the Shard as a Python object (Ray pickles it; iter_rows gives it back)."""
    record = np.empty(1, dtype=object)
    record[0] = shard
    return {"shard": record}
