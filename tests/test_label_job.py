"""The labelling job run through its CLI with the default bundle: the output contracts."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from fashion_ray import taxonomy
from fashion_ray.formats.schema import LABEL_SCHEMA, SCHEMA_VERSION
from fashion_ray.models import load_bundle
from fashion_ray.storage import stable_id
from helpers import SAMPLE_CORPUS, SECRET_MARKER, bad_file_catalogue, job_main, read_rows, run_cli, scanless_jpeg


def test_every_input_out_exactly_once(default_run):
    corpus, out, proc = default_run
    ids_in = {stable_id(str(p)) for p in corpus.iterdir() if p.suffix != ".md"}
    ids_out = [r["id"] for r in read_rows(out)]
    assert len(ids_out) == len(set(ids_out)) == len(ids_in) == 14
    assert set(ids_out) == ids_in
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["inputs"] == c["ok"] + c["error"] == 14
    assert "14 in = 9 ok + 5 error" in proc.stdout


def test_bad_files_become_error_rows_with_reasons(default_run):
    _, out, _ = default_run
    by_name = {os.path.basename(r["uri"]): r for r in read_rows(out)}
    for name, (_, reason) in bad_file_catalogue().items():
        row = by_name[name]
        if reason is None:
            assert row["status"] == "ok" and row["error"] is None, (name, row["error_detail"])
        else:
            assert (row["status"], row["error"]) == ("error", reason), name
            assert row["error_detail"] and row["persons"] == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["errors_by_reason"] == {"too_large": 1, "truncated": 1, "undecodable": 2, "unsupported": 1}


def test_parquet_schema_and_readers_without_our_code(default_run):
    import duckdb
    import polars as pl

    _, out, _ = default_run
    files = sorted(glob.glob(str(out / "parquet" / "*.parquet")))
    table = pq.read_table(files[0])
    assert table.schema.remove_metadata() == LABEL_SCHEMA.remove_metadata()
    assert table.schema.metadata[b"fashion_ray.schema_version"] == str(SCHEMA_VERSION).encode()
    pattern = str(out / "parquet" / "*.parquet")
    n, persons = duckdb.sql(f"select count(*), sum(len(persons)) from read_parquet('{pattern}')").fetchall()[0]
    assert n == 14 and persons >= 5
    # the labels are the confident persons; a candidate under the threshold is a box and a score
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    confident, bare_candidates = duckdb.sql(f"""select count(*) filter (where person.confident),
        count(*) filter (where not person.confident and person.mask is null and person.keypoints is null
                         and len(person.garments) = 0 and len(person.parts) = 0 and len(person.actions) = 0)
        from (select unnest(persons) as person from read_parquet('{pattern}')) t""").fetchall()[0]
    assert (confident, bare_candidates) == (counts["persons"], counts["candidates"]) and confident >= 5
    parts = duckdb.sql(f"""select p.part from (select unnest(persons) as person from read_parquet('{pattern}')) t,
                           unnest(t.person.parts) as u(p)""").fetchall()
    assert {"head", "torso", "upper_arm"} <= {row[0] for row in parts}
    # a garment's attributes are a map (schema 5), as COCO's are an object
    sleeves = duckdb.sql(f"""select g.attributes['sleeve'] from (select unnest(persons) as person from read_parquet('{pattern}')) t,
                             unnest(t.person.garments) as u(g) where g.attributes['sleeve'] is not null""").fetchall()
    assert sleeves and all(row[0] in ("long", "short", "none") for row in sleeves)
    frame = pl.read_parquet(pattern)
    assert frame.height == 14 and set(frame["bundle_name"].unique()) == {"bootstrap"}
    assert frame.filter(pl.col("status") == "ok")["bundle_version"].to_list() == [load_bundle("bootstrap").version] * 9


def test_shards_written_before_schema_5_are_read_with_attribute_maps(default_run, tmp_path):
    """An output labelled before garment attributes became a map keeps its old shards; the
    ledger rewrites them (a changed input's row removed) through read_shard_rows -> write_rows."""
    import pyarrow as pa

    from fashion_ray.formats.shards import read_shard_rows, write_rows

    def replaced(struct, name, new_type):
        return pa.struct([pa.field(name, new_type) if f.name == name else f for f in struct])

    person = LABEL_SCHEMA.field("persons").type.value_type
    garment = replaced(person.field("garments").type.value_type, "attributes", pa.list_(pa.string()))
    schema_4 = pa.schema(
        [
            pa.field("persons", pa.list_(replaced(person, "garments", pa.list_(garment)))) if f.name == "persons" else f
            for f in LABEL_SCHEMA
        ]
    )
    _, out, _ = default_run
    rows = [r for r in read_rows(out) if any(p["garments"] for p in r["persons"])]
    for row in rows:
        for p in row["persons"]:
            for g in p["garments"]:
                g["attributes"] = [f"{k}:{v}" for k, v in g["attributes"]]  # schema 4's cues
    (tmp_path / "parquet").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema_4), tmp_path / "parquet" / "old.parquet")
    back = read_shard_rows(str(tmp_path), {"parquet": "parquet/old.parquet"})
    sleeves = [g["attributes"] for r in back for p in r["persons"] for g in p["garments"]]
    assert sleeves and all(isinstance(a, dict) for a in sleeves) and {"sleeve"} <= set().union(*sleeves)
    shard = write_rows(back, output=str(tmp_path / "rewritten"), info={})
    again = pq.read_table(tmp_path / "rewritten" / "parquet" / f"{shard.name}.parquet").to_pylist()
    assert [dict(g["attributes"]) for r in again for p in r["persons"] for g in p["garments"]] == sleeves


