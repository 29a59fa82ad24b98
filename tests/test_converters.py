"""Converters on hand-made fixtures in each dataset's real on-disk layout: the COCO they
write loads with pycocotools, with the ids, boxes and masks the fixtures imply."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from fashion_ray import taxonomy
from fashion_ray.formats import converters

CAT = taxonomy.COCO_CATEGORY_ID


def _load(doc, tmp_path) -> COCO:
    path = tmp_path / "converted.json"
    converters.write_coco(doc, str(path))
    return COCO(str(path))


def test_deepfashion2(tmp_path):
    (tmp_path / "annos").mkdir()
    (tmp_path / "image").mkdir()
    Image.new("RGB", (100, 80)).save(tmp_path / "image" / "000001.jpg")
    (tmp_path / "annos" / "000001.json").write_text(
        json.dumps(
            {
                "source": "user",
                "pair_id": 7,
                "item2": {
                    "category_id": 8,
                    "category_name": "trousers",
                    "bounding_box": [30, 40, 60, 80],
                    "segmentation": [[30, 40, 60, 40, 60, 80, 30, 80]],
                    "landmarks": [31, 41, 2],
                    "style": 1,
                    "occlusion": 1,
                    "viewpoint": 2,
                    "scale": 2,
                    "zoom_in": 1,
                },
                "item1": {
                    "category_id": 1,
                    "category_name": "short sleeve top",
                    "bounding_box": [10, 5, 50, 45],
                    "segmentation": [[10, 5, 50, 5, 50, 45, 10, 45]],
                    "landmarks": [],
                    "style": 0,
                    "occlusion": 1,
                    "viewpoint": 2,
                    "scale": 2,
                    "zoom_in": 1,
                },
            }
        )
    )
    coco = _load(converters.convert_deepfashion2(str(tmp_path)), tmp_path)
    assert coco.imgs[1]["width"] == 100 and coco.imgs[1]["pair_id"] == 7
    top, trousers = coco.loadAnns([1, 2])  # item1 before item2, whatever the JSON order
    assert top["category_id"] == CAT["short_sleeve_top"] and top["bbox"] == [10, 5, 40, 40]
    assert trousers["category_id"] == CAT["trousers"] and trousers["landmarks"] == [31, 41, 2]
    assert coco.annToMask(top).sum() == top["area"] == pytest.approx(40 * 40, rel=0.06)


def test_fashionpedia_ids_become_one_based_and_attributes_stay(tmp_path):
    raw = {
        "images": [{"id": 11, "file_name": "a.jpg", "width": 50, "height": 40}],
        "annotations": [
            {
                "id": 1,
                "image_id": 11,
                "category_id": 0,
                "bbox": [5, 5, 20, 10],
                "area": 200,
                "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]],
                "iscrowd": 0,
                "attribute_ids": [115, 136],
            }
        ],
        "categories": [
            {"id": 0, "name": "shirt, blouse", "supercategory": "upperbody"},
            {"id": 1, "name": "top, t-shirt, sweatshirt", "supercategory": "upperbody"},
        ],
        "attributes": [{"id": 115, "name": "classic (t-shirt)"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(raw))
    doc = converters.convert_fashionpedia(str(tmp_path / "instances.json"), "s3://fp/images")
    coco = _load(doc, tmp_path)
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.cats[1]["name"] == "shirt, blouse" and ann["category_id"] == 1
    assert ann["attribute_ids"] == [115, 136] and doc["attributes"][0]["id"] == 115
    assert coco.imgs[ann["image_id"]]["file_name"] == "s3://fp/images/a.jpg"
    assert coco.annToMask(ann).sum() == 200


@pytest.mark.parametrize("layout", ["struct_array", "cell_array"])
def test_pascal_part_mat_merges_24_parts_into_6(tmp_path, layout):
    from scipy.io import savemat

    (tmp_path / "Annotations_Part").mkdir()
    h, w = 30, 20
    person = np.zeros((h, w), np.uint8)
    person[2:28, 5:15] = 1

    def part(name, rows):
        m = np.zeros((h, w), np.uint8)
        m[rows, 5:15] = 1
        return {"part_name": name, "mask": m}

    parts = np.empty((1, 4), dtype=object)
    parts[0, :] = [
        part("hair", slice(2, 4)),
        part("nose", slice(4, 6)),
        part("torso", slice(6, 16)),
        part("lfoot", slice(26, 28)),
    ]
    chair = {
        "class": "chair",
        "class_ind": 9,
        "mask": np.ones((h, w), np.uint8),
        "parts": np.empty((0, 0), dtype=object),
    }
    people = {"class": "person", "class_ind": 15, "mask": person, "parts": parts}
    if layout == "struct_array":  # how the released annotations store objects
        objects = np.zeros((1, 2), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
        for k, obj in enumerate((chair, people)):
            for key, value in obj.items():
                objects[0, k][key] = value
    else:
        objects = np.empty((1, 2), dtype=object)
        objects[0, :] = [chair, people]
    savemat(tmp_path / "Annotations_Part" / "2008_000001.mat", {"anno": {"imname": "2008_000001", "objects": objects}})
    coco = _load(converters.convert_pascal_part(str(tmp_path)), tmp_path)
    anns = coco.loadAnns(coco.getAnnIds())
    person_ann = [a for a in anns if a["category_id"] == CAT["person"]]
    assert len(person_ann) == 1 and person_ann[0]["bbox"] == [5, 2, 10, 26]  # the chair is not a person
    by_cat = {a["category_id"]: a for a in anns if a["category_id"] != CAT["person"]}
    assert set(by_cat) == {CAT["head"], CAT["torso"], CAT["lower_leg"]}
    assert by_cat[CAT["head"]]["area"] == 4 * 10  # hair + nose rows merged into head
    assert all(a["parent_person_id"] == person_ann[0]["id"] for a in by_cat.values())


def test_seed004_numbering_is_remapped(tmp_path):
    (tmp_path / "gt_masks").mkdir()
    m = np.zeros((6, 4), np.int64)
    m[0] = 4  # their head
    m[1:3] = 2  # torso
    m[3] = 6  # their up_hand -> our upper_arm
    m[4] = 5  # up_leg
    m[5] = 3  # their low_leg -> our lower_leg
    np.save(tmp_path / "gt_masks" / "img7.npy", m)
    coco = _load(converters.convert_seed004(str(tmp_path)), tmp_path)
    areas = {coco.cats[a["category_id"]]["name"]: a["area"] for a in coco.loadAnns(coco.getAnnIds())}
    assert areas == {"person": 24, "head": 4, "torso": 8, "upper_arm": 4, "upper_leg": 4, "lower_leg": 4}


def test_penn_fudan_instances(tmp_path):
    (tmp_path / "PedMasks").mkdir()
    ids = np.zeros((40, 30), np.uint8)
    ids[5:35, 2:10] = 1
    ids[10:30, 15:28] = 2
    Image.fromarray(ids).save(tmp_path / "PedMasks" / "FudanPed00001_mask.png")
    coco = _load(converters.convert_penn_fudan(str(tmp_path)), tmp_path)
    anns = coco.loadAnns(coco.getAnnIds())
    assert [a["bbox"] for a in anns] == [[2, 5, 8, 30], [15, 10, 13, 20]]
    assert coco.imgs[1]["file_name"].endswith("PNGImages/FudanPed00001.png")
    assert [coco.annToMask(a).sum() for a in anns] == [240, 260]


def test_own_labels_become_a_training_set(default_run, tmp_path):
    _, out, _ = default_run
    coco = _load(converters.convert_labels(str(out)), tmp_path)
    assert len(coco.getImgIds()) == 9  # ok rows only
    assert len(coco.getAnnIds(catIds=[CAT["person"]])) == 5


def test_convert_cli(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    (tmp_path / "PedMasks").mkdir()
    ids = np.zeros((20, 20), np.uint8)
    ids[2:18, 4:9] = 1
    Image.fromarray(ids).save(tmp_path / "PedMasks" / "PennPed00001_mask.png")
    job = os.path.join(ROOT, "jobs", "convert.py")
    ok = subprocess.run(
        [
            sys.executable,
            job,
            "--format",
            "penn-fudan",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "out" / "pf.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "1 images, 1 annotations" in ok.stdout and COCO(str(tmp_path / "out" / "pf.json")).anns[1]["area"] == 80
    bad = subprocess.run(
        [sys.executable, job, "--format", "coco-ish", "--input", "x", "--output", "y"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "invalid choice: 'coco-ish'" in bad.stderr and "deepfashion2" in bad.stderr
