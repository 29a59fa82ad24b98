"""Shards: the one place label rows become files (Parquet + COCO, and AVA CSV for video frames).

`write_rows` is the only writer. The pipeline's last Ray Data task calls it per batch
(pipeline.write_shard), so shards are written by the workers in parallel and only a `Shard`
record travels back to the driver; tracking and the ledger rewrite shards through it too.
A shard's name is a hash of the ids it holds and a salt (the run): a retried task rewrites
the same file rather than adding a second copy, and no run overwrites another's file.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_ray import masks as rle
from fashion_ray import storage
from fashion_ray.boxes import scale_box
from fashion_ray.formats import ava, coco
from fashion_ray.formats.schema import LABEL_SCHEMA, SCHEMA_VERSION, is_confident, with_attribute_maps


def _to_original(person: dict, scale: float, height: int, width: int) -> dict:
    """Map a person (and its garments/parts) from working to original image pixels."""

    def mask(m):
        return rle.resize_rle(m, height, width) if m else None

    kp = person.get("keypoints")
    if kp and scale != 1.0:
        kp = [v / scale if i % 3 != 2 else v for i, v in enumerate(kp)]
    return {
        "person_id": person["person_id"],
        "track_id": person.get("track_id"),
        "score": person["score"],
        "confident": person.get("confident", True),
        "box": scale_box(person["box"], scale, width, height),
        "mask": mask(person.get("mask")),
        "keypoints": kp,
        "appearance": person.get("appearance"),
        "garments": [
            {**g, "box": scale_box(g["box"], scale, width, height), "mask": mask(g.get("mask"))}
            for g in person.get("garments", [])
        ],
        "parts": [
            {
                **p,
                "box": scale_box(p["box"], scale, width, height),
                "mask": mask(p["mask"]),
                "area": rle.area(mask(p["mask"])) if scale != 1.0 else p["area"],
            }
            for p in person.get("parts", [])
        ],
        "actions": person.get("actions") or [],
    }


def assemble_rows(
    batch: dict[str, np.ndarray], *, bundle_name: str, bundle_version: str, stages: list[str]
) -> list[dict]:
    rows = []
    for i in range(len(batch["id"])):
        ok = batch["status"][i] == "ok"
        width, height = int(batch["width"][i]), int(batch["height"][i])
        mtime = float(batch["mtime"][i])
        frame_index, seconds = int(batch["frame_index"][i]), float(batch["timestamp_s"][i])
        persons = batch["persons"][i].items if ok else []
        objects = batch["persons"][i].objects if ok else []
        scale = float(batch["scale"][i])
        shift = [float(batch[k][i]) / scale for k in ("camera_dx", "camera_dy")] if "camera_dx" in batch else []
        rows.append(
            {
                "id": int(batch["id"][i]),
                "uri": str(batch["uri"][i]),
                "size": int(batch["size"][i]),
                "etag": str(batch["etag"][i]),
                "mtime": None if math.isnan(mtime) else datetime.fromtimestamp(mtime, tz=timezone.utc),
                "frame_index": None if frame_index < 0 else frame_index,
                "timestamp_s": None if math.isnan(seconds) else seconds,
                "width": width,
                "height": height,
                "camera_shift": shift if shift and ok and not math.isnan(shift[0]) else None,
                "status": str(batch["status"][i]),
                "error": str(batch["error"][i]) or None,
                "error_detail": str(batch["error_detail"][i]) or None,
                "bundle_name": bundle_name,
                "bundle_version": bundle_version,
                "stages": list(stages),
                "persons": [_to_original(p, scale, height, width) for p in persons],
                "objects": [{**o, "box": scale_box(o["box"], scale, width, height)} for o in objects],
            }
        )
    return rows


def shard_name(ids, salt: str = "") -> str:
    key = salt + ":" + ",".join(str(i) for i in sorted(int(v) for v in ids))
    return "part-" + hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Shard:
    """A written shard: the row ids it holds (the driver checks them) and what the manifest records."""

    name: str
    ids: tuple[int, ...]
    ok: int
    frames: int
    persons: int  # confident ones: the labels
    garments: int  # accessories a person holds included
    parts: int
    errors: dict[str, int]  # error rows per reason
    ava: bool  # an AVA CSV was written (the shard holds tracked video frames)
    tracked: int = 0  # persons with a track id
    candidates: int = 0  # persons under the person threshold (a box and a score)
    objects: int = 0  # accessories no person holds (confident ones)
    object_candidates: int = 0  # accessories under the accessory threshold (objects of nobody's)
    actions: dict[str, int] = field(default_factory=dict)  # persons labelled with each action (AVA name)
    # per video: the highest track id among this shard's frames. Ids count from 1 per video,
    # so a video's track count is the largest of these over all shards holding its frames.
    max_track_id: dict[str, int] = field(default_factory=dict)
    placement: dict = field(
        default_factory=dict
    )  # {step: {node id: rows}}: where the pipeline ran (not in the manifest)

    def entry(self) -> dict:
        """The manifest's record of this shard (paths relative to the output)."""
        return {
            "name": self.name,
            "parquet": f"parquet/{self.name}.parquet",
            "coco": f"coco/{self.name}.json",
            **({"ava": f"ava/{self.name}.csv"} if self.ava else {}),
            "rows": len(self.ids),
            "ok": self.ok,
            "frames": self.frames,
            "persons": self.persons,
            "candidates": self.candidates,
            "objects": self.objects,
            "object_candidates": self.object_candidates,
            "garments": self.garments,
            "parts": self.parts,
            "errors": dict(self.errors),
            **({"actions": dict(self.actions)} if self.actions else {}),
            **({"tracked": self.tracked, "max_track_id": dict(self.max_track_id)} if self.max_track_id else {}),
        }


