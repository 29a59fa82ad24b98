"""Turn a batch of labelled rows into one Parquet shard and one COCO shard.

Runs as a Ray Data task at the end of the pipeline, so shards are written by the workers
in parallel and only a small summary row per shard travels back to the driver. A shard's
name is a hash of the ids it holds: a retried task rewrites the same file rather than
adding a second copy.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_ray import storage
from fashion_ray.formats import ava, coco
from fashion_ray.formats import masks as rle
from fashion_ray.formats.schema import LABEL_SCHEMA, SCHEMA_VERSION


def _scale_box(box, s: float, width: int, height: int):
    if box is None:
        return None
    x0, y0, x1, y1 = (v / s for v in box)
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


def _to_original(person: dict, scale: float, height: int, width: int) -> dict:
    """Map a person (and its garments/parts) from working to original image pixels."""
    def mask(m):
        return rle.resize_rle(m, height, width) if m else None

    kp = person.get("keypoints")
    if kp and scale != 1.0:
        kp = [v / scale if i % 3 != 2 else v for i, v in enumerate(kp)]
    return {
        "person_id": person["person_id"], "track_id": person.get("track_id"), "score": person["score"],
        "box": _scale_box(person["box"], scale, width, height), "mask": mask(person.get("mask")), "keypoints": kp,
        "garments": [{**g, "box": _scale_box(g["box"], scale, width, height), "mask": mask(g.get("mask"))}
                     for g in person.get("garments", [])],
        "parts": [{**p, "box": _scale_box(p["box"], scale, width, height), "mask": mask(p["mask"]),
                   "area": rle.area(mask(p["mask"])) if scale != 1.0 else p["area"]}
                  for p in person.get("parts", [])],
    }


def assemble_rows(batch: dict[str, np.ndarray], *, bundle_name: str, bundle_version: str, stages: list[str]) -> list[dict]:
    rows = []
    for i in range(len(batch["id"])):
        ok = batch["status"][i] == "ok"
        width, height = int(batch["width"][i]), int(batch["height"][i])
        mtime = float(batch["mtime"][i])
        frame_index, seconds = int(batch["frame_index"][i]), float(batch["timestamp_s"][i])
        persons = json.loads(batch["persons"][i]) if ok else []
        rows.append({
            "id": int(batch["id"][i]), "uri": str(batch["uri"][i]), "size": int(batch["size"][i]),
            "etag": str(batch["etag"][i]),
            "mtime": None if math.isnan(mtime) else datetime.fromtimestamp(mtime, tz=timezone.utc),
            "frame_index": None if frame_index < 0 else frame_index, "timestamp_s": None if math.isnan(seconds) else seconds,
            "width": width, "height": height,
            "status": str(batch["status"][i]), "error": str(batch["error"][i]) or None,
            "error_detail": str(batch["error_detail"][i]) or None,
            "bundle_name": bundle_name, "bundle_version": bundle_version, "stages": list(stages),
            "persons": [_to_original(p, float(batch["scale"][i]), height, width) for p in persons],
        })
    return rows


def shard_name(ids, salt: str = "") -> str:
    """Named by its ids (a retried write replaces itself) and the run (no run overwrites another's file)."""
    key = salt + ":" + ",".join(str(i) for i in sorted(int(v) for v in ids))
    return "part-" + hashlib.sha1(key.encode()).hexdigest()[:20]


def write_rows(rows: list[dict], *, output: str, info: dict, salt: str = "", storage_options=None) -> dict[str, np.ndarray]:
    """Write rows as one Parquet + one COCO shard named after their ids; return a summary row."""
    name = shard_name((r["id"] for r in rows), salt)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), buf, compression="zstd")
    storage.write_bytes_atomic(storage.join(output, "parquet", f"{name}.parquet"), buf.getvalue(), storage_options)
    doc = coco.coco_document(rows, info={**info, "schema_version": SCHEMA_VERSION})
    storage.write_bytes_atomic(storage.join(output, "coco", f"{name}.json"), json.dumps(doc).encode(), storage_options)
    ava_rows = ava.ava_rows(rows)
    if ava_rows:
        storage.write_bytes_atomic(storage.join(output, "ava", f"{name}.csv"), ava.to_csv(ava_rows), storage_options)
    errors = collections.Counter(r["error"] for r in rows if r["status"] == "error")
    persons = [p for r in rows for p in r["persons"]]
    return {
        "shard": np.array([name]),
        "ids": np.array([json.dumps([r["id"] for r in rows])]),
        "rows": np.array([len(rows)]),
        "ok": np.array([sum(r["status"] == "ok" for r in rows)]),
        "frames": np.array([sum(r["frame_index"] is not None for r in rows)]),
        "ava": np.array([bool(ava_rows)]),
        "persons": np.array([len(persons)]),
        "garments": np.array([sum(len(p["garments"]) for p in persons)]),
        "parts": np.array([sum(len(p["parts"]) for p in persons)]),
        "errors": np.array([json.dumps(dict(errors))]),
    }


def shard_entry(row: dict) -> dict:
    """The manifest's record of a shard, from the summary row write_rows returned."""
    name = str(row["shard"])
    return {"name": name, "parquet": f"parquet/{name}.parquet", "coco": f"coco/{name}.json",
            **({"ava": f"ava/{name}.csv"} if row.get("ava") else {}),
            "rows": int(row["rows"]), "ok": int(row["ok"]), "frames": int(row["frames"]), "persons": int(row["persons"]),
            "garments": int(row["garments"]), "parts": int(row["parts"]), "errors": json.loads(row["errors"])}


def shard_totals(shards: list[dict]) -> dict:
    """Label counts over a manifest's shard records."""
    return {key: sum(s.get(key, 0) for s in shards) for key in ("ok", "frames", "persons", "garments", "parts")}


def read_manifest(uri: str, options=None) -> dict:
    fs, path = storage.filesystem(storage.join(uri, "manifest.json"), options)
    return json.loads(fs.cat_file(path))


def iter_shard_rows(uri: str, manifest: dict, options=None):
    """Yield the rows of each Parquet shard a manifest lists, one shard at a time."""
    for shard in manifest["shards"]:
        fs, path = storage.filesystem(storage.join(uri, shard["parquet"]), options)
        yield pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()


def write_shard(batch: dict[str, np.ndarray], *, output: str, bundle_name: str, bundle_version: str,
                stages: list[str], run_id: str = "", storage_options=None) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: write one Parquet + one COCO shard, return its summary."""
    rows = assemble_rows(batch, bundle_name=bundle_name, bundle_version=bundle_version, stages=stages)
    return write_rows(rows, output=output, info={"description": "fashion-ray labels", "bundle": f"{bundle_name}@{bundle_version}"},
                      salt=run_id, storage_options=storage_options)
