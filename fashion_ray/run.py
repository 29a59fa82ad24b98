"""A labelling run from start to commit: lease, list, classify, label, verify, commit.

A full run (the default) replaces the output's contents with one commit at the end; if it
cannot account for every input exactly once (ids in == ids out) it commits nothing. An
incremental run labels only inputs the output's ledger has not seen, or saw change, and
commits every `commit_every_s`: killed at any point, the next run starts from the last
commit and labels the rest (ledger.py says what a commit writes).

Every shard the pipeline returns is checked against the ids the run was given: each
input is accepted once (a copy Ray re-ran after a fault is dropped), and inputs a fault
lost go round again, up to `max_attempts` passes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from fashion_ray import ledger, storage, video
from fashion_ray.config import ConfigError, LabelJobConfig
from fashion_ray.formats.shards import shard_entry
from fashion_ray.lease import acquire_lease
from fashion_ray.models import load_bundle, validate_bundle, verify_bundle

MAX_LEDGER_FILES = 8  # past this many, a run's last commit folds the ledger into one file


class RunIntegrityError(RuntimeError):
    """Outputs do not account for every input exactly once; nothing was committed."""


class RunIncompleteError(RunIntegrityError):
    """Some inputs could not be labelled in this run; what was labelled is committed."""


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


def _checked_bundle(cfg: LabelJobConfig):
    bundle = load_bundle(cfg.bundle, cfg.storage)
    validate_bundle(bundle)
    missing = [s for s in cfg.stages if s not in bundle.stages]
    if missing:
        raise ConfigError(f"bundle {bundle.label} has no model for stages {missing} (it has: {', '.join(bundle.stages)})")
    verify_bundle(bundle, cfg.stages, cfg.storage)
    return bundle


def run_label_job(cfg: LabelJobConfig, *, ray_address: str | None = None, num_cpus: int | None = None,
                  progress=sys.stderr) -> dict:
    """Label what the run has to label and commit it; returns the committed manifest.

    Bundle and inputs are checked before Ray starts, so a bad flag fails in a second. The
    whole run holds the output's lease: a second run on the same output stops at once.
    """
    started, t0 = _now(), time.perf_counter()
    bundle = _checked_bundle(cfg)
    listing = storage.list_inputs(list(cfg.inputs), cfg.storage)  # bad inputs fail before the output is touched
    run_id = uuid.uuid4().hex
    lease = acquire_lease(cfg.output, cfg.lease_ttl_s, cfg.storage, run_id)
    try:
        return _run_holding_lease(cfg, bundle, listing, run_id, lease, ray_address, num_cpus, progress, started, t0)
    finally:
        lease.release()


def _run_holding_lease(cfg, bundle, listing, run_id, lease, ray_address, num_cpus, progress, started, t0) -> dict:
    def say(message: str) -> None:
        print(f"[fashion-ray] {message}", file=progress, flush=True)

    committed = ledger.load_state(cfg.output, cfg.storage)
    removed = ledger.remove_garbage(committed)
    if removed:
        say(f"removed {removed} uncommitted files left by an interrupted run")
    # a full run replaces the output's contents; an incremental one builds on what is committed
    state = committed if cfg.incremental else ledger.empty_state(cfg.output, cfg.storage)
    todo, counts = ledger.classify(listing, state.ledger, bundle.label, cfg.relabel if cfg.incremental else "all")
    say(f"{counts['listed']} inputs listed: {counts['new']} new, {counts['changed']} changed, "
        f"{counts['outdated']} outdated, {counts['unchanged']} unchanged; labelling {counts['to_label']} "
        f"with bundle {bundle.label}, stages {'+'.join(cfg.stages)}")

    accepted: dict[str, list[int]] = {}  # shard name -> row ids, accepted this run
    uncommitted: list[dict] = []  # shard entries accepted since the last commit
    source_of: dict[int, int] = {}  # row id -> input id, for every row this run must produce

    def run_info(complete: bool) -> dict:
        elapsed = time.perf_counter() - t0
        done = sum(len(ids) for ids in accepted.values())
        return {"config": cfg.to_json(), "bundle": bundle.to_json() | {"uri": bundle.uri},
                "last_run": {"run_id": run_id, "mode": "incremental" if cfg.incremental else "full",
                             "relabel": cfg.relabel if cfg.incremental else "all", "started_at": started,
                             "finished_at": _now() if complete else None, "complete": complete, **counts,
                             "labelled": done, "elapsed_s": round(elapsed, 3),
                             "images_per_s": round(done / elapsed, 3) if elapsed else 0.0}}

    def commit(entries: list[dict], complete: bool) -> None:
        nonlocal state
        rows = ledger.ledger_rows(todo, {e["name"]: accepted[e["name"]] for e in entries}, bundle.label, run_id, source_of)
        state = ledger.commit(state, entries, rows, run_id=run_id, run_info=run_info(complete), before_write=lease.renew)

    if todo.num_rows == 0 and committed.manifest is not None and cfg.incremental:
        say("nothing new to label; the output is up to date")
        return committed.manifest | run_info(complete=True) | {"noop": True}

    if todo.num_rows:
        init_ray(ray_address, num_cpus)
        _warn_if_resources_missing(cfg, progress)
    from fashion_ray.pipeline import build_plan, probe_videos, track_videos, work_items

    todo_uri = dict(zip(todo["id"].to_pylist(), todo["uri"].to_pylist()))
    video_ids = [i for i, uri in todo_uri.items() if video.is_video(uri)]
    plans = probe_videos(cfg, todo.filter(pc.is_in(todo["id"], pa.array(video_ids, pa.int64()))))
    if plans:
        say(f"{len(plans)} videos: {sum(len(p['frames']) for p in plans.values())} frames sampled")
    blocks, source_of = work_items(cfg, todo, plans)
    expected = set(source_of)
    remaining = set(expected)
    last_commit = time.perf_counter()
    for attempt in range(1, cfg.max_attempts + 1):
        if not remaining:
            break
        if attempt > 1:
            say(f"pass {attempt}: {len(remaining)} rows a fault lost are labelled again")
            # a later pass takes every input with a row still missing (a video: only its missing frames)
            work = todo.filter(pc.is_in(todo["id"], pa.array(sorted({source_of[i] for i in remaining}), pa.int64())))
            blocks, _ = work_items(cfg, work, _still_missing(plans, remaining, todo_uri))
        for row in build_plan(cfg, blocks, bundle, run_id).iter_rows():
            ids = json.loads(row["ids"])
            if not expected.issuperset(ids):
                raise RunIntegrityError(f"a shard holds rows this run was not given (e.g. id {sorted(set(ids) - expected)[0]}); "
                                        "nothing more is committed")
            if not remaining.issuperset(ids):
                # Ray re-ran a write after a fault and some of these rows are already accepted:
                # this copy is dropped (its file is removed at the end); its other rows go round again
                say(f"shard {row['shard']} repeats rows already written; dropped")
                continue
            remaining.difference_update(ids)
            entry = shard_entry(row)
            accepted[entry["name"]] = ids
            uncommitted.append(entry)
            done = len(expected) - len(remaining)
            say(f"{done}/{len(expected)} rows ({100 * done // len(expected)}%), {done / (time.perf_counter() - t0):.1f} rows/s")
            if cfg.incremental and time.perf_counter() - last_commit >= cfg.commit_every_s:
                # shards holding video frames wait for the end: tracks need every frame of a video
                ready = [e for e in uncommitted if not e["frames"]]
                uncommitted[:] = [e for e in uncommitted if e["frames"]]
                commit(ready, complete=False)
                last_commit = time.perf_counter()

    if remaining and not cfg.incremental:
        lost = sorted(remaining)
        uris = sorted({todo_uri[source_of[i]] for i in lost})
        raise RunIntegrityError(f"ids in != ids out: {len(lost)} rows missing after {cfg.max_attempts} passes "
                                f"(e.g. {uris[:3]}); no manifest written")
    if remaining:
        # a video missing frames is not committed at all (its source in the ledger would mark it
        # done): the next run labels it whole; shards sharing rows with it wait for that run too
        partial = {source_of[i] for i in remaining}
        uncommitted[:] = [e for e in uncommitted if not partial.intersection(source_of[i] for i in accepted[e["name"]])]
    with_frames = [e for e in uncommitted if e["frames"]]
    if with_frames:
        tracked = track_videos(cfg, with_frames, run_id)
        for old, new in tracked.items():
            accepted[new["name"]] = accepted.pop(old)
        uncommitted[:] = [tracked.get(e["name"], e) for e in uncommitted]
    commit(uncommitted, complete=not remaining)
    ledger.remove_garbage(state)
    if len(state.ledger_files) > MAX_LEDGER_FILES:
        state = ledger.compact(state, run_id, before_write=lease.renew)
        ledger.remove_garbage(state)
    if remaining:
        raise RunIncompleteError(f"{len(remaining)} of {len(expected)} rows could not be labelled after "
                                 f"{cfg.max_attempts} passes; {len(expected) - len(remaining)} were committed. "
                                 "Run again to label the rest.")
    return state.manifest


def _still_missing(plans: dict[int, dict], remaining: set[int], uri_of: dict[int, str]) -> dict[int, dict]:
    """Video plans cut down to the rows still missing."""
    return {vid: plan | {"frames": [f for f in plan["frames"] if storage.stable_id(uri_of[vid], f[0]) in remaining],
                         "error": plan["error"] if vid in remaining else None}
            for vid, plan in plans.items()}


def format_summary(manifest: dict) -> str:
    c, run = manifest["counts"], manifest["last_run"]
    lines = [
        f"fashion-ray labelling run ({run['mode']}{', nothing to do' if manifest.get('noop') else ''})",
        f"  bundle     {manifest['bundle']['name']}@{manifest['bundle']['version']}",
        f"  listed     {run['listed']} inputs: {run['new']} new, {run['changed']} changed, {run['outdated']} outdated, "
        f"{run['unchanged']} unchanged",
        f"  labelled   {run['labelled']} this run",
        f"  images     {c['inputs']} in = {c['ok']} ok + {c['error']} error" if not c.get("videos") else
        f"  rows       {c['rows']} = {c['ok']} ok + {c['error']} error, from {c['inputs']} inputs: "
        f"{c['inputs'] - c['videos']} images, {c['videos']} videos -> {c['frames']} frames",
        f"  labels     {c['persons']} persons, {c['garments']} garments, {c['parts']} parts",
    ]
    if manifest["errors_by_reason"]:
        lines.append("  errors     " + ", ".join(f"{k}: {v}" for k, v in manifest["errors_by_reason"].items()))
    lines += [
        f"  speed      {run['images_per_s']:.2f} images/s ({run['elapsed_s']:.1f} s incl. start-up)",
        f"  output     {storage.join(manifest['output'], 'manifest.json')} ({len(manifest['shards'])} shards: parquet/, coco/)",
    ]
    return "\n".join(lines)
