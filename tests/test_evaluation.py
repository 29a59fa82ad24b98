"""Evaluation against hand-computed cases and against raw pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fashion_ray import evaluation, taxonomy
from fashion_ray import masks as rle

PERSON = taxonomy.COCO_CATEGORY_ID["person"]
HEAD, TORSO = taxonomy.COCO_CATEGORY_ID["head"], taxonomy.COCO_CATEGORY_ID["torso"]


def _doc(anns, size=(40, 40), n_images=1):
    images = [
        {"id": i + 1, "file_name": f"img{i + 1}.jpg", "height": size[0], "width": size[1]} for i in range(n_images)
    ]
    return {
        "images": images,
        "annotations": [{"id": k + 1, "iscrowd": 0, "score": 1.0, **a} for k, a in enumerate(anns)],
        "categories": taxonomy.COCO_CATEGORIES,
    }


def _box_ann(cat, x, y, w, h, image_id=1, score=1.0):
    return {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": float(w * h), "score": score}


def _mask_ann(cat, mask, image_id=1, score=1.0):
    m = rle.encode(mask)
    x0, y0, x1, y1 = rle.bbox_xyxy(mask)
    return {
        "image_id": image_id,
        "category_id": cat,
        "segmentation": m,
        "area": float(mask.sum()),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "score": score,
    }


def test_perfect_prediction_scores_one():
    body = np.zeros((40, 40), bool)
    body[5:35, 10:30] = True
    head, torso = body.copy(), body.copy()
    head[15:] = False
    torso[:15] = False
    gt = _doc([_mask_ann(PERSON, body), _mask_ann(HEAD, head), _mask_ann(TORSO, torso)])
    report = evaluation.evaluate(gt, copy.deepcopy(gt))
    assert report["person_bbox"]["stats"][0] == pytest.approx(1.0)
    assert report["parts"]["iou"]["head"] == report["parts"]["iou"]["torso"] == pytest.approx(1.0)
    assert report["parts"]["iou"]["upper_arm"] is None  # not in either: undefined, not 0
    assert report["parts"]["levels"]["upper_body"] == pytest.approx(1.0)
    counts = report["counts"]
    assert counts.pop("at_score") == {t: {"matched": 1, "extra": 0} for t in ("0.3", "0.4", "0.5", "0.6", "0.7")}
    assert counts == {
        "images": 1,
        "error_rows": 0,
        "persons_gt": 1,
        "persons_matched": 1,
        "persons_missed": 0,
        "persons_extra": 0,
    }


def test_shifted_box_gives_the_hand_computed_iou():
    # 10x10 boxes shifted by 2 px: IoU = 80 / 120 = 0.667 -> passes thresholds .50 .55 .60 .65 of ten
    gt = _doc([_box_ann(PERSON, 0, 0, 10, 10)])
    dt = _doc([_box_ann(PERSON, 2, 0, 10, 10)])
    stats = evaluation.evaluate(gt, dt)["person_bbox"]["stats"]
    assert stats[0] == pytest.approx(0.4)  # AP@[.5:.95]
    assert stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(0.0)  # AP50, AP75
    assert stats[3] == pytest.approx(0.4) and stats[4] is None and stats[5] is None  # only a small object


def test_empty_predictions_ground_truth_and_missing_categories():
    gt = _doc([_box_ann(PERSON, 0, 0, 10, 10)])
    report = evaluation.evaluate(gt, _doc([]))
    stats = report["person_bbox"]["stats"]
    assert stats[0] == stats[1] == stats[3] == stats[8] == 0.0  # AP, AP50, AP small, AR@100
    assert stats[4] is None and stats[5] is None  # no medium or large person to find
    assert report["counts"]["persons_missed"] == 1
    assert report["garment_bbox"]["stats"] == [None] * 12  # nothing to find: undefined
    shorts, skirt = taxonomy.COCO_CATEGORY_ID["shorts"], taxonomy.COCO_CATEGORY_ID["skirt"]
    gt = _doc([_box_ann(shorts, 0, 0, 20, 20)])
    dt = _doc([_box_ann(skirt, 0, 0, 20, 20)])
    report = evaluation.evaluate(gt, dt)
    assert report["garment_bbox"]["per_category"]["shorts"] == pytest.approx(0.0)
    assert report["any_garment_bbox"]["stats"][0] == pytest.approx(1.0)  # class-agnostic: same box


def test_part_iou_by_hand():
    gt_map = np.zeros((4, 4), np.uint8)
    gt_map[:2], gt_map[2:] = 1, 2  # head over torso
    dt_map = np.full((4, 4), 2, np.uint8)
    dt_map[0] = 1  # the prediction gives the second head row to the torso
    ev = evaluation.PartsEvaluator()
    ev.add_maps(gt_map, dt_map)
    result = ev.evaluate()
    assert result["iou"]["head"] == pytest.approx(4 / 8)
    assert result["iou"]["torso"] == pytest.approx(8 / 12)
    assert result["miou_parts"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["levels"]["upper_body"] == pytest.approx(1.0) and result["levels"]["lower_body"] is None


def test_matches_raw_pycocotools():
    rng = np.random.default_rng(0)
    gt_anns, dt_anns = [], []
    for image_id in range(1, 6):
        for _ in range(3):
            x, y, w, h = (float(v) for v in rng.integers(0, 60, 2).tolist() + rng.integers(8, 40, 2).tolist())
            gt_anns.append(_box_ann(PERSON, x, y, w, h, image_id))
            jitter = rng.normal(0, 3, 4)
            dt_anns.append(
                _box_ann(
                    PERSON, x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3], image_id, float(rng.random())
                )
            )
    gt, dt = _doc(gt_anns, (100, 100), 5), _doc(dt_anns, (100, 100), 5)
    ours = evaluation.evaluate(gt, dt)["person_bbox"]["stats"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in dt_anns])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours == pytest.approx([None if s < 0 else s for s in ev.stats])
    assert 0.2 < ours[0] < 1.0  # a real, non-trivial case


def test_streaming_buckets_equal_one_pass(tmp_path):
    """evaluate_uris spills to buckets by image id; tables must equal the single in-memory pass."""
    import json

    rng = np.random.default_rng(1)
    gt_anns, dt_anns = [], []
    for image_id in range(1, 13):
        for _ in range(2):
            body = np.zeros((60, 60), bool)
            x, y = rng.integers(0, 30, 2)
            body[y : y + rng.integers(10, 30), x : x + rng.integers(10, 30)] = True
            gt_anns.append(_mask_ann(PERSON, body, image_id))
            shifted = np.roll(body, int(rng.integers(-3, 4)), axis=1)
            dt_anns.append(_mask_ann(PERSON, shifted, image_id, float(rng.random())))
    gt, dt = _doc(gt_anns, (60, 60), 12), _doc(dt_anns, (60, 60), 12)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    one = evaluation.evaluate(gt, dt)
    streamed = evaluation.evaluate_uris(str(tmp_path / "gt.json"), str(tmp_path / "dt.json"), images_per_bucket=5)
    for table in ("person_bbox", "any_garment_bbox"):
        assert streamed[table]["stats"] == pytest.approx(one[table]["stats"])
    assert streamed["counts"] == one["counts"] and streamed["counts"]["images"] == 12
    assert streamed["parts"] == one["parts"]
    assert 0.3 < one["person_bbox"]["stats"][0] < 1.0


def test_standard_coco_ground_truth_is_matched_by_name(tmp_path):
    # COCO's own ids: person 1, bicycle 2 (our 2 is a garment), handbag 31 (our "bag");
    # a crowd region of people is neither to be found nor a place for false persons
    gt = {
        "images": [{"id": 7, "file_name": "street.jpg", "height": 100, "width": 100}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 31, "name": "handbag"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 50], "area": 1000.0, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [40, 40, 30, 30], "area": 900.0, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 31, "bbox": [25, 35, 8, 8], "area": 64.0, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [60, 0, 40, 30], "area": 1200.0, "iscrowd": 1},
        ],
    }
    bag, garment = taxonomy.COCO_CATEGORY_ID["bag"], taxonomy.COCO_CATEGORY_ID["short_sleeve_top"]
    dt = _doc(
        [
            _box_ann(PERSON, 10, 10, 20, 50, image_id=7),
            _box_ann(PERSON, 70, 5, 10, 20, image_id=7, score=0.9),
            _box_ann(bag, 25, 35, 8, 8, image_id=7),
            _box_ann(garment, 40, 40, 30, 30, image_id=7),
        ]
    )
    dt["images"] = [{"id": 7, "file_name": "/photos/street.jpg", "height": 100, "width": 100}]
    report = evaluation.evaluate(gt, dt)
    # the box inside the crowd region is ignored, not false: person AP stays 1
    assert report["person_bbox"]["stats"][0] == pytest.approx(1.0) and report["person_bbox"]["gt"] == 2
    assert report["counts"]["persons_gt"] == 1 and report["counts"]["persons_extra"] == 1
    # plain counts have no crowd rule: the box in the crowd region (score 0.9) is extra at 0.7 too
    assert report["counts"]["at_score"]["0.7"] == {"matched": 1, "extra": 1}
    assert report["accessory_bbox"]["per_category"] == {"bag": pytest.approx(1.0)}
    # the bicycle is not scored as a garment: no garment ground truth, the table is not scored
    assert report["skipped_ground_truth"] == {"bicycle": 1} and report["garment_bbox"]["gt"] == 0
    markdown = evaluation.to_markdown(report)
    assert "## Person boxes" in markdown and "## Accessory boxes" in markdown
    assert "## Garment" not in markdown and "bicycle 1" in markdown
    assert "Body parts (IoU)" not in markdown and "Body parts." in markdown


def test_pr_curves_and_worst_cases_are_written(tmp_path):
    from PIL import Image

    from fashion_ray.evaluation import pictures as evaluation_pictures

    Image.new("RGB", (100, 100), (90, 120, 60)).save(tmp_path / "img1.jpg")
    gt = _doc([_box_ann(PERSON, 10, 10, 20, 50), _box_ann(PERSON, 60, 10, 20, 50)], size=(100, 100))
    dt = _doc(
        [_box_ann(PERSON, 10, 10, 20, 50, score=0.9), _box_ann(PERSON, 40, 70, 10, 10, score=0.8)], size=(100, 100)
    )
    report = evaluation.evaluate(gt, dt)
    # ranked: a hit then a false positive: precision 1 up to recall 0.5, never past it
    curve = report["person_bbox"]["pr_curves"]["person"]["0.50"]
    assert curve[50] == pytest.approx(1.0) and curve[51] == 0.0
    worst = report["person_bbox"]["worst"]
    assert [(w["kind"], w["box"]) for w in worst] == [("miss", [60, 10, 20, 50]), ("false positive", [40, 70, 10, 10])]
    for case in worst:
        case["file_name"] = "img1.jpg"
    written = evaluation_pictures.write_pictures(report, evaluation.TABLES, str(tmp_path / "eval"), str(tmp_path))
    assert written == ["pr_person_bbox.png", "worst.html"]
    assert (tmp_path / "eval" / "pr_person_bbox.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "eval" / "worst.html").read_text()
    assert page.count("<figure>") == 2 and 'src="worst/person_bbox_0.jpg"' in page
    assert Image.open(tmp_path / "eval" / "worst" / "person_bbox_1.jpg").size[0] <= evaluation_pictures.CROP_SIDE


def test_worst_case_photos_are_found_from_the_paths_a_run_records(tmp_path, monkeypatch):
    """A synthetic set made with a relative --output records `out/synth/images/x.jpg`; a
    dataset's own COCO names photos under its folder (`PNGImages/x.png`): both are read."""
    from PIL import Image

    from fashion_ray.evaluation import pictures as evaluation_pictures

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "synth" / "images").mkdir(parents=True)
    Image.new("RGB", (100, 100), (90, 120, 60)).save(tmp_path / "out" / "synth" / "images" / "a.jpg")
    assert evaluation_pictures.photo_path("out/synth/images/a.jpg", "out/synth") == "out/synth/images/a.jpg"
    assert evaluation_pictures.photo_path("images/a.jpg", "out/synth").endswith("out/synth/images/a.jpg")
    assert evaluation_pictures.photo_path("s3://bucket/a.jpg", "out/synth") == "s3://bucket/a.jpg"
    gt = _doc([_box_ann(PERSON, 60, 10, 20, 50)], size=(100, 100))
    report = evaluation.evaluate(gt, _doc([], size=(100, 100)))
    for name in ("out/synth/images/a.jpg", "images/a.jpg"):
        report["person_bbox"]["worst"][0]["file_name"] = name
        evaluation_pictures.write_pictures(report, evaluation.TABLES, "eval", "out/synth")
        page = (tmp_path / "eval" / "worst.html").read_text()
        assert "not readable" not in page and 'src="worst/person_bbox_0.jpg"' in page, name
