"""The garment stage: CCP's labels remapped, sleeve lengths from landmarks, instances from a
parse map, the CCP converter on files made here, per-pixel scoring, and a garment parser
that learns on Ray Train from made-up photos and names their garments from its bundle (the
default bundle's parser labels the sample corpus in test_bootstrap_labels)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fashion_ray import evaluation, taxonomy
from fashion_ray import masks as rle
from fashion_ray.config import Device
from fashion_ray.formats import converters
from fashion_ray.models import build_stage_predictor
from fashion_ray.models.bundle import load_bundle
from fashion_ray.models.garments import garment_instances, sleeve_length
from fashion_ray.training import data
from helpers import SAMPLE_CORPUS, job_main

# Clothing Co-Parsing's label_list.mat, in its order (a fact about the dataset, no data of it)
CCP_LABELS = (
    "null accessories bag belt blazer blouse bodysuit boots bra bracelet cape cardigan clogs coat dress "
    "earrings flats glasses gloves hair hat heels hoodie intimate jacket jeans jumper leggings loafers necklace "
    "panties pants pumps purse ring romper sandals scarf shirt shoes shorts skin skirt sneakers socks "
    "stockings suit sunglasses sweater sweatshirt swimwear t-shirt tie tights top vest wallet watch wedges"
).split()


def test_every_ccp_label_maps_to_one_parse_class_or_is_dropped_on_purpose():
    assert len(CCP_LABELS) == 59 and set(taxonomy.CCP_TO_PARSE) == set(CCP_LABELS)
    targets = {v for v in taxonomy.CCP_TO_PARSE.values() if v is not None}
    assert targets == set(taxonomy.GARMENT_PARSE)  # every parse class is learnt from some CCP label
    dropped = sorted(k for k, v in taxonomy.CCP_TO_PARSE.items() if v is None)
    assert dropped == [
        "accessories",
        "bra",
        "bracelet",
        "earrings",
        "gloves",
        "intimate",
        "necklace",
        "panties",
        "ring",
        "romper",
        "socks",
        "stockings",
        "swimwear",
        "tights",
        "watch",
    ]
    assert taxonomy.CCP_TO_PARSE["jeans"] == "trousers" and taxonomy.CCP_TO_PARSE["sunglasses"] == "glasses"
    assert taxonomy.CCP_TO_PARSE["blazer"] == "outwear" and taxonomy.CCP_TO_PARSE["purse"] == "bag"
    # every garment name the stage can write has a stable COCO id and folds back to its parse class
    written = {n for names in taxonomy.SLEEVED.values() for n in names.values()} | set(taxonomy.GARMENT_PARSE[6:])
    assert written <= set(taxonomy.COCO_CATEGORY_ID) and all(
        taxonomy.PARSE_OF[n] in taxonomy.GARMENT_PARSE for n in written
    )
    ids = taxonomy.COCO_CATEGORY_ID
    assert [ids[n] for n in ("person", "short_sleeve_top", "tie", "shoes", "belt", "hat", "glasses", "scarf")] == [
        1,
        2,
        28,
        29,
        30,
        31,
        32,
        33,
    ]  # appended after 1.0's ids: none moved
    assert "skin" not in ids and "hair" not in ids  # parse classes, never garments
    from fashion_ray.models import written_labels

    written_by_parser = written_labels(load_bundle("bootstrap").stages["clothing"])
    assert set(written_by_parser) == written and "skin" not in written_by_parser  # the default bundle's parser


def _arms(visible_left=1.0, visible_right=1.0) -> np.ndarray:
    """33 landmarks of a person facing the camera, arms hanging: shoulders y=40, elbows 80, wrists 120."""
    kp = np.zeros((33, 3), np.float32)
    for (shoulder, elbow, wrist), x, vis in (((11, 13, 15), 70, visible_left), ((12, 14, 16), 30, visible_right)):
        kp[shoulder], kp[elbow], kp[wrist] = (x, 40, vis), (x, 80, vis), (x, 120, vis)
    return kp


@pytest.mark.parametrize("covered_to, expected", [(None, "none"), (70, "short"), (125, "long")])
def test_sleeve_length_from_arm_landmarks_and_the_garment_mask(covered_to, expected):
    top = np.zeros((160, 100), bool)
    top[35:110, 38:62] = True  # the torso, between the arms
    if covered_to:
        top[35:covered_to, 24:38] = True  # right sleeve
        top[35:covered_to, 62:76] = True  # left sleeve
    assert sleeve_length(top, _arms()) == expected


def test_the_arm_with_the_longer_sleeve_wins_and_hidden_arms_fall_back_to_the_default():
    top = np.zeros((160, 100), bool)
    top[35:125, 62:76] = True  # the left arm is sleeved to the wrist, the right one bare
    assert sleeve_length(top, _arms()) == "long"
    assert sleeve_length(top, _arms(visible_left=0.1)) == "none"  # only the bare right arm is seen
    assert sleeve_length(top, _arms(0.1, 0.1)) == "long" and sleeve_length(top, None, default="short") == "short"


def test_two_blobs_of_a_class_are_two_garments_named_by_their_sleeves():
    parse = np.zeros((160, 100), np.uint8)
    parse[35:110, 24:76] = taxonomy.GARMENT_PARSE.index("top")  # torso and both arms down to y=110: long sleeves
    parse[150:158, 20:40] = parse[150:158, 60:80] = taxonomy.GARMENT_PARSE.index("shoes")
    parse[5:30, 40:60] = taxonomy.GARMENT_PARSE.index("hair")  # a parse class, not a garment
    parse[0:2, 0:2] = taxonomy.GARMENT_PARSE.index("belt")  # a speck below min_pixels
    parse[60:70, 45:55] = 0  # a hole: the top is still one piece
    parse[112:122, 30:70] = taxonomy.GARMENT_PARSE.index("top")  # a second piece of the top (below a bag strap)
    confidence = np.full(parse.shape, 0.9, np.float32)
    person = _arms()
    person[27], person[28] = (70, 152, 0.9), (30, 152, 0.9)  # ankles in view: shoes can be there
    out = garment_instances(parse, confidence, person, min_pixels=20, score_threshold=0.3)
    assert out["labels"] == ["long_sleeve_top", "shoes", "shoes"]  # one top of two pieces, two shoes
    assert out["attributes"] == [["sleeve:long"], [], []]
    assert out["boxes"].tolist() == [[24, 35, 76, 122], [20, 150, 40, 158], [60, 150, 80, 158]]
    assert (
        out["masks"].shape == (3, 160, 100)
        and out["masks"][1].sum() == 160
        and not (out["masks"][1] & out["masks"][2]).any()
    )
    assert out["masks"][0].sum() == 75 * 52 - 100 + 10 * 40
    assert out["scores"].tolist() == pytest.approx([0.9] * 3)
    assert garment_instances(parse, confidence * 0.2, person, 20, 0.3)["labels"] == []  # under the score threshold
    specks = np.zeros((160, 100), np.uint8)
    specks[::4, ::4] = taxonomy.GARMENT_PARSE.index("bag")  # 1000 pixels of bag, no piece of 20
    assert garment_instances(specks, confidence, person, 20, 0.3)["labels"] == []
    # a waist-up view (no hips, ankles or feet in view): no trousers or shoes, whatever its pixels
    parse[110:150, 30:70] = taxonomy.GARMENT_PARSE.index("trousers")
    assert garment_instances(parse, confidence, _arms(), 20, 0.3)["labels"] == ["long_sleeve_top"]
    person[23], person[24] = (60, 110, 0.9), (40, 110, 0.9)
    assert garment_instances(parse, confidence, person, 20, 0.3)["labels"] == [
        "long_sleeve_top",
        "trousers",
        "shoes",
        "shoes",
    ]


def _person_figure(rng, height=120, width=80):
    """A made-up street photo and its CCP label map: hair, skin face and arms, a coloured top,
    trousers or a skirt, two shoes, on a textured background."""
    label = {
        name: CCP_LABELS.index(name) for name in ("hair", "skin", "t-shirt", "jeans", "skirt", "shoes", "necklace")
    }
    img = rng.integers(90, 160, (height, width, 3)).astype(np.uint8)
    lab = np.zeros((height, width), np.uint8)
    cx = width // 2 + int(rng.integers(-6, 7))

    def paint(name, y0, y1, x0, x1, colour):
        img[y0:y1, x0:x1] = colour
        lab[y0:y1, x0:x1] = label[name]

    paint("hair", 8, 14, cx - 7, cx + 7, (30, 20, 10))
    paint("skin", 14, 28, cx - 6, cx + 6, (225, 180, 150))
    paint("skin", 30, 70, cx - 18, cx - 13, (225, 180, 150))
    paint("skin", 30, 70, cx + 13, cx + 18, (225, 180, 150))
    paint(
        "t-shirt",
        28,
        66,
        cx - 13,
        cx + 13,
        tuple(int(v) for v in rng.integers(150, 255, 3)) if rng.random() < 0.5 else (200, 30, 30),
    )
    paint("necklace", 29, 31, cx - 3, cx + 3, (250, 250, 0))
    if rng.random() < 0.5:
        paint("jeans", 66, 108, cx - 12, cx + 12, (30, 50, 140))
    else:
        paint("skirt", 66, 90, cx - 15, cx + 15, (20, 120, 40))
        paint("skin", 90, 108, cx - 10, cx + 10, (225, 180, 150))
    paint("shoes", 108, 114, cx - 12, cx - 2, (15, 15, 15))
    paint("shoes", 108, 114, cx + 2, cx + 12, (15, 15, 15))
    return img, lab


def make_ccp(root, count: int, seed: int = 0) -> None:
    """A folder in Clothing Co-Parsing's layout, every file made here."""
    rng = np.random.default_rng(seed)
    (root / "photos").mkdir(parents=True)
    (root / "annotations" / "pixel-level").mkdir(parents=True)
    cells = np.empty((1, len(CCP_LABELS)), dtype=object)
    for k, name in enumerate(CCP_LABELS):
        cells[0, k] = np.array([name]) if name != "null" else np.array([], dtype="<U1")
    savemat(root / "label_list.mat", {"label_list": cells})
    for number in range(1, count + 1):
        img, lab = _person_figure(rng)
        Image.fromarray(img).save(root / "photos" / f"{number:04d}.jpg", quality=95)
        savemat(root / "annotations" / "pixel-level" / f"{number:04d}.mat", {"groundtruth": lab})


