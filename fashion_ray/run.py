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

import sys
import time
import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from fashion_ray import ledger, placement, storage
from fashion_ray.config import ConfigError, LabelJobConfig
from fashion_ray.errors import RunError
from fashion_ray.formats.shards import Shard
from fashion_ray.lease import acquire_lease
from fashion_ray.models import load_bundle, validate_bundle, verify_bundle
from fashion_ray.ray_init import init_ray
from fashion_ray.video import decoding


class RunIntegrityError(RunError):
    """Outputs do not account for every input exactly once; nothing was committed."""


class RunIncompleteError(RunIntegrityError):
    """Some inputs could not be labelled in this run; what was labelled is committed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _checked_bundle(cfg: LabelJobConfig):
    bundle = load_bundle(cfg.bundle, cfg.storage)
    validate_bundle(bundle)
    missing = [s for s in cfg.stages if s not in bundle.stages]
    if missing:
        raise ConfigError(
            f"bundle {bundle.label} has no model for stages {missing} (it has: {', '.join(bundle.stages)})"
        )
    verify_bundle(bundle, cfg.stages, cfg.storage)
    return bundle


def run_label_job(
    cfg: LabelJobConfig,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    progress=sys.stderr,
) -> dict:
    """Label what the run has to label and commit it; returns the committed manifest.

    Bundle and inputs are checked before Ray starts, so a bad flag fails in a second. The
    whole run holds the output's lease: a second run on the same output stops at once.
    """
    started, t0 = _now(), time.perf_counter()
    bundle = _checked_bundle(cfg)
    skipped: dict[str, int] = {}
    listing = storage.list_inputs(
        list(cfg.inputs), cfg.storage, skipped=skipped
    )  # bad inputs fail before the output is touched
    run_id = uuid.uuid4().hex
    ledger.claim_output(cfg.output, cfg.storage)  # someone else's folder is refused, not cleaned up
    lease = acquire_lease(cfg.output, cfg.lease_ttl_s, cfg.storage, run_id)
    try:
        run = LabelRun(
            cfg, bundle, listing, lease, run_id=run_id, progress=progress, started=started, t0=t0, skipped=skipped
        )
        return run.execute(ray_address=ray_address, num_cpus=num_cpus, verbose=verbose)
    finally:
        lease.release()


class LabelRun:
    """One run on one output, holding its lease: plan, passes, accept shards, commit, finish.

    Every row the run must produce has an id (an image's, or a video frame's) and the id of
    the input it comes from (`source_of`). A shard is accepted when all its ids are still
    `remaining`; accepted shards wait in `uncommitted` until the next commit.
    """

    def __init__(
        self,
        cfg: LabelJobConfig,
        bundle,
        listing: pa.Table,
        lease,
        *,
        run_id: str,
        progress,
        started: str,
        t0: float,
        skipped: dict[str, int] | None = None,
    ):
        self.cfg, self.bundle, self.lease, self.run_id = cfg, bundle, lease, run_id
        self.progress, self.started, self.t0 = progress, started, t0
        self.committed = ledger.load_state(cfg.output, cfg.storage)
        # a full run replaces the output's contents; an incremental one builds on what is committed
        self.state = self.committed if cfg.incremental else ledger.empty_state(cfg.output, cfg.storage)
        self.todo, self.counts = ledger.classify(
            listing, self.state.ledger, bundle.label, cfg.relabel if cfg.incremental else "all"
        )
        self.counts["skipped"] = dict(sorted((skipped or {}).items()))  # files in the input folders that are not inputs
        self.uri_of = dict(zip(self.todo["id"].to_pylist(), self.todo["uri"].to_pylist()))
        self.plans: dict[int, dict] = {}  # video id -> sampling plan (decoding.probe)
        self.source_of: dict[int, int] = {}  # row id -> input id, for every row this run must produce
        self.remaining: set[int] = set()
        self.uncommitted: list[Shard] = []
        self.stalled = ""  # why the cluster stopped making progress, if it did
        self.placement: dict[str, dict[str, int]] = {}  # {step: {node id: rows}} of accepted shards
        self.last_commit = time.perf_counter()

    def say(self, message: str) -> None:
        print(f"[fashion-ray] {message}", file=self.progress, flush=True)

    def execute(self, *, ray_address=None, num_cpus=None, verbose=False) -> dict:
        removed = ledger.remove_garbage(self.committed)
        if removed:
            self.say(f"removed {removed} uncommitted files left by an interrupted run")
        c = self.counts
        self.say(
            f"{c['listed']} inputs listed: {c['new']} new, {c['changed']} changed, {c['outdated']} outdated, "
            f"{c['unchanged']} unchanged; labelling {c['to_label']} with bundle {self.bundle.label}, "
            f"stages {'+'.join(self.cfg.stages)}"
        )
        if self.todo.num_rows == 0 and self.committed.manifest is not None and self.cfg.incremental:
            self.say("nothing new to label; the output is up to date")
            return self.committed.manifest | self.run_info(complete=True) | {"noop": True}
        if self.todo.num_rows:
            init_ray(ray_address, num_cpus, verbose=verbose)
            placement.check(self.cfg, autoscaling=self.cfg.autoscaling, say=self.say)
        blocks = self.plan()
        for attempt in range(1, self.cfg.max_attempts + 1):
            if not self.remaining or self.stalled:
                break
            if attempt > 1:
                self.say(f"pass {attempt}: {len(self.remaining)} rows a fault lost are labelled again")
                blocks = self.retry_blocks()
            self.run_pass(blocks)
        return self.finish()

    def plan(self) -> list[pa.Table]:
        """Probe the videos, cut the work into blocks, and note every row id the run owes."""
        from fashion_ray.pipeline import probe_videos, work_items

        videos = [i for i, uri in self.uri_of.items() if decoding.may_have_frames(uri)]
        self.plans = probe_videos(self.cfg, self.todo.filter(pc.is_in(self.todo["id"], pa.array(videos, pa.int64()))))
        if self.plans:
            self.say(
                f"{len(self.plans)} videos or multi-frame images: {sum(len(p['frames']) for p in self.plans.values())} frames sampled"
            )
        blocks, self.source_of = work_items(self.cfg, self.todo, self.plans)
        self.remaining = set(self.source_of)
        return blocks

    def retry_blocks(self) -> list[pa.Table]:
        """Work for every input with a row still missing (a video: only its missing frames)."""
        from fashion_ray.pipeline import work_items

        sources = sorted({self.source_of[i] for i in self.remaining})
        work = self.todo.filter(pc.is_in(self.todo["id"], pa.array(sources, pa.int64())))
        plans = {
            vid: plan
            | {
                "frames": [f for f in plan["frames"] if storage.stable_id(self.uri_of[vid], f[0]) in self.remaining],
                "error": plan["error"] if vid in self.remaining else None,
            }
            for vid, plan in self.plans.items()
        }
        return work_items(self.cfg, work, plans)[0]

    def run_pass(self, blocks: list[pa.Table]) -> None:
        from ray.data.exceptions import ExecutionTimeoutError

        try:
            self._label(blocks)
        except ExecutionTimeoutError:
            # nothing moved for stall_timeout_s: typically the only nodes that can run a stage are
            # gone; another pass would stall the same way
            self.stalled = (
                f"the cluster made no progress for {self.cfg.stall_timeout_s:g} s (nodes lost? "
                f"see --plan for what each stage needs)"
            )
            self.say(self.stalled)

    def _label(self, blocks: list[pa.Table]) -> None:
        from fashion_ray.pipeline import label_shards

        for shard in label_shards(self.cfg, blocks, self.bundle, self.run_id):
            if self.accept(shard):
                done, total = len(self.source_of) - len(self.remaining), len(self.source_of)
                self.say(
                    f"{done}/{total} rows ({100 * done // total}%), {done / (time.perf_counter() - self.t0):.1f} rows/s"
                )
            if self.cfg.incremental and time.perf_counter() - self.last_commit >= self.cfg.commit_every_s:
                # shards holding video frames wait for the end: tracks need every frame of a video
                self.commit([s for s in self.uncommitted if not s.frames], complete=False)
                self.uncommitted = [s for s in self.uncommitted if s.frames]
                self.last_commit = time.perf_counter()

    def accept(self, shard: Shard) -> bool:
        """Take a shard whose rows are all still owed; drop a copy of rows already accepted."""
        ids = set(shard.ids)
        if not ids.issubset(self.source_of):
            raise RunIntegrityError(
                f"a shard holds rows this run was not given (e.g. id {min(ids - set(self.source_of))}); "
                "nothing more is committed"
            )
        if not ids.issubset(self.remaining):
            # Ray re-ran a write after a fault and some of these rows are already accepted: this
            # copy is dropped (its file is removed at the end); its other rows go round again
            self.say(f"shard {shard.name} repeats rows already written; dropped")
            return False
        self.remaining -= ids
        self.uncommitted.append(shard)
        self.placement = placement.merge_placement([self.placement, shard.placement])
        return True

    def commit(self, shards: list[Shard], complete: bool, final: bool = False) -> None:
        rows = ledger.ledger_rows(
            self.todo, {s.name: list(s.ids) for s in shards}, self.bundle.label, self.run_id, self.source_of
        )
        self.state = ledger.commit(
            self.state,
            shards,
            rows,
            run_id=self.run_id,
            run_info=self.run_info(complete),
            before_write=self.lease.renew,
            final=final,
        )

    def finish(self) -> dict:
        """Check the run's accounts, draw video tracks, and make the last commit."""
        remaining, total = self.remaining, len(self.source_of)
        if remaining and not self.cfg.incremental:
            uris = sorted({self.uri_of[self.source_of[i]] for i in remaining})
            raise RunIntegrityError(
                f"ids in != ids out: {len(remaining)} rows missing after {self.cfg.max_attempts} "
                f"passes (e.g. {uris[:3]}); no manifest written" + (f"; {self.stalled}" if self.stalled else "")
            )
        if remaining:
            # a video missing frames is not committed at all (its source in the ledger would mark it
            # done): the next run labels it whole; shards sharing rows with it wait for that run too
            partial = {self.source_of[i] for i in remaining}
            self.uncommitted = [
                s for s in self.uncommitted if not partial.intersection(self.source_of[i] for i in s.ids)
            ]
        with_frames = [s for s in self.uncommitted if s.frames]
        if with_frames:
            from fashion_ray.pipeline import track_videos

            tracked = track_videos(self.cfg, [s.entry() for s in with_frames], self.run_id, self.bundle)
            self.uncommitted = [tracked.get(s.name, s) for s in self.uncommitted]
        self.commit(self.uncommitted, complete=not remaining, final=True)
        if remaining:
            raise RunIncompleteError(
                f"{len(remaining)} of {total} rows could not be labelled"
                + (f" ({self.stalled})" if self.stalled else f" after {self.cfg.max_attempts} passes")
                + f"; {total - len(remaining)} were committed. Run again to label the rest."
            )
        return self.state.manifest

    def run_info(self, complete: bool) -> dict:
        elapsed = time.perf_counter() - self.t0
        done = len(self.source_of) - len(self.remaining)
        cfg = self.cfg
        return {
            "config": cfg.to_json(),
            "bundle": self.bundle.to_json() | {"uri": self.bundle.uri},
            "last_run": {
                "run_id": self.run_id,
                "mode": "incremental" if cfg.incremental else "full",
                "relabel": cfg.relabel if cfg.incremental else "all",
                "started_at": self.started,
                "finished_at": _now() if complete else None,
                "complete": complete,
                **self.counts,
                "labelled": done,
                "elapsed_s": round(elapsed, 3),
                "placement": self.placement,
                "images_per_s": round(done / elapsed, 3) if elapsed else 0.0,
            },
        }


