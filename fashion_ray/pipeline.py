"""The Ray Data plan of a labelling run; the only place Ray resources are set.

    listing (driver, once) -> load_images (CPU tasks: fetch bytes + decode)
      -> PersonStage -> ClothingStage -> PartsStage (actor pools, per-stage resources)
      -> write_shard (CPU tasks: Parquet + COCO shard per batch, summary row back)
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from fashion_ray import media, storage
from fashion_ray.config import LabelJobConfig
from fashion_ray.formats.shards import write_shard
from fashion_ray.models import Device, Bundle
from fashion_ray.stages import STAGE_CLASSES

PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), np.uint8)  # error rows carry no pixels


def load_images(batch: dict[str, np.ndarray], *, max_pixels: int, max_bytes: int, max_side: int,
                storage_options=None) -> dict[str, np.ndarray]:
    """Fetch a batch of objects in one call and decode them; failures become error rows."""
    n = len(batch["uri"])
    status, error, detail = ["ok"] * n, [""] * n, [""] * n
    width, height, scale, images = [0] * n, [0] * n, [1.0] * n, [PLACEHOLDER_IMAGE] * n
    fetch = [i for i in range(n) if int(batch["size"][i]) <= max_bytes]
    for i in set(range(n)) - set(fetch):
        status[i], error[i], detail[i] = "error", "too_large", f"{int(batch['size'][i])} bytes exceeds the limit of {max_bytes}"
    payloads = storage.fetch_many([str(batch["uri"][i]) for i in fetch], storage_options) if fetch else []
    for i, data in zip(fetch, payloads):
        if isinstance(data, Exception):
            status[i], error[i], detail[i] = "error", "unreadable", f"{type(data).__name__}: {data}"[:300]
            continue
        decoded = media.decode_image(data, max_pixels=max_pixels, max_side=max_side)
        width[i], height[i] = decoded.width, decoded.height
        if decoded.error:
            status[i], error[i], detail[i] = "error", decoded.error, decoded.detail
        else:
            images[i], scale[i] = decoded.image, decoded.scale
    out = dict(batch)
    image_column = np.empty(n, dtype=object)
    image_column[:] = images
    out.update(status=np.array(status, dtype=object), error=np.array(error, dtype=object),
               error_detail=np.array(detail, dtype=object), width=np.array(width, np.int32),
               height=np.array(height, np.int32), scale=np.array(scale, np.float64), image=image_column,
               persons=np.array(["[]"] * n, dtype=object))
    return out


def build_plan(cfg: LabelJobConfig, listing: pa.Table, bundle: Bundle, run_id: str) -> ray.data.Dataset:
    """Assemble the lazy Ray Data plan; executing it writes shards and yields one row per shard."""
    seconds = pc.divide(pc.cast(pc.cast(listing["mtime"], pa.int64()), pa.float64()), 1e6)
    listing = listing.set_column(listing.schema.get_field_index("mtime"), "mtime", pc.fill_null(seconds, math.nan))
    # One block per read batch, so fetching/decoding overlaps with the model stages from the start.
    ds = ray.data.from_arrow([listing.slice(i, cfg.read_batch_size) for i in range(0, listing.num_rows, cfg.read_batch_size)])
    ds = ds.map_batches(load_images, batch_size=cfg.read_batch_size, num_cpus=cfg.decode_num_cpus,
                        fn_kwargs={"max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes,
                                   "max_side": cfg.work_max_side, "storage_options": cfg.storage})
    for stage in cfg.stages:
        res = cfg.resources[stage]
        device = Device(name=res.device, amp=res.amp, torch_threads=res.torch_threads)
        ds = ds.map_batches(
            STAGE_CLASSES[stage],
            fn_constructor_kwargs={"bundle_uri": bundle.ref, "device": device, "batch_size": res.batch_size,
                                   "storage_options": cfg.storage,
                                   # pixels stop at the last model stage; the writer needs labels only
                                   "emit_image": stage != cfg.stages[-1]},
            batch_size=res.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
        )
    return ds.map_batches(write_shard, batch_size=cfg.rows_per_shard, num_cpus=cfg.write_num_cpus,
                          fn_kwargs={"output": cfg.output, "bundle_name": bundle.name, "bundle_version": bundle.version,
                                     "stages": list(cfg.stages), "run_id": run_id,
                                     "storage_options": cfg.storage})
