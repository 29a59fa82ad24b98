"""Scheduled auto-labelling against the S3 server: only what is new, exactly once, through
throttling, a killed driver and a killed actor, one writer at a time."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from fashion_ray import config, ledger
from fashion_ray.lease import LeaseHeldError, acquire_lease
from fashion_ray.run import run_label_job
from fashion_ray.storage import LISTING_SCHEMA, StorageOptions, list_inputs, stable_id
from helpers import ROOT, FaultyS3Proxy, job_main, jpeg_bytes


def _fs(endpoint) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def _upload(fs, prefix: str, seeds) -> list[str]:
    fs.pipe({f"{prefix}/img{s:03d}.jpg": jpeg_bytes(s) for s in seeds})
    return [f"s3://{prefix}/img{s:03d}.jpg" for s in seeds]


def _rows(fs, output: str) -> list[dict]:
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{output}/manifest.json"))
    return [
        r
        for s in manifest["shards"]
        for r in pq.read_table(io.BytesIO(fs.cat_file(f"{output}/{s['parquet']}"))).to_pylist()
    ]


def _assert_exactly_once(fs, output: str, uris: list[str]) -> list[dict]:
    rows = _rows(fs, output)
    assert sorted(r["id"] for r in rows) == sorted(stable_id(u) for u in uris)  # each input once, nothing else
    manifest = json.loads(fs.cat_file(f"{output}/manifest.json"))
    live = {s[k] for s in manifest["shards"] for k in ("parquet", "coco")} | set(manifest["ledger"])
    on_disk = {p[len(output) + 1 :] for p in fs.find(output) if "/" in p[len(output) + 1 :]}
    assert on_disk == live  # no half-written or orphaned shard left beside the committed ones
    assert manifest["counts"]["inputs"] == len(uris)
    return rows


def _config(bucket: str, endpoint: str, bundle: str, **kw) -> config.LabelJobConfig:
    return config.LabelJobConfig(
        **{
            "inputs": (f"s3://{bucket}/uploads/",),
            "output": f"s3://{bucket}/labels",
            "bundle": bundle,
            "stages": ("person",),
            "rows_per_shard": 4,
            "read_batch_size": 4,
            "incremental": True,
            "commit_every_s": 0,
            "storage": StorageOptions(endpoint_url=endpoint),
            **kw,
        }
    )


def test_classify_new_changed_outdated_unchanged():
    when = datetime(2026, 11, 1, tzinfo=timezone.utc)

    def listing(etag_of_2: str, mtime_of_5: datetime) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {"id": 1, "uri": "s3://b/a.jpg", "size": 10, "etag": "e1", "mtime": when},
                {"id": 2, "uri": "s3://b/b.jpg", "size": 10, "etag": etag_of_2, "mtime": when},
                {"id": 3, "uri": "s3://b/c.jpg", "size": 10, "etag": "e3", "mtime": when},
                {"id": 4, "uri": "s3://b/d.jpg", "size": 10, "etag": "e4", "mtime": when},
                {"id": 5, "uri": "/data/e.jpg", "size": 7, "etag": "", "mtime": mtime_of_5},  # no etag: size + mtime
            ],
            schema=LISTING_SCHEMA,
        )

    before = listing("e2-old", when)
    prior = pa.concat_tables(
        [ledger.ledger_rows(before, {"s1": [1, 2, 5]}, "m@2"), ledger.ledger_rows(before, {"s0": [3]}, "m@1")]
    )
    now = listing("e2-new", when)
    todo, counts = ledger.classify(now, prior, "m@2", "changed")
    # 1 unchanged, 2 changed (etag), 3 outdated (bundle m@1), 4 new, 5 unchanged
    assert counts == {"listed": 5, "new": 1, "changed": 1, "outdated": 1, "unchanged": 2, "to_label": 2}
    assert sorted(todo["id"].to_pylist()) == [2, 4]
    assert sorted(ledger.classify(now, prior, "m@2", "outdated")[0]["id"].to_pylist()) == [2, 3, 4]
    assert ledger.classify(now, prior, "m@2", "all")[1]["to_label"] == 5
    touched = listing("e2-old", datetime(2026, 11, 2, tzinfo=timezone.utc))  # same size, new mtime, no etag
    assert sorted(ledger.classify(touched, prior, "m@2", "changed")[0]["id"].to_pylist()) == [4, 5]
    assert ledger.latest_per_id(pa.concat_tables([prior, ledger.ledger_rows(now, {"s2": [2]}, "m@2")])).num_rows == 4


def test_incremental_runs_label_new_and_changed_inputs_once(ray_session, s3_server, plumbing_bundle, tmp_path):
    fs = _fs(s3_server)
    fs.mkdir("inc-bucket")
    uris = _upload(fs, "inc-bucket/uploads", range(6))
    cfg = _config("inc-bucket", s3_server, plumbing_bundle)

    first = run_label_job(cfg)
    assert (first["last_run"]["new"], first["last_run"]["labelled"]) == (6, 6)
    _assert_exactly_once(fs, "inc-bucket/labels", uris)

    second = run_label_job(cfg)  # nothing new: no Ray work, no write
    assert second["noop"] and second["last_run"]["labelled"] == 0 and second["last_run"]["unchanged"] == 6
    assert json.loads(fs.cat_file("inc-bucket/labels/manifest.json"))["commit"] == first["commit"]

    uris += _upload(fs, "inc-bucket/uploads", range(6, 9))
    fs.pipe_file("inc-bucket/uploads/img001.jpg", jpeg_bytes(101))  # re-uploaded with new content
    third = run_label_job(cfg)
    run = third["last_run"]
    assert (run["new"], run["changed"], run["unchanged"], run["labelled"]) == (3, 1, 5, 4)
    rows = _assert_exactly_once(fs, "inc-bucket/labels", uris)
    changed = next(r for r in rows if r["uri"].endswith("img001.jpg"))
    assert changed["etag"] == fs.info("inc-bucket/uploads/img001.jpg")["ETag"].strip('"')

    # a new bundle version: by default nothing is relabelled; --relabel outdated relabels all 9
    v2 = tmp_path / "plumbing-v2"
    shutil.copytree(plumbing_bundle, v2)
    manifest = json.loads((v2 / "bundle.json").read_text())
    (v2 / "bundle.json").write_text(json.dumps(manifest | {"version": "2.0.0"}))
    cfg_v2 = _config("inc-bucket", s3_server, str(v2))
    assert run_label_job(cfg_v2)["last_run"]["outdated"] == 9
    relabelled = run_label_job(_config("inc-bucket", s3_server, str(v2), relabel="outdated"))
    assert relabelled["last_run"]["labelled"] == 9
    rows = _assert_exactly_once(fs, "inc-bucket/labels", uris)
    assert {r["bundle_version"] for r in rows} == {"2.0.0"}


def test_throttling_and_5xx_are_retried(ray_session, s3_server, plumbing_bundle):
    fs = _fs(s3_server)
    fs.mkdir("slow-bucket")
    uris = _upload(fs, "slow-bucket/uploads", range(10))
    proxy = FaultyS3Proxy(s3_server, every=4)  # every 4th request: 503 SlowDown
    try:
        manifest = run_label_job(_config("slow-bucket", proxy.endpoint, plumbing_bundle, incremental=False))
    finally:
        proxy.close()
    assert manifest["counts"] == {**manifest["counts"], "inputs": 10, "ok": 10, "error": 0}
    assert proxy.faults >= 5  # listing, fetches, shard writes, ledger, lease and manifest all went through faults
    _assert_exactly_once(fs, "slow-bucket/labels", uris)


def test_listing_is_paginated_not_per_object(s3_server):
    fs = _fs(s3_server)
    fs.mkdir("list-bucket")
    fs.pipe(
        {f"list-bucket/p/{i // 100:02d}/img{i:05d}.jpg": b"" for i in range(1200)} | {"list-bucket/p/notes.txt": b""}
    )
    proxy = FaultyS3Proxy(s3_server)
    try:
        listing = list_inputs(["s3://list-bucket/p/"], StorageOptions(endpoint_url=proxy.endpoint))
    finally:
        proxy.close()
    assert listing.num_rows == 1200 and len(set(listing["id"].to_pylist())) == 1200
    pages = [p for m, p in proxy.requests if m == "GET" and "list-type=2" in p and "delimiter" not in p]
    # 1,000 keys a page; besides the pages only the exists/isdir checks of the prefix, no request per object
    assert len(pages) == 2 and len(proxy.requests) <= 5, proxy.requests


def test_second_run_on_the_same_output_is_refused(ray_session, plumbing_bundle, tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "labels"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"img{i}.jpg").write_bytes(jpeg_bytes(i))
    holder = acquire_lease(str(out), ttl_s=60)
    try:
        code = job_main(
            "label_corpus",
            "--input",
            str(corpus),
            "--output",
            str(out),
            "--bundle",
            plumbing_bundle,
            "--stages",
            "person",
        )
    finally:
        holder.release()
    assert code == 3
    [message] = capsys.readouterr().err.strip().splitlines()  # one line
    assert message.startswith(
        f"error: output {out} is in use by run {holder.run_id} (host {os.uname().nodename}, pid {os.getpid()}, since "
    )
    assert not out.exists() or not (out / "manifest.json").exists()

    # a lease left by a process that died on this host, or one that expired, is taken over
    cfg = config.LabelJobConfig(inputs=(str(corpus),), output=str(out), bundle=plumbing_bundle, stages=("person",))
    dead = subprocess.Popen(["true"])
    dead.wait()
    for record in (
        {"run_id": "crashed", "host": os.uname().nodename, "pid": dead.pid, "expires_at": time.time() + 600},
        {"run_id": "elsewhere", "host": "other-node", "pid": 1, "expires_at": time.time() - 1},
    ):
        out.mkdir(exist_ok=True)
        (out / "_lease.json").write_text(json.dumps(record))
        assert run_label_job(cfg)["counts"]["ok"] == 3
        assert not (out / "_lease.json").exists()  # released at the end
    (out / "_lease.json").write_text(
        json.dumps({"run_id": "alive", "host": "other-node", "pid": 1, "expires_at": time.time() + 600})
    )
    with pytest.raises(LeaseHeldError, match="in use by run alive"):
        run_label_job(cfg)


def _descendant_processes(root: int, needle: str) -> list[int]:
    """PIDs under process `root` (its Ray's workers, when root started that Ray) whose command
    line contains needle: this test's processes, not the other xdist worker's."""
    parent, cmdlines = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmdlines[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent[int(pid)] = int(stat[stat.rindex(")") + 2 :].split()[1])

    def under_root(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return [pid for pid, cmd in cmdlines.items() if needle in cmd and under_root(pid)]


def _start_job(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", "label_corpus.py"), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_commit(fs, output: str, proc, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the job ended before it could be interrupted"
        fs.invalidate_cache()
        if fs.exists(f"{output}/manifest.json"):
            manifest = json.loads(fs.cat_file(f"{output}/manifest.json"))
            if manifest["last_run"]["labelled"] > 0:
                return manifest
        time.sleep(0.1)
    raise AssertionError("no commit within the timeout")


def _kill_session(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _job_args(bucket: str, endpoint: str, bundle: str, ray: tuple[str, ...] = ("--num-cpus", "2")) -> list[str]:
    """The CLI's flags for a person-only incremental run; `ray`: a local Ray of its own (the
    default) or `--ray-address` of one to join."""
    return [
        "--input",
        f"s3://{bucket}/uploads/",
        "--output",
        f"s3://{bucket}/labels",
        "--bundle",
        bundle,
        "--stages",
        "person",
        "--incremental",
        "--commit-every",
        "0",
        "--rows-per-shard",
        "4",
        "--read-batch-size",
        "4",
        *ray,
        "--s3-endpoint-url",
        endpoint,
    ]


@pytest.mark.slow
def test_killed_driver_then_rerun_labels_each_input_once(ray_session, s3_server, plumbing_bundle, tmp_path, capsys):
    fs = _fs(s3_server)
    fs.mkdir("kill-bucket")
    uris = _upload(fs, "kill-bucket/uploads", range(40))
    args = _job_args("kill-bucket", s3_server, plumbing_bundle)
    with open(tmp_path / "killed.log", "w") as log:
        proc = _start_job(args, log)
        try:
            _wait_for_commit(fs, "kill-bucket/labels", proc)
            os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run, between or during commits
            proc.wait(timeout=60)
        finally:
            time.sleep(1)
            _kill_session(proc)  # and its local Ray with it, as when the head node goes
    fs.invalidate_cache()
    committed = json.loads(fs.cat_file("kill-bucket/labels/manifest.json"))["counts"]["inputs"]
    assert 0 < committed < 40, committed

    capsys.readouterr()
    assert job_main("label_corpus", *args) == 0  # on the tests' Ray: a fresh driver, as after a restart
    listed = f"listed     40 inputs: {40 - committed} new, 0 changed, 0 outdated, {committed} unchanged"
    assert listed in capsys.readouterr().out
    _assert_exactly_once(fs, "kill-bucket/labels", uris)


@pytest.mark.slow
def test_killed_actor_mid_run_still_labels_each_input_once(ray_session, s3_server, plumbing_bundle, tmp_path):
    """The job (CLI) on the tests' Ray, started by this process: its actors are this process's
    descendants."""
    fs = _fs(s3_server)
    fs.mkdir("actor-bucket")
    uris = _upload(fs, "actor-bucket/uploads", range(30))
    args = _job_args(
        "actor-bucket", s3_server, plumbing_bundle, ("--ray-address", ray_session.get_runtime_context().gcs_address)
    )
    with open(tmp_path / "actor.log", "w") as log:
        proc = _start_job(args, log)
        try:
            _wait_for_commit(fs, "actor-bucket/labels", proc)
            actors = _descendant_processes(os.getpid(), "PersonStage")
            assert actors, "no PersonStage actor process found"
            os.kill(actors[0], signal.SIGKILL)  # Ray restarts the actor and retries its tasks
            assert proc.wait(timeout=300) == 0, (tmp_path / "actor.log").read_text()[-3000:]
        finally:
            _kill_session(proc)
    _assert_exactly_once(fs, "actor-bucket/labels", uris)
