"""The run's own steps under faults we can provoke for real: rows a fault lost go round again,
a shard that does not add up commits nothing, a lost lease stops commits, a model failing
on one image costs one error row, and a long ledger is compacted."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest

from fashion_ray import config, ledger, storage, taxonomy
from fashion_ray.config import Device
from fashion_ray.formats.shards import Shard, write_rows
from fashion_ray.lease import LeaseLostError, acquire_lease
from fashion_ray.models import load_bundle
from fashion_ray.pipeline import label_shards, load_media
from fashion_ray.run import LabelRun, RunIntegrityError
from fashion_ray.stages import PersonStage
from helpers import jpeg_bytes


def _corpus(folder, count: int):
    folder.mkdir()
    for k in range(count):
        (folder / f"img_{k:02d}.jpg").write_bytes(jpeg_bytes(k, (96, 72)))
    return folder


def _run(tmp_path, bundle_uri: str, count: int, **overrides) -> LabelRun:
    """A LabelRun holding a real lease on a fresh output, ready for its steps to be driven one by one."""
    corpus = _corpus(tmp_path / "corpus", count)
    res = config.StageResources(batch_size=2)
    cfg = config.LabelJobConfig(
        inputs=(str(corpus),),
        output=str(tmp_path / "out"),
        bundle=bundle_uri,
        stages=("person",),
        resources={s: res for s in taxonomy.STAGES},
        rows_per_shard=2,
        read_batch_size=2,
        **overrides,
    )
    bundle = load_bundle(bundle_uri)
    listing = storage.list_inputs(list(cfg.inputs))
    lease = acquire_lease(cfg.output, cfg.lease_ttl_s, run_id="test-run")
    return LabelRun(
        cfg,
        bundle,
        listing,
        lease,
        run_id="test-run",
        progress=open("/dev/null", "w"),
        started="",
        t0=time.perf_counter(),
    )


def test_rows_a_fault_lost_go_round_again_and_land_once(ray_session, plumbing_bundle, tmp_path):
    run = _run(tmp_path, plumbing_bundle, 6)
    blocks = run.plan()
    shards = list(label_shards(run.cfg, blocks, run.bundle, run.run_id))
    lost = shards[0]  # as if its summary never reached the driver: its rows are still owed
    for shard in shards[1:]:
        assert run.accept(shard)
    assert run.remaining == set(lost.ids) and run.accept(shards[1]) is False  # a repeated copy is dropped
    run.run_pass(run.retry_blocks())  # the second pass labels exactly the lost inputs
    assert not run.remaining
    manifest = run.finish()
    run.lease.release()
    rows = sorted(r["id"] for s in manifest["shards"] for r in _rows(tmp_path / "out", s))
    assert rows == sorted(run.todo["id"].to_pylist()) and manifest["counts"]["rows"] == 6
    # the retry wrote the same ids under the same name (a retried write replaces itself): one file, listed once
    names = [s["name"] for s in manifest["shards"]]
    assert len(names) == len(set(names)) == len(list((tmp_path / "out" / "parquet").iterdir()))


def _rows(out, entry) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / entry["parquet"]).to_pylist()


def test_a_shard_with_rows_the_run_was_not_given_commits_nothing(plumbing_bundle, tmp_path):
    run = _run(tmp_path, plumbing_bundle, 3)
    run.plan()  # images only: no Ray needed to plan
    stranger = Shard(
        name="part-x", ids=(123456789,), ok=1, frames=0, persons=0, garments=0, parts=0, errors={}, ava=False
    )
    with pytest.raises(RunIntegrityError, match="not given"):
        run.accept(stranger)
    with pytest.raises(RunIntegrityError, match="ids in != ids out: 3 rows missing"):
        run.finish()  # a full run missing rows after its passes
    run.lease.release()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_lost_lease_stops_commits(plumbing_bundle, tmp_path):
    run = _run(tmp_path, plumbing_bundle, 2, incremental=True)
    run.plan()
    # another run took the output over (this one stalled past its lease): it writes its own lease
    lease_file = tmp_path / "out" / "_lease.json"
    record = json.loads(lease_file.read_text()) | {"run_id": "other-run", "pid": 1}
    lease_file.write_text(json.dumps(record))
    with pytest.raises(LeaseLostError, match="taken over"):
        run.commit([], complete=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    run.lease._stop.set()


def test_a_model_error_on_one_image_is_one_error_row(plumbing_bundle, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 3)
    items = [
        {
            "id": k,
            "uri": str(p),
            "size": p.stat().st_size,
            "etag": "",
            "mtime": 0.0,
            "source": k,
            "kind": "image",
            "frames": "",
            "error": "",
            "error_detail": "",
        }
        for k, p in enumerate(sorted(corpus.iterdir()))
    ]
    batch = load_media(
        {key: np.array([it[key] for it in items], dtype=object) for key in items[0]},
        max_pixels=10**7,
        max_bytes=10**7,
        max_side=640,
    )
    batch["image"][1] = np.zeros((0, 0, 3), np.uint8)  # no pixels: the detector raises on this one image
    stage = PersonStage(plumbing_bundle, Device(), batch_size=3)
    out = stage(batch)
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert out["error"][1] == "model_error" and out["error_detail"][1].startswith("person: ")
    assert out["persons"][1].items == [] and "image" in out


def test_the_last_commit_compacts_a_long_ledger(tmp_path):
    out = str(tmp_path / "out")
    listing = pa.table(
        {
            "id": pa.array(range(1, 13), pa.int64()),
            "uri": [f"/in/{k}.jpg" for k in range(1, 13)],
            "size": pa.array([10] * 12, pa.int64()),
            "etag": [""] * 12,
            "mtime": pa.array([None] * 12, pa.timestamp("us", tz="UTC")),
        }
    )
    state = ledger.empty_state(out)
    row = {
        "uri": "",
        "size": 10,
        "etag": "",
        "mtime": None,
        "frame_index": None,
        "timestamp_s": None,
        "width": 4,
        "height": 4,
        "status": "ok",
        "error": None,
        "error_detail": None,
        "bundle_name": "b",
        "bundle_version": "1",
        "stages": ["person"],
        "persons": [],
    }
    for k in range(1, 13):  # one commit per input, as an incremental run killed and resumed twelve times would
        shard = write_rows([row | {"id": k, "uri": f"/in/{k}.jpg"}], output=out, info={}, salt=f"run{k}")
        rows = ledger.ledger_rows(listing, {shard.name: list(shard.ids)}, "b@1", f"run{k}")
        state = ledger.commit(state, [shard], rows, run_id=f"run{k}", run_info={}, final=k == 12)
    assert len(state.ledger_files) == 1 and state.ledger_files[0].endswith("-compact.parquet")
    on_disk = sorted(p.name for p in (tmp_path / "out" / "ledger").iterdir())
    assert on_disk == [state.ledger_files[0].split("/")[-1]]  # the folded files are gone
    reloaded = ledger.load_state(out)
    assert sorted(reloaded.ledger["id"].to_pylist()) == list(range(1, 13))
    assert reloaded.manifest["counts"]["rows"] == 12 and len(reloaded.manifest["shards"]) == 12


def test_every_exception_of_ours_has_one_base():
    """An entrypoint tells the user's mistake (InputError: exit 2) from a run that could not
    finish (RunError: exit 1) by these bases alone; every exception class the package defines
    derives from FashionRayError."""
    import importlib
    import inspect
    import pkgutil

    import fashion_ray
    from fashion_ray.errors import FashionRayError

    found = {}
    for info in pkgutil.walk_packages(fashion_ray.__path__, "fashion_ray."):
        if info.name.startswith("fashion_ray.assets"):  # the bundle converter needs TensorFlow
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    assert len(found) >= 17
    assert [name for name, cls in found.items() if not issubclass(cls, FashionRayError)] == []
