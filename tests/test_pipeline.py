"""The pipeline in-process on the session's Ray: bundles from object storage, S3 in and out,
torchvision bundles end to end, coordinates mapped back to original pixels."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import s3fs

from fashion_ray import config, taxonomy
from fashion_ray import masks as rle
from fashion_ray.models import BundleError, load_bundle, verify_bundle
from fashion_ray.models.bundle import BUILTIN_BUNDLES_DIR
from fashion_ray.pipeline import build_plan
from fashion_ray.run import run_label_job
from fashion_ray.storage import StorageOptions, stable_id
from helpers import SAMPLE_CORPUS, FaultyS3Proxy, bad_file_catalogue


def _fs(endpoint):
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})


def test_s3_corpus_and_bundle_to_s3_labels(ray_session, s3_server):
    fs = _fs(s3_server)
    fs.mkdir("uploads-bucket")
    names = []
    for name in sorted(os.listdir(SAMPLE_CORPUS)):
        if name.endswith(".jpg"):
            fs.put_file(os.path.join(SAMPLE_CORPUS, name), f"uploads-bucket/2026/11/{name}")
            names.append(name)
    for name in ("truncated.jpg", "text_named.jpg"):
        fs.pipe_file(f"uploads-bucket/2026/11/{name}", bad_file_catalogue()[name][0])
        names.append(name)
    fs.mkdir("models")
    fs.put(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap"), "models/bootstrap-v1", recursive=True)

    cfg = config.LabelJobConfig(
        inputs=("s3://uploads-bucket/2026/",),
        output="s3://uploads-bucket/labels/run1",
        bundle="s3://models/bootstrap-v1",
        storage=StorageOptions(endpoint_url=s3_server),
    )
    manifest = run_label_job(cfg)
    assert manifest["counts"]["inputs"] == 6 and manifest["counts"]["error"] == 2
    rows = [
        r
        for s in manifest["shards"]
        for r in pq.read_table(io.BytesIO(fs.cat_file(f"uploads-bucket/labels/run1/{s['parquet']}"))).to_pylist()
    ]
    assert sorted(r["id"] for r in rows) == sorted(stable_id(f"s3://uploads-bucket/2026/11/{n}") for n in names)
    assert all(r["etag"] for r in rows) and all(r["mtime"] is not None for r in rows)
    assert json.loads(fs.cat_file("uploads-bucket/labels/run1/manifest.json"))["run_id"] == manifest["run_id"]
    # writes stay under the output prefix
    assert sorted(fs.ls("uploads-bucket/labels/run1")) == [
        "uploads-bucket/labels/run1/coco",
        "uploads-bucket/labels/run1/ledger",
        "uploads-bucket/labels/run1/manifest.json",
        "uploads-bucket/labels/run1/parquet",
    ]
    assert "testing" not in json.dumps(manifest)  # no credentials in what we write


def test_bundle_files_are_downloaded_once_per_machine(ray_session, s3_server, tmp_path):
    """A bundle on S3, read through a proxy that counts requests: the driver's check and both
    person actors share one download of the weights (the machine's sha256-keyed cache), and
    the next run downloads none."""
    import torch

    from fashion_ray.models.bundle import StageModel, save_bundle
    from fashion_ray.models.torchvision_models import build_model

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))  # weights no earlier run has cached
    spec = StageModel("fasterrcnn_mobilenet_v3_large_320_fpn", ("person",), 160, 0.5, 0.5)
    weights = build_model(spec.architecture, num_classes=2, input_size=160).state_dict()
    save_bundle(str(tmp_path / "bundle"), "cached", "1", {"person": (spec, weights)})
    _fs(s3_server).put(str(tmp_path / "bundle"), "cached-models/person-v1", recursive=True)
    proxy = FaultyS3Proxy(s3_server)
    try:
        person = config.StageResources(min_actors=2, max_actors=2, num_cpus=0.25)
        for run in ("first", "second"):
            cfg = config.LabelJobConfig(
                inputs=(SAMPLE_CORPUS,),
                output=str(tmp_path / run),
                stages=("person",),
                bundle="s3://cached-models/person-v1",
                resources={s: person for s in taxonomy.STAGES},
                storage=StorageOptions(endpoint_url=proxy.endpoint),
            )
            assert run_label_job(cfg)["counts"]["ok"] == 4
            downloads = [path for method, path in proxy.requests if method == "GET" and "person.pt" in path]
            assert len(downloads) == 1, downloads  # the first run's, and nothing in the second
    finally:
        proxy.close()


def test_the_in_flight_budget_by_hand():
    def budget(**kw) -> int:
        return config.LabelJobConfig(inputs=("photos/",), output="out", **kw).in_flight_budget_mb()

    assert budget() == 512  # 4 stages of one actor each: 4 x 128, the floor
    assert budget(stages=("person",)) == 512  # the floor
    gpu = config.stage_resources("cuda", ["person.max_actors=8", "clothing.max_actors=4"])
    assert budget(resources=gpu) == (8 + 4 + 1 + 1) * 128
    assert budget(resources=gpu, stages=("person", "parts")) == (8 + 1) * 128
    assert budget(resources=gpu, max_in_flight_mb=300) == 300
    with pytest.raises(config.ConfigError, match="max_in_flight_mb -1 must be >= 0"):
        budget(max_in_flight_mb=-1)


def test_the_drivers_memory_per_row_stays_under_its_bound(tmp_path):
    """A guard on the driver's bookkeeping (no Ray, no models): planning a run over 20,000
    simulated inputs costs about 1.5 KB an input row at its peak (listing, per-row maps, work
    blocks) and 0.3 KB a ledger row; a per-row object more would show. What 100 M inputs need
    follows from these (docs/figures.md). Measured in a fresh process: the allocations traced
    are the whole process's, and a Ray started by an earlier test allocates from its own threads."""
    import concurrent.futures
    import multiprocessing

    from fashion_ray.bench.benchmark import driver_memory

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        figures = fresh.submit(driver_memory, 20_000, str(tmp_path / "out")).result(timeout=300)
    assert figures["rows"] == 20_000 and figures["listing_bytes_per_row"] > 0
    assert figures["driver_bytes_per_input_row"] < 2_000, figures
    assert figures["ledger_bytes_per_row"] < 500, figures


def test_torchvision_bundle_end_to_end_in_original_pixels(ray_session, plumbing_bundle, tmp_path):
    # work at 256 px on 512-600 px photos: labels must still come out at the original size
    res = config.apply_overrides({s: config.StageResources() for s in taxonomy.STAGES}, ["all.batch_size=2"])
    cfg = config.LabelJobConfig(
        inputs=(SAMPLE_CORPUS,),
        output=str(tmp_path / "labels"),
        bundle=plumbing_bundle,
        resources=res,
        work_max_side=256,
        max_in_flight_mb=1,  # under one decoded block: the stages wait for each other, and never hang
    )
    manifest = run_label_job(cfg)
    assert manifest["bundle"]["name"] == "plumbing" and manifest["counts"]["ok"] == 4
    # the bound lives in the plan's own copy of Ray Data's context; the process's stays as it was
    plan = build_plan(cfg, [pa.table({"id": [0]})], load_bundle(plumbing_bundle), "run")
    assert plan.context.execution_options.resource_limits.object_store_memory == 2**20
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory == float("inf")
    rows = [r for s in manifest["shards"] for r in pq.read_table(tmp_path / "labels" / s["parquet"]).to_pylist()]
    assert {r["bundle_version"] for r in rows} == {"1.2.3"}
    garments = parts = 0
    for row in rows:
        for person in row["persons"]:
            x0, y0, x1, y1 = person["box"]
            assert 0 <= x0 <= x1 <= row["width"] and 0 <= y0 <= y1 <= row["height"]
            for g in person["garments"]:
                garments += 1
                assert g["category"] in taxonomy.DEEPFASHION2
                assert g["mask"]["size"] == [row["height"], row["width"]]
            for p in person["parts"]:
                parts += 1
                assert p["mask"]["size"] == [row["height"], row["width"]] and rle.area(p["mask"]) == p["area"]
    assert garments > 0 and parts > 0  # random weights still exercise every stage


def test_weights_sha_mismatch_is_a_clear_error(plumbing_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(plumbing_bundle, broken)
    with open(broken / "parts.pt", "ab") as fh:
        fh.write(b"tampered")
    bundle = load_bundle(str(broken))
    verify_bundle(bundle, ["person", "clothing"])  # untouched stages still verify
    with pytest.raises(BundleError, match=r"sha256 mismatch for .*parts\.pt"):
        verify_bundle(bundle, ["parts"])


def test_bundle_manifest_rejects_unknown_keys(tmp_path):
    raw = json.loads(open(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap", "bundle.json")).read())
    raw["stages"]["person"]["score_treshold"] = 0.3
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="unknown keys \\['score_treshold'\\]"):
        load_bundle(str(tmp_path))


@pytest.mark.parametrize(
    "weights,sha256",
    [
        ("../payload/evil.sh", "0" * 64),
        ("/etc/passwd", "0" * 64),
        ("s3://elsewhere/person.pt", "0" * 64),
        ("file:///etc/passwd", "0" * 64),
        ("C:/x.pt", "0" * 64),
        ("sub/../../x.pt", "0" * 64),
        ("~/x.pt", "0" * 64),
        ("person.pt", "../x"),
        ("person.pt", "ABC"),
        ("person.pt", 12),
    ],
)
def test_bundle_files_stay_inside_the_bundle(tmp_path, weights, sha256):
    """A hostile manifest can neither make a reader fetch (or a publish copy) a file outside
    its folder nor name a lock file with its digest (a published bundle copies the base's files)."""
    raw = json.loads(open(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap", "bundle.json")).read())
    raw["stages"]["clothing"]["weights"], raw["stages"]["clothing"]["sha256"] = weights, sha256
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="not a path inside the bundle folder|not 64 lower-case hex digits"):
        load_bundle(str(tmp_path))
    raw = json.loads(open(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap", "bundle.json")).read())
    raw["stages"]["person"]["options"]["files"]["detector"]["path"] = weights
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    if isinstance(sha256, str) and len(sha256) == 64:
        with pytest.raises(BundleError, match="not a path inside the bundle folder"):
            load_bundle(str(tmp_path))


def test_builtin_bundle_files_match_their_checksums():
    bundle = load_bundle("bootstrap")
    for spec in bundle.stages.values():
        for entry in spec.model_options.get("files", {}).values():
            data = open(os.path.join(bundle.uri, entry["path"]), "rb").read()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_manifest_of_uris_with_a_missing_object(ray_session, tmp_path):
    listing = tmp_path / "batch.txt"
    listing.write_text(
        f"# uploads of 2026-11-22\n{SAMPLE_CORPUS}/grace_hopper.jpg\n{tmp_path}/deleted-before-the-run.jpg\n"
    )
    cfg = config.LabelJobConfig(inputs=(str(listing),), output=str(tmp_path / "labels"), stages=("person",))
    manifest = run_label_job(cfg)
    rows = {
        os.path.basename(r["uri"]): r
        for s in manifest["shards"]
        for r in pq.read_table(tmp_path / "labels" / s["parquet"]).to_pylist()
    }
    assert set(rows) == {"grace_hopper.jpg", "deleted-before-the-run.jpg"}
    assert rows["grace_hopper.jpg"]["status"] == "ok" and len(rows["grace_hopper.jpg"]["persons"]) == 1
    assert (rows["deleted-before-the-run.jpg"]["status"], rows["deleted-before-the-run.jpg"]["error"]) == (
        "error",
        "unreadable",
    )