def test_coco_shards_load_and_evaluate_with_pycocotools(default_run):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, out, _ = default_run
    manifest = json.loads((out / "manifest.json").read_text())
    accessory_ids = {taxonomy.COCO_CATEGORY_ID[name] for name in taxonomy.ACCESSORIES}
    images, anns = 0, []
    for shard in manifest["shards"]:
        gt = COCO(str(out / shard["coco"]))
        images += len(gt.getImgIds())
        shard_anns = gt.loadAnns(gt.getAnnIds())
        anns += shard_anns
        assert [c["id"] for c in gt.loadCats(gt.getCatIds())] == [c["id"] for c in taxonomy.COCO_CATEGORIES]
        persons = {a["id"] for a in shard_anns if a["category_id"] == 1}
        for a in shard_anns:
            if "parent_person_id" in a:  # a garment or part: its person is in the shard
                assert a["parent_person_id"] in persons
            elif a["category_id"] != 1:  # an accessory nobody holds (a row's object), flagged like a person
                assert a["category_id"] in accessory_ids and "confident" in a
            if "segmentation" in a:
                assert gt.annToMask(a).sum() == a["area"] > 0
        if not shard_anns:
            continue
        # predictions evaluated against themselves must score AP 1.0: ids, boxes and masks consistent
        # (confident persons all have masks; candidates and accessories are boxes only)
        for iou_type, keys in (("bbox", ()), ("segm", ("segmentation",))):
            persons = [a for a in shard_anns if a["category_id"] == 1 and (iou_type == "bbox" or a["confident"])]
            truth = COCO()
            truth.dataset = dict(gt.dataset, annotations=[a for a in shard_anns if a["category_id"] != 1] + persons)
            truth.createIndex()
            dt = truth.loadRes(
                [{k: a[k] for k in ("image_id", "category_id", "bbox", "score", *keys)} for a in persons]
            )
            ev = COCOeval(truth, dt, iou_type)
            ev.params.catIds = [1]
            ev.evaluate(), ev.accumulate(), ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0)
    assert images == 9
    counts = manifest["counts"]
    assert sum(a["category_id"] == 1 for a in anns) == counts["persons"] + counts["candidates"]
    assert sum(a["category_id"] == 1 and a["confident"] for a in anns) == counts["persons"]


def test_manifest_lists_exactly_the_files_written(default_run):
    _, out, _ = default_run
    manifest = json.loads((out / "manifest.json").read_text())
    listed = (
        {s["parquet"] for s in manifest["shards"]} | {s["coco"] for s in manifest["shards"]} | set(manifest["ledger"])
    )
    on_disk = {os.path.relpath(p, out) for p in glob.glob(str(out / "*" / "*"))}
    assert listed == on_disk
    assert sum(s["rows"] for s in manifest["shards"]) == 14 and len(manifest["shards"]) >= 3  # 6 rows per shard
    assert manifest["bundle"]["name"] == "bootstrap" and manifest["schema_version"] == SCHEMA_VERSION