def test_the_onnx_parser_a_cpu_runs_parses_as_the_torch_one():
    bundle = load_bundle("bootstrap")
    spec = bundle.stages["clothing"]
    torch_spec = dataclasses.replace(spec, model_options={**spec.model_options, "cpu_onnx": False})
    parsers = [
        build_stage_predictor(
            dataclasses.replace(bundle, stages={**bundle.stages, "clothing": s}), "clothing", Device()
        )
        for s in (spec, torch_spec)
    ]
    crops = [
        np.asarray(Image.open(f"{SAMPLE_CORPUS}/{name}").convert("RGB")) for name in ("astronaut.jpg", "camera.jpg")
    ]
    onnx_parses, torch_parses = (parser.parse(crops) for parser in parsers)
    assert parsers[0].network.__qualname__.startswith("efficientnet_onnx_network")
    # and a CPU clothing actor runs it without torch: loading and parsing leave torch unimported
    alone = (
        "import sys, numpy as np; from fashion_ray.config import Device; "
        "from fashion_ray.models import build_stage_predictor, load_bundle; "
        "p = build_stage_predictor(load_bundle('bootstrap'), 'clothing', Device()); "
        "p.predict([np.zeros((160, 80, 3), np.uint8)]); print('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, check=True).stdout == "False\n"
    for (onnx_map, onnx_conf, onnx_presence), (torch_map, torch_conf, torch_presence) in zip(onnx_parses, torch_parses):
        assert (onnx_map != 0).mean() > 0.1  # the person is parsed
        assert (onnx_map == torch_map).mean() > 0.999
        np.testing.assert_allclose(onnx_conf, torch_conf, atol=1e-3)
        np.testing.assert_allclose(onnx_presence, torch_presence, atol=1e-4)


def test_ccp_converter_remaps_labels_marks_the_split_and_training_rebuilds_the_parse_map(tmp_path):
    make_ccp(tmp_path / "ccp", 10)
    doc = converters.convert_ccp(str(tmp_path / "ccp"))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    assert [i["file_name"].rsplit("/", 1)[-1] for i in doc["images"]] == [f"{n:04d}.jpg" for n in range(1, 11)]
    assert [i["split"] for i in doc["images"]] == ["val" if n % 5 == 0 else "train" for n in range(1, 11)]
    first = [a for a in doc["annotations"] if a["image_id"] == 1]
    person = next(a for a in first if names[a["category_id"]] == "person")
    assert {names[a["category_id"]] for a in first if a.get("parent_person_id") == person["id"]} >= {
        "hair",
        "skin",
        "top",
        "shoes",
        "ignore",
    }  # t-shirt -> top, necklace dropped on purpose
    shoes = next(a for a in first if names[a["category_id"]] == "shoes")
    assert shoes["area"] == 2 * 6 * 10  # one semantic region for both shoes
    # the person is every labelled pixel
    assert person["area"] == sum(a["area"] for a in first if a.get("parent_person_id") == person["id"])
    assert len(converters.convert_ccp(str(tmp_path / "ccp"), split="val")["images"]) == 2

    path = tmp_path / "ccp.json"
    path.write_text(json.dumps(doc))
    index = data.load_index(str(path))
    train, val = data.split(index.samples("garments"), 0.2, index.images)
    assert sorted(s.image_id for s in val) == [5, 10] and len(train) == 8
    ((view, target),) = data.load_batch(
        index, "garments", [train[0]], input_size=256, train=False, seed=0, epoch=0, classes=taxonomy.GARMENT_PARSE
    )
    assert view.shape == (256, 256, 3) and target["parse"].shape == (256, 256)
    values = set(np.unique(target["parse"]).tolist())
    expected = {taxonomy.GARMENT_PARSE.index(n) for n in ("background", "hair", "skin", "top", "shoes")}
    assert expected <= values and taxonomy.PARSE_IGNORE in values


def _mask_ann(ann_id, image_id, category_id, mask, **extra):
    x0, y0, x1, y1 = rle.bbox_xyxy(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle.encode(mask),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float(mask.sum()),
        "iscrowd": 0,
        **extra,
    }


def test_semantic_scoring_of_garments_and_pose_regions_on_hand_computed_maps(tmp_path):
    h, w = 20, 10
    region = lambda y0, y1: np.pad(np.ones((y1 - y0, w), bool), ((y0, h - y1), (0, 0)))  # noqa: E731
    cats = converters.PARSE_CATEGORIES
    cid = {c["name"]: c["id"] for c in cats}
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
        "categories": cats,
        "annotations": [
            _mask_ann(1, 1, cid["top"], region(0, 10)),
            _mask_ann(2, 1, cid["trousers"], region(10, 16)),
            _mask_ann(3, 1, cid["skin"], region(16, 18)),
            _mask_ann(4, 1, cid["ignore"], region(18, 20)),
        ],
    }
    ours = taxonomy.COCO_CATEGORY_ID
    dt = {
        "images": [{"id": 7, "file_name": "photos/a.jpg", "height": h, "width": w}],
        "categories": taxonomy.COCO_CATEGORIES,
        "annotations": [
            _mask_ann(1, 7, ours["long_sleeve_top"], region(0, 5), score=0.9),  # half the top
            _mask_ann(2, 7, ours["trousers"], region(8, 20), score=0.8),  # 2 rows of top, the skin and the ignored rows
            _mask_ann(3, 7, ours["upper_body_garment"], region(0, 12), score=0.2),
        ],
    }  # a pose region (regions table only)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    report = evaluation.evaluate_parse_uris(str(tmp_path / "gt.json"), str(tmp_path / "dt.json"))
    iou = report["garment_parse"]["iou"]
    # top: 50 predicted of 100 -> 50 / 100; trousers: 60 gt, 100 predicted on scored pixels (rows 8-18), 60 shared
    assert iou["top"] == pytest.approx(0.5) and iou["trousers"] == pytest.approx(60 / 100)
    assert iou["shoes"] is None and report["garment_parse"]["miou_garments"] == pytest.approx(0.55)
    # regions: the top and the pose region are upper body (rows 0-7 after the trousers win rows 8+): 80 / 100
    regions = report["garment_regions"]["iou"]
    assert regions["upper_body_garment"] == pytest.approx(80 / 100) and regions["lower_body_garment"] == pytest.approx(
        0.6
    )
    assert regions["full_body_garment"] is None and report["garment_regions"]["miou_regions"] == pytest.approx(0.7)
    assert report["counts"]["images"] == 1
    md = evaluation.parse_to_markdown(report)
    assert "| IoU | " in md and "0.550" in md


