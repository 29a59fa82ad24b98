"""A labelling run from start to commit: list, execute the plan, verify, write the manifest.

The manifest is written last and lists every shard of the run; readers trust only what it
lists. Before it is written, the run checks that every listed input came out exactly
once (ids in == ids out); a run that cannot prove that fails and commits nothing.
Shard files left by earlier or crashed runs are removed after the commit.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

from fashion_ray import __version__, storage
from fashion_ray.config import ConfigError, LabelJobConfig
from fashion_ray.formats.schema import SCHEMA_VERSION
from fashion_ray.formats.shards import shard_entry, shard_totals
from fashion_ray.models import load_bundle, validate_bundle, verify_bundle

class RunIntegrityError(RuntimeError):
    """Outputs do not account for every input exactly once; nothing was committed."""


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address, or RAY_ADDRESS under `ray job submit`) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging; workers inherit it
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # "local" always starts a fresh Ray, never a stray `ray start` cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def _warn_if_resources_missing(cfg: LabelJobConfig, progress) -> None:
    """GPU stages on a cluster with no GPU wait for one forever (or until an autoscaler adds one)."""
    import ray

    wants_gpu = [s for s in cfg.stages if cfg.resources[s].num_gpus > 0]
    if wants_gpu and not ray.cluster_resources().get("GPU"):
        print(f"[fashion-ray] warning: stages {wants_gpu} ask for GPUs and this Ray cluster has none yet; "
              "they start when an autoscaler adds GPU nodes (use --device cpu to run on CPUs)", file=progress, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_label_job(cfg: LabelJobConfig, *, ray_address: str | None = None, num_cpus: int | None = None,
                  progress=sys.stderr) -> dict:
    """Run the labelling pipeline and commit its manifest; returns the manifest.

    Bundle and inputs are checked before Ray starts, so a bad flag fails in a second.
    """
    started, t0 = _now(), time.perf_counter()
    bundle = load_bundle(cfg.bundle, cfg.storage)
    validate_bundle(bundle)
    missing = [s for s in cfg.stages if s not in bundle.stages]
    if missing:
        raise ConfigError(f"bundle {bundle.label} has no model for stages {missing} (it has: {', '.join(bundle.stages)})")
    verify_bundle(bundle, cfg.stages, cfg.storage)
    listing = storage.list_inputs(list(cfg.inputs), cfg.storage)
    expected = {e["id"]: e["uri"] for e in listing}
    print(f"[fashion-ray] {len(listing)} inputs, bundle {bundle.label}, stages {'+'.join(cfg.stages)}", file=progress, flush=True)
    init_ray(ray_address, num_cpus)
    _warn_if_resources_missing(cfg, progress)

    from fashion_ray.pipeline import build_plan

    shards, seen = [], collections.Counter()
    if listing:
        done = 0
        for row in build_plan(cfg, listing, bundle).iter_rows():
            ids = json.loads(row["ids"])
            seen.update(ids)
            shards.append(shard_entry(row))
            done += len(ids)
            rate = done / (time.perf_counter() - t0)
            print(f"[fashion-ray] {done}/{len(listing)} images ({100 * done // len(listing)}%), {rate:.1f} img/s",
                  file=progress, flush=True)

    lost = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    twice = sorted(i for i, c in seen.items() if c > 1)
    if lost or extra or twice:
        raise RunIntegrityError(f"ids in != ids out: {len(lost)} lost, {len(extra)} unexpected, {len(twice)} duplicated "
                                f"(e.g. {[expected.get(i, i) for i in (lost + extra + twice)[:3]]}); no manifest written")

    errors = collections.Counter()
    for s in shards:
        errors.update(s["errors"])
    elapsed = time.perf_counter() - t0
    totals = shard_totals(shards)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fashion_ray_version": __version__,
        "run_id": uuid.uuid4().hex,
        "started_at": started,
        "finished_at": _now(),
        "output": cfg.output,
        "config": cfg.to_json(),
        "bundle": bundle.to_json() | {"uri": bundle.uri},
        "counts": {
            "inputs": len(listing), "ok": totals["ok"], "error": len(listing) - totals["ok"],
            "persons": totals["persons"], "garments": totals["garments"], "parts": totals["parts"],
        },
        "errors_by_reason": dict(sorted(errors.items())),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(len(listing) / elapsed, 3) if elapsed else 0.0,
        "shards": sorted(shards, key=lambda s: s["name"]),
    }
    storage.write_bytes_atomic(storage.join(cfg.output, "manifest.json"), json.dumps(manifest, indent=2).encode(), cfg.storage)
    for folder, key in (("parquet", "parquet"), ("coco", "coco")):
        keep = {os.path.basename(s[key]) for s in shards}
        storage.remove_unlisted(storage.join(cfg.output, folder), keep, cfg.storage)
    return manifest


def format_summary(manifest: dict) -> str:
    c = manifest["counts"]
    lines = [
        "fashion-ray labelling run",
        f"  bundle     {manifest['bundle']['name']}@{manifest['bundle']['version']}",
        f"  images     {c['inputs']} in = {c['ok']} ok + {c['error']} error",
        f"  labels     {c['persons']} persons, {c['garments']} garments, {c['parts']} parts",
    ]
    if manifest["errors_by_reason"]:
        lines.append("  errors     " + ", ".join(f"{k}: {v}" for k, v in manifest["errors_by_reason"].items()))
    lines += [
        f"  speed      {manifest['images_per_s']:.2f} images/s ({manifest['elapsed_s']:.1f} s incl. start-up)",
        f"  output     {storage.join(manifest['output'], 'manifest.json')} ({len(manifest['shards'])} shards: parquet/, coco/)",
    ]
    return "\n".join(lines)
