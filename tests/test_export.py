"""A run's outputs in the real tools: FiftyOne imports the COCO shards and the exported dataset,
Label Studio's converter reads the exported tasks back, CVAT's COCO 1.0 shape, YOLO labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from fashion_ray import taxonomy
from fashion_ray.export import export_run
from helpers import ROOT, read_rows


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """FiftyOne with its database in a temp folder (its mongod is a child process on loopback)."""
    home = tmp_path_factory.mktemp("fiftyone")
    saved = os.environ.get("HOME")
    os.environ.update(
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
        FIFTYONE_DATABASE_DIR=str(home / "db"),
        HOME=str(home),
    )
    import fiftyone

    yield fiftyone
    if saved is not None:
        os.environ["HOME"] = saved


def _expected(out) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = read_rows(out)
    garments = [g for r in rows for p in r["persons"] for g in p["garments"]]
    return {"manifest": manifest, "rows": rows, "garments": garments, "ok": [r for r in rows if r["status"] == "ok"]}


@pytest.mark.external
def test_fiftyone_imports_every_coco_shard_with_masks_and_attributes(default_run, fo):
    _, out, _ = default_run
    want = _expected(out)
    c = want["manifest"]["counts"]
    images = instances = masks = 0
    attributes = set()
    for k, shard in enumerate(want["manifest"]["shards"]):
        ds = fo.Dataset.from_dir(
            dataset_type=fo.types.COCODetectionDataset,
            labels_path=str(out / shard["coco"]),
            label_types=["segmentations"],
            data_path="/",
            name=f"coco-shard-{k}",
        )
        images += len(ds)
        for sample in ds:
            for det in sample.ground_truth.detections if sample.ground_truth else []:
                instances += 1
                masks += det.mask is not None
                attributes |= {k for k in ("sleeve", "leg", "parent_person_id", "side") if det.has_field(k)}
    # FiftyOne's segmentations import reads annotations with masks: accessories the person
    # detector found and the garment parser did not outline are boxes only
    boxes_only = sum(g["mask"] is None for g in want["garments"])
    assert images == c["ok"] and instances == c["persons"] + c["garments"] - boxes_only + c["parts"] == masks
    assert c["garments"] and {"sleeve", "parent_person_id", "side"} <= attributes


@pytest.mark.external
def test_export_to_a_persistent_fiftyone_dataset(default_run, fo, tmp_path):
    _, out, _ = default_run
    want = _expected(out)
    c = want["manifest"]["counts"]
    summary = export_run(str(out), "fiftyone", "fashion-ray-test", media_dir=str(tmp_path / "media"))
    ds = fo.load_dataset("fashion-ray-test")
    assert ds.persistent and len(ds) == summary["samples"] == c["rows"]
    assert len(ds.match_tags("error")) == c["error"] and set(ds.match_tags("error").values("error")) == set(
        want["manifest"]["errors_by_reason"]
    )
    # candidates under the person threshold come too, to filter on (confidence, `confident`)
    assert ds.count("persons.detections") == c["persons"] + c["candidates"] and c["candidates"] > 0
    assert ds.count_values("persons.detections.confident") == {True: c["persons"], False: c["candidates"]}
    assert ds.count("garments.detections") == c["garments"]
    assert ds.count("objects.detections") == summary["objects"] + summary["object_candidates"]
    assert (summary["objects"], summary["object_candidates"]) == (c["objects"], c["object_candidates"])
    assert ds.count("parts.detections") == c["parts"]
    # a person's actions ride on its detection: names and scores, best first (the cameraman stands)
    assert sorted(a for v in ds.values("persons.detections.actions", unwind=True) if v for a in v) == sorted(
        a for name, n in c["actions"].items() for a in [name] * n
    )
    assert all(m is not None for m in ds.values("parts.detections.mask", unwind=True))
    sleeves = [g["attributes"] for g in want["garments"]]
    assert sorted(v for v in ds.values("garments.detections.sleeve", unwind=True) if v is not None) == sorted(
        dict(s)["sleeve"] for s in sleeves if "sleeve" in dict(s)
    )
    with pytest.raises(ValueError, match="--overwrite"):
        export_run(str(out), "fiftyone", "fashion-ray-test")


def test_labelstudio_tasks_round_trip_through_its_converter(default_run, tmp_path):
    from label_studio_converter import Converter

    _, out, _ = default_run
    want = _expected(out)
    summary = export_run(str(out), "labelstudio", str(tmp_path / "ls"))
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert summary["tasks"] == len(tasks) == len(want["ok"])
    for k, task in enumerate(tasks, start=1):  # what a reviewer who accepts every prediction submits
        task |= {"id": k, "annotations": [{"id": k, "result": task["predictions"][0]["result"]}]}
    (tmp_path / "accepted.json").write_text(json.dumps(tasks))
    converter = Converter(
        (tmp_path / "ls" / "label_config.xml").read_text(), project_dir=None, download_resources=False
    )
    converter.convert_to_coco(str(tmp_path / "accepted.json"), str(tmp_path / "back"), is_dir=False)
    back = json.loads((tmp_path / "back" / "result.json").read_text())
    names = {c["id"]: c["name"] for c in back["categories"]}
    rectangles = sorted(
        (names[a["category_id"]], *(round(v, 1) for v in a["bbox"]))
        for a in back["annotations"]
        if not a["segmentation"]
    )
    ours = _coco_of(out, candidates=False)  # pre-annotations are the labels
    ours_names = {c["id"]: c["name"] for c in ours["categories"]}
    assert rectangles == sorted(
        (ours_names[a["category_id"]], *(round(v, 1) for v in a["bbox"])) for a in ours["annotations"]
    )
    outlines = [a for a in back["annotations"] if a["segmentation"]]  # a polygon (or several) per mask
    assert len({(a["image_id"], names[a["category_id"]]) for a in outlines}) >= 1 and len(outlines) >= sum(
        "segmentation" in a for a in ours["annotations"]
    )


def _coco_of(out, candidates: bool = True) -> dict:
    """The run's COCO shards in one document; without the candidate persons if asked."""
    images, anns = [], []
    for shard in json.loads((out / "manifest.json").read_text())["shards"]:
        doc = json.loads((out / shard["coco"]).read_text())
        images += doc["images"]
        anns += [a for a in doc["annotations"] if candidates or a.get("confident") is not False]
    return {"images": images, "annotations": anns, "categories": taxonomy.COCO_CATEGORIES}