def test_no_credential_reaches_outputs_or_console(default_run):
    _, out, proc = default_run
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert written and not any(SECRET_MARKER.encode() in data or b"AKIAFASHIONRAYTEST" in data for data in written)
    assert SECRET_MARKER not in proc.stdout + proc.stderr


def test_stage_subset_and_rerun_replaces_without_duplicates(ray_session, default_run, tmp_path):
    corpus, out, _ = default_run
    target = tmp_path / "labels"
    run = [
        "--input",
        str(corpus / "two_people.jpg"),
        str(corpus / "zero_bytes.jpg"),
        "--output",
        str(target),
        "--stages",
        "person",
    ]
    assert job_main("label_corpus", *run) == 0
    (target / "parquet" / "part-0123456789abcdef0123.parquet").write_bytes(b"left by a crashed run")
    (target / "coco" / "keep_me.json").write_text("{}")  # a user's file beside ours: not ours to delete
    assert job_main("label_corpus", *run) == 0
    rows = read_rows(target)
    assert sorted(os.path.basename(r["uri"]) for r in rows) == ["two_people.jpg", "zero_bytes.jpg"]
    assert not (target / "parquet" / "part-0123456789abcdef0123.parquet").exists()
    assert (target / "coco" / "keep_me.json").read_text() == "{}"
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["stages"] == ["person"] and sum(p["confident"] for p in ok["persons"]) == 2
    assert all(p["garments"] == [] and p["parts"] == [] for p in ok["persons"])