def write_rows(rows: list[dict], *, output: str, info: dict, salt: str = "", storage_options=None) -> Shard:
    """Write rows as one Parquet + one COCO shard (+ AVA CSV) named after their ids."""
    name = shard_name((r["id"] for r in rows), salt)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(with_attribute_maps(rows), schema=LABEL_SCHEMA), buf, compression="zstd")
    storage.write_bytes_atomic(storage.join(output, "parquet", f"{name}.parquet"), buf.getvalue(), storage_options)
    doc = coco.coco_document(rows, info={**info, "schema_version": SCHEMA_VERSION})
    storage.write_bytes_atomic(storage.join(output, "coco", f"{name}.json"), json.dumps(doc).encode(), storage_options)
    ava_rows = ava.ava_rows(rows)
    if ava_rows:
        storage.write_bytes_atomic(storage.join(output, "ava", f"{name}.csv"), ava.to_csv(ava_rows), storage_options)
    everyone = [p for r in rows for p in r["persons"]]
    objects = [o for r in rows for o in r.get("objects") or []]
    persons = [p for p in everyone if is_confident(p)]
    max_track_id: dict[str, int] = {}
    for row in rows:
        for p in row["persons"]:
            if p.get("track_id") is not None:
                max_track_id[row["uri"]] = max(max_track_id.get(row["uri"], 0), p["track_id"])
    return Shard(
        name=name,
        ids=tuple(r["id"] for r in rows),
        ok=sum(r["status"] == "ok" for r in rows),
        frames=sum(r["frame_index"] is not None for r in rows),
        persons=len(persons),
        garments=sum(len(p["garments"]) for p in persons),
        parts=sum(len(p["parts"]) for p in persons),
        errors=dict(collections.Counter(r["error"] for r in rows if r["status"] == "error")),
        ava=bool(ava_rows),
        tracked=sum(p.get("track_id") is not None for p in persons),
        candidates=len(everyone) - len(persons),
        objects=sum(is_confident(o) for o in objects),
        object_candidates=sum(not is_confident(o) for o in objects),
        actions=dict(collections.Counter(a["action"] for p in persons for a in p.get("actions") or [])),
        max_track_id=max_track_id,
    )


def shard_totals(entries: list[dict]) -> dict:
    """Label counts over a manifest's shard records, with video tracks and their mean length
    (tracked persons per track, in sampled frames)."""
    totals = {
        key: sum(s.get(key, 0) for s in entries)
        for key in (
            "ok",
            "frames",
            "persons",
            "candidates",
            "objects",
            "object_candidates",
            "garments",
            "parts",
            "tracked",
        )
    }
    tracks_per_video: dict[str, int] = {}
    for s in entries:
        for uri, top in s.get("max_track_id", {}).items():
            tracks_per_video[uri] = max(tracks_per_video.get(uri, 0), top)
    totals["tracks"] = sum(tracks_per_video.values())
    actions: collections.Counter = collections.Counter()
    for s in entries:
        actions.update(s.get("actions", {}))
    totals["actions"] = dict(actions.most_common())
    totals["mean_track_length"] = round(totals["tracked"] / totals["tracks"], 2) if totals["tracks"] else None
    return totals


def read_manifest(uri: str, options=None) -> dict:
    fs, path = storage.filesystem(storage.join(uri, "manifest.json"), options)
    return json.loads(fs.cat_file(path))


def read_shard_rows(output: str, entry: dict, options=None) -> list[dict]:
    """The label rows of one shard a manifest lists."""
    fs, path = storage.filesystem(storage.join(output, entry["parquet"]), options)
    return with_attribute_maps(pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist())  # any schema version


def iter_shard_rows(uri: str, manifest: dict, options=None):
    """Yield the rows of each Parquet shard a manifest lists, one shard at a time."""
    for entry in manifest["shards"]:
        yield read_shard_rows(uri, entry, options)