def test_cvat_coco_1_0_layout(default_run, tmp_path):
    _, out, _ = default_run
    want = _expected(out)
    export_run(str(out), "cvat", str(tmp_path / "cvat"))
    path = tmp_path / "cvat" / "annotations" / "instances_default.json"
    coco = COCO(str(path))
    ours = _coco_of(out)
    assert len(coco.imgs) == len(want["ok"]) and len(coco.anns) == len(ours["annotations"])
    assert all("/" not in img["file_name"] for img in coco.imgs.values())  # CVAT matches names to the task's images
    for ann in coco.anns.values():  # CVAT reads attributes as name -> scalar
        assert isinstance(ann["attributes"], dict)
        assert all(isinstance(v, (str, int, float, bool)) for v in ann["attributes"].values())
    garments = [
        a
        for a in coco.anns.values()
        if a["category_id"] in {c["id"] for c in taxonomy.COCO_CATEGORIES if c["supercategory"] == "garment"}
    ]
    assert garments and all(a["attributes"]["parent_person_id"] in coco.anns for a in garments)
    # a person says whether it is a label or a candidate under the threshold; candidates own nothing
    persons = [a for a in coco.anns.values() if a["category_id"] == taxonomy.PERSON_CATEGORY_ID]
    assert {a["attributes"]["confident"] for a in persons} == {True, False}
    candidates = {a["id"] for a in persons if not a["attributes"]["confident"]}
    assert all(a["attributes"].get("parent_person_id") not in candidates for a in coco.anns.values())


def test_yolo_labels_match_the_coco_boxes(default_run, tmp_path):
    _, out, _ = default_run
    summary = export_run(str(out), "yolo", str(tmp_path / "yolo"))
    ours = _coco_of(out, candidates=False)  # training labels are the confident persons
    sizes = {i["id"]: (i["width"], i["height"]) for i in ours["images"]}
    expected = sorted((a["category_id"] - 1, a["bbox"][0] / sizes[a["image_id"]][0]) for a in ours["annotations"])
    got = []
    for name in os.listdir(tmp_path / "yolo" / "labels"):
        for line in (tmp_path / "yolo" / "labels" / name).read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            assert 0 <= float(cx) <= 1 and 0 <= float(cy) <= 1 and 0 < float(w) <= 1 and 0 < float(h) <= 1
            got.append((int(cls), float(cx) - float(w) / 2))
    assert summary["boxes"] == len(ours["annotations"]) == len(got)
    # YOLO files hold 6 decimals: the left edges agree to that (not to a rounding of both sides)
    assert all(c == k and abs(x - y) < 1e-5 for (c, x), (k, y) in zip(sorted(got), expected))
    assert len(os.listdir(tmp_path / "yolo" / "images")) == summary["images"] == len(ours["images"])


def test_export_flags_give_one_line_errors(tmp_path):
    for args, message in (
        (
            ["--run", str(tmp_path), "--format", "pdf", "--output", str(tmp_path)],
            "is not one of: fiftyone, cvat, labelstudio, yolo",
        ),
        (["--run", str(tmp_path), "--format", "cvat", "--output", str(tmp_path / "x")], "not a labelling run"),
    ):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "jobs", "export.py"), *args], capture_output=True, text=True
        )
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