def test_semantic_evaluation_refuses_ground_truth_without_parse_classes(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": taxonomy.COCO_CATEGORIES})
    )
    assert (
        job_main(
            "evaluate",
            "--mode",
            "semantic",
            "--predictions",
            str(tmp_path / "gt.json"),
            "--ground-truth",
            str(tmp_path / "gt.json"),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no garment parse categories" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_garment_parser_learns_on_ray_train_and_its_bundle_labels_garments(ray_session, tmp_path):
    make_ccp(tmp_path / "ccp", 30)
    coco = tmp_path / "ccp.json"
    assert job_main("convert", "--format", "ccp", "--input", str(tmp_path / "ccp"), "--output", str(coco)) == 0
    out = tmp_path / "garments-v2"
    # parser v2 (the default architecture) from the packaged ImageNet weights, on 128 px views, on the tests' Ray
    assert (
        job_main(
            "train",
            "--task",
            "garments",
            "--data",
            str(coco),
            "--output",
            str(out),
            "--pretrained-backbone",
            "efficientnet-lite0",
            "--input-size",
            "128",
            "--workers",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--steps",
            "100",
            "--batch-size",
            "4",
            "--lr",
            "0.05",
            "--warmup-steps",
            "5",
            "--checkpoint-every",
            "50",
            "--storage",
            str(tmp_path / "runs"),
        )
        == 0
    )
    record = json.loads((out / "training.json").read_text())
    metrics = record["metrics"]  # held-out photos 5, 10, ... 30, scored before training and at the best checkpoint
    assert record["final_step"] == 100 and metrics["val_metric"] == metrics["val_miou_garments"]
    assert metrics["val_metric"] > max(0.3, 2 * metrics["val_initial"]), record
    bundle = load_bundle(str(out))
    clothing = bundle.stages["clothing"]
    assert clothing.architecture == "efficientnet_garment_parser" and clothing.classes == taxonomy.GARMENT_PARSE
    assert clothing.input_size == 128 and record["pretrained_backbone"] == "efficientnet-lite0"
    assert bundle.stages["person"] == load_bundle("bootstrap").stages["person"]

    # the published stage names the made-up garments of person crops (as the clothing stage cuts
    # them) of photos it never saw; no landmarks: tops take the default sleeve length. (Shoes,
    # 6 px in a 128 px view, are not learnt in 100 steps.)
    from fashion_ray.boxes import crop_box
    from fashion_ray.config import Device
    from fashion_ray.models import build_stage_predictor

    parser = build_stage_predictor(bundle, "clothing", Device())
    rng = np.random.default_rng(99)
    figures = [_person_figure(rng) for _ in range(6)]
    crops = []
    for img, lab in figures:
        x0, y0, x1, y1 = crop_box(rle.bbox_xyxy(lab > 0), img.shape[1], img.shape[0])
        crops.append(img[y0:y1, x0:x1])
    found = parser.predict(crops)
    for (_, lab), out in zip(figures, found):
        lower, other = ("trousers", "skirt") if (lab == CCP_LABELS.index("jeans")).any() else ("skirt", "trousers")
        assert lower in out["labels"] and other not in out["labels"], out["labels"]
    # every figure wears a top, and none a bag: the presence head says both (it starts at the
    # training set's shares, data.presence_prior; from 0.5 a top stayed about 0.5 after 100 steps)
    assert all("long_sleeve_top" in out["labels"] for out in found), [out["labels"] for out in found]
    assert all("bag" in out["absent"] for out in found)


def test_the_presence_head_starts_at_each_class_share_of_the_training_persons():
    top, skirt, trousers, hat = (taxonomy.GARMENT_PARSE.index(n) for n in ("top", "skirt", "trousers", "hat"))
    categories = [
        {"id": 10 + v, "name": taxonomy.GARMENT_PARSE[v], "supercategory": taxonomy.PARSE_SUPERCATEGORY}
        for v in (top, skirt, trousers)
    ]
    person = taxonomy.PERSON_CATEGORY_ID
    anns = {
        1: [{"id": 1, "category_id": person}, {"id": 2, "category_id": 10 + top, "parent_person_id": 1},
            {"id": 3, "category_id": 10 + skirt, "parent_person_id": 1},
            {"id": 4, "category_id": person}, {"id": 5, "category_id": 10 + top, "parent_person_id": 4},
            {"id": 6, "category_id": 10 + trousers, "parent_person_id": 4}],
    }  # fmt: skip
    images = {1: {"id": 1}, 2: {"id": 2, "tags": ["top", "hat"]}}
    index = data.CocoIndex(images, anns, categories)
    samples = [data.Sample(1, 1), data.Sample(1, 4), data.Sample(2, None)]
    expected = np.full(len(taxonomy.GARMENT_PARSE), 0.01)
    expected[[skirt, trousers, hat]] = 1 / 3
    expected[top] = 0.99  # all three: kept off 1, whose logit is infinite
    assert data.presence_prior(index, samples) == pytest.approx(expected)


def test_ccps_own_coco_view_is_read_through_the_same_remap():
    categories = [
        {"id": k, "name": name, "supercategory": "clothing"} for k, name in enumerate(CCP_LABELS[1:], start=1)
    ]
    values = taxonomy.parse_value_of(categories)
    by_name = {c["name"]: values[c["id"]] for c in categories}
    assert by_name["jeans"] == by_name["pants"] == taxonomy.GARMENT_PARSE.index("trousers")
    assert by_name["necklace"] == taxonomy.PARSE_IGNORE and by_name["skin"] == taxonomy.GARMENT_PARSE.index("skin")
    assert taxonomy.parse_value_of(taxonomy.COCO_CATEGORIES) == {}  # our own categories are not parse regions