def format_summary(manifest: dict) -> str:
    c, run = manifest["counts"], manifest["last_run"]
    lines = [
        f"fashion-ray labelling run ({run['mode']}{', nothing to do' if manifest.get('noop') else ''})",
        f"  bundle     {manifest['bundle']['name']}@{manifest['bundle']['version']}",
        f"  listed     {run['listed']} inputs: {run['new']} new, {run['changed']} changed, {run['outdated']} outdated, "
        f"{run['unchanged']} unchanged",
        f"  labelled   {run['labelled']} this run",
        f"  images     {c['inputs']} in = {c['ok']} ok + {c['error']} error"
        if not c.get("videos")
        else f"  rows       {c['rows']} = {c['ok']} ok + {c['error']} error, from {c['inputs']} inputs: "
        f"{c['inputs'] - c['videos']} images, {c['videos']} videos -> {c['frames']} frames",
        f"  labels     {c['persons']} persons, {c['garments']} garments, {c['parts']} parts"
        + (f"; {c['candidates']} person candidates under the threshold" if c.get("candidates") else "")
        + (f"; {c['objects']} accessories nobody holds" if c.get("objects") else "")
        + (f"; {c['object_candidates']} accessory candidates" if c.get("object_candidates") else ""),
    ]
    if run.get("skipped"):
        names = {"hidden": "hidden (names starting with '.')", "not_media": "not images or videos"}
        lines.append("  skipped    " + ", ".join(f"{n} {names.get(k, k)}" for k, n in run["skipped"].items()))
    if c.get("tracks"):
        lines.append(
            f"  tracks     {c['tracks']} person tracks over the videos' frames, {c['mean_track_length']} frames long on average"
        )
    if c.get("actions"):
        lines.append(
            "  actions    "
            + ", ".join(f"{name} {n}" for name, n in c["actions"].items())
            + " (persons, photos and video frames)"
        )
    if manifest["errors_by_reason"]:
        lines.append("  errors     " + ", ".join(f"{k}: {v}" for k, v in manifest["errors_by_reason"].items()))
    if len({node for nodes in run.get("placement", {}).values() for node in nodes}) > 1:
        # on a cluster: which nodes each step ran on, rows per node (node ids shortened)
        lines.append(
            "  placement  "
            + "; ".join(
                f"{step} " + ", ".join(f"{node[:8]} x{rows}" for node, rows in sorted(nodes.items()))
                for step, nodes in run["placement"].items()
            )
        )
    lines += [
        f"  speed      {run['images_per_s']:.2f} images/s ({run['elapsed_s']:.1f} s incl. start-up)",
        f"  output     {storage.join(manifest['output'], 'manifest.json')} ({len(manifest['shards'])} shards: parquet/, coco/)",
    ]
    return "\n".join(lines)