def test_a_folder_that_is_not_an_output_of_ours_is_refused_and_left_alone(default_run, tmp_path):
    corpus, _, _ = default_run
    foreign = tmp_path / "reports"
    (foreign / "coco").mkdir(parents=True)
    (foreign / "coco" / "keep_me.json").write_text("{}")
    os.symlink(corpus / "two_people.jpg", foreign / "parquet")
    before = sorted(p.name for p in foreign.rglob("*"))
    proc = run_cli("--input", str(corpus / "two_people.jpg"), "--output", str(foreign), "--num-cpus", "2")
    assert (
        proc.returncode == 2
        and "holds files that are not a fashion-ray output's (coco/keep_me.json, parquet)" in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1 and sorted(p.name for p in foreign.rglob("*")) == before


def test_jpegs_decoded_in_the_person_actor_give_the_same_rows(ray_session, default_run, tmp_path, capsys):
    """--jpeg-decode person: plain JPEGs travel as files and the person actor decodes them in
    one batch (nvJPEG on a GPU, libjpeg-turbo here); PNGs, CMYK, rotated and truncated JPEGs
    are decoded by the tasks, and a JPEG the actor's decoder rejects falls back to the CPU
    decoder and its reason. Every row is the default run's."""
    corpus, out, _ = default_run
    mixed = tmp_path / "corpus"
    shutil.copytree(corpus, mixed)
    (mixed / "no_scan.jpg").write_bytes(scanless_jpeg())
    assert (
        job_main(
            "label_corpus",
            "--input",
            str(mixed),
            "--output",
            str(tmp_path / "labels"),
            "--jpeg-decode",
            "person",
            "--rows-per-shard",
            "6",
        )
        == 0
    )
    assert "15 in = 9 ok + 6 error" in capsys.readouterr().out

    def by_name(rows):  # ids, URIs and run records differ between the two runs by construction
        same = set(LABEL_SCHEMA.names) - {"id", "uri", "mtime", "run_id", "labelled_at", "ran_on"}
        return {os.path.basename(r["uri"]): {k: v for k, v in r.items() if k in same} for r in rows}

    expected, got = by_name(read_rows(out)), by_name(read_rows(tmp_path / "labels"))
    assert got.pop("no_scan.jpg")["error"] == "undecodable"
    assert got == expected


@pytest.mark.cuda
def test_cascade_on_the_gpu_with_jpegs_decoded_there(plumbing_bundle, tmp_path):
    """--device cuda: every stage's actor on the GPU with AMP, JPEGs decoded by nvJPEG in the
    person actor; every input comes out once, labelled by all three stages."""
    proc = run_cli(
        "--output", str(tmp_path / "labels"), "--bundle", plumbing_bundle, "--device", "cuda", "--jpeg-decode", "person"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(tmp_path / "labels")
    inputs = sorted(p for p in os.listdir(SAMPLE_CORPUS) if p.endswith(".jpg"))
    assert sorted(os.path.basename(r["uri"]) for r in rows) == inputs
    assert all(r["status"] == "ok" and r["stages"] == list(taxonomy.STAGES) for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stages", "person,shoes"], "unknown stages ['shoes'] (valid: person, clothing, parts, actions)"),
        (["--stages", "clothing"], "the person stage is required"),
        (["--input", "/nonexistent/uploads"], "does not exist"),
        (["--bundle", "/nonexistent/bundle"], "no bundle at '/nonexistent/bundle'"),
        (["--set", "person.gpus=1"], "bad override 'person.gpus=1'"),
        (["--set", "person.device=tpu"], "device 'tpu' is not one of: cpu, cuda"),
        (["--input", "nosuchscheme://bucket/x"], "cannot open 'nosuchscheme://bucket/x'"),
        (["--video-fps", "0"], "give --video-fps > 0 or --video-every-n >= 1"),
        (["--video-start", "20", "--video-end", "10"], "the window needs 0 <= --video-start < --video-end"),
        (["--lease-ttl", "1"], "lease_ttl_s >= 5"),
        (
            ["--score-threshold", "persn=0.3"],
            "score threshold persn=0.3: the stage must be one of person, clothing, parts",
        ),
        (["--score-threshold", "person"], "expected STAGE=VALUE, e.g. person=0.3"),
    ],
)
def test_bad_flags_give_one_line_errors(ray_session, args, message, tmp_path, capsys):
    assert job_main("label_corpus", *args, "--output", str(tmp_path / "o"), "--num-cpus", "1") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_bad_flag_leaves_the_process_as_one_line_without_a_traceback(tmp_path):
    proc = run_cli("--stages", "person,shoes", "--output", str(tmp_path / "o"), "--num-cpus", "1")
    assert proc.returncode == 2 and "unknown stages ['shoes']" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_preview_renders_every_labelled_photo(default_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from helpers import ROOT

    _, out, _ = default_run
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "preview.py"), "--labels", str(out), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 9  # every ok row; error rows have no pixels to show
    page = (tmp_path / "index.html").read_text()
    assert all(p.name in page for p in pngs) and "upper_arm" in page
    ok = {r["id"]: r for r in read_rows(out) if r["status"] == "ok"}
    for png in pngs:
        row = ok[int(png.stem)]
        assert Image.open(png).size == (row["width"], row["height"])


def test_garment_names_sit_on_their_garments_without_overlapping():
    from fashion_ray.preview import label_positions

    # far apart: each name centred on its garment
    assert label_positions([(50, 50), (150, 200)], [(40, 10), (20, 10)], 300, 300) == [(30, 45), (140, 195)]
    # twelve garments of one person around one point (the case that stacked names 135 px away):
    # no two names overlap, all inside the photo, none further from its garment than half the
    # 12-line stack (12 px a line), the anchors' own 22 px spread and a line
    anchors = [(100 + k, 120 + 2 * k) for k in range(12)]
    spots = label_positions(anchors, [(70, 10)] * 12, 200, 300)
    boxes = [(x, y, x + 70, y + 10) for x, y in spots]
    assert all(0 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 300 for x0, y0, x1, y1 in boxes)
    assert not any(
        a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for i, a in enumerate(boxes) for b in boxes[i + 1 :]
    )
    assert max(abs(y + 5 - ay) for (_, y), (_, ay) in zip(spots, anchors)) <= 6 * 12 + 22 + 12
    # at the bottom edge: moved inside, not cut off
    assert label_positions([(10, 299)], [(40, 10)], 100, 300) == [(0, 290)]
