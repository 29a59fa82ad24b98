"""Garments v2 on hand-made inputs: the consistency rules on parse maps, the presence gate,
the collapsed-pose check, one carried object as one garment, framing crops that keep photo
and labels aligned, and the parser v2 network's shapes (no Ray, no real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_garments import make_ccp

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.formats import converters
from fashion_ray.models.blazepose import collapsed_pose
from fashion_ray.models.garments import GarmentParser, garment_instances, misplaced, settle_pieces
from fashion_ray.stages import attach_garments
from fashion_ray.training import data

V = {name: k for k, name in enumerate(taxonomy.GARMENT_PARSE)}


def _body(visible=1.0) -> np.ndarray:
    """33 landmarks of a person standing, facing the camera, in a 100 x 200 crop: eyes y=20,
    mouth 30 (a face unit of 10 px), shoulders 45 (x 30..70), hips 110, ankles 190."""
    kp = np.zeros((33, 3), np.float32)
    points = {
        0: (50, 25),
        2: (45, 20),
        5: (55, 20),
        7: (40, 22),
        8: (60, 22),
        9: (47, 30),
        10: (53, 30),
        11: (70, 45),
        12: (30, 45),
        13: (74, 78),
        14: (26, 78),
        15: (76, 108),
        16: (24, 108),
        23: (60, 110),
        24: (40, 110),
        25: (60, 150),
        26: (40, 150),
        27: (60, 190),
        28: (40, 190),
    }
    for k, (x, y) in points.items():
        kp[k] = (x, y, visible)
    return kp


def _region(y0, y1, x0=35, x1=65, shape=(200, 100)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(
    "name, rows, cols, reason",
    [
        ("hat", (0, 8), (38, 62), None),  # on top of the head
        ("hat", (8, 16), (38, 62), "a hat on the face or forehead"),  # the forehead, below the head's top
        ("hat", (15, 35), (38, 62), "a hat on the face or forehead"),  # the face
        ("scarf", (40, 60), (35, 65), None),  # round the neck and down the chest
        ("scarf", (22, 36), (40, 60), "a scarf on the face or chin"),
        ("glasses", (17, 23), (42, 58), None),
        ("glasses", (40, 46), (42, 58), "glasses away from the eyes"),  # a strip at the collar
        ("trousers", (110, 190), (38, 62), None),
        ("trousers", (50, 70), (38, 62), "legwear above the waist"),  # the chest
        ("skirt", (100, 140), (35, 65), None),
    ],
)
def test_the_persons_own_landmarks_place_each_garment(name, rows, cols, reason):
    assert misplaced(name, _region(*rows, *cols), _body()) == reason
    assert misplaced(name, _region(*rows, *cols), None) is None  # no landmarks: nothing said against it
    if reason:  # hidden landmarks say nothing either
        assert misplaced(name, _region(*rows, *cols), _body(visible=0.1)) is None


def test_a_misplaced_garment_is_not_written_and_the_rest_are():
    parse = np.zeros((200, 100), np.uint8)
    parse[8:16, 38:62] = V["hat"]  # a forehead
    parse[40:105, 30:70] = V["top"]
    parse[110:185, 38:62] = V["trousers"]
    parse[185:195, 36:64] = V["shoes"]
    out = garment_instances(parse, np.full(parse.shape, 0.9, np.float32), _body(), 20, 0.3)
    assert [taxonomy.PARSE_OF[label] for label in out["labels"]] == ["top", "trousers", "shoes"]


def test_one_outfit_dress_or_skirt_and_a_dress_above_the_hips_is_a_top():
    parse = np.zeros((200, 100), np.uint8)
    parse[45:100, 30:70] = V["dress"]
    parse[100:140, 30:70] = V["skirt"]  # the dress's skirt read as a skirt: smaller, so it is dress
    settled = settle_pieces(parse, _body())
    assert (settled[45:140, 30:70] == V["dress"]).all()
    parse[45:100, 30:70] = V["top"]
    parse[60:70, 40:60] = V["dress"]  # a speck of dress in a top above a skirt: skirt wins the pair
    assert not (settle_pieces(parse, _body()) == V["dress"]).any()
    blouse = np.zeros((200, 100), np.uint8)
    blouse[45:100, 30:70] = V["dress"]  # ends at y=100, above the hips (110): a top
    assert set(np.unique(settle_pieces(blouse, _body()))) == {0, V["top"]}
    assert set(np.unique(settle_pieces(blouse, None))) == {0, V["dress"]}  # without landmarks it stays


def _network(presence: dict[str, float]):
    """A stand-in model (not ours): every view is top above trousers, at 0.9, with the given presences."""

    def run(views: np.ndarray):
        n, h, w = views.shape[:3]
        prob = np.full((n, len(taxonomy.GARMENT_PARSE), h, w), 0.1 / (len(taxonomy.GARMENT_PARSE) - 1), np.float32)
        prob[:, V["top"], : h // 2] = 0.9
        prob[:, V["trousers"], h // 2 :] = 0.9
        pres = np.array([[presence.get(c, 0.0) for c in taxonomy.GARMENT_PARSE]] * n, np.float32)
        return prob, pres

    return run


def test_the_presence_gate_writes_only_classes_the_person_wears():
    crop = np.zeros((120, 60, 3), np.uint8)
    worn = GarmentParser(_network({"top": 0.9, "trousers": 0.8}), (96, 64), presence_threshold=0.5).predict([crop])[0]
    assert [taxonomy.PARSE_OF[label] for label in worn["labels"]] == ["top", "trousers"]
    gated = GarmentParser(_network({"top": 0.9, "trousers": 0.2}), (96, 64), presence_threshold=0.5).predict([crop])[0]
    assert [taxonomy.PARSE_OF[label] for label in gated["labels"]] == ["top"]
    assert GarmentParser(_network({}), (96, 64), presence_threshold=0.0).predict([crop])[0]["labels"] != []


def test_collapsed_poses_lose_their_landmarks_and_sound_ones_keep_them():
    assert collapsed_pose(_body()) is None
    squeezed = _body()
    squeezed[11, :2], squeezed[12, :2] = (54, 24), (46, 24)  # shoulders inside the face
    assert collapsed_pose(squeezed) == "shoulders inside the face"
    folded = _body()
    folded[23, :2], folded[24, :2] = (60, 50), (40, 50)  # hips at the collar
    assert collapsed_pose(folded) == "hips at the shoulders"
    inverted = _body()
    inverted[23, 1] = inverted[24, 1] = 0  # hips above the shoulders, head upright
    inverted[0, 1] = 25
    assert collapsed_pose(inverted) in ("hips at the shoulders", "hips above the shoulders under an upright head")
    stretched = _body()
    stretched[27, 1] = 400  # a shin four times the torso
    assert collapsed_pose(stretched) == "a limb longer than the body allows"
    hidden = _body(visible=0.1)
    hidden[11], hidden[12] = (54, 24, 0.1), (46, 24, 0.1)
    assert collapsed_pose(hidden) is None  # what is not seen is not judged


def test_the_detectors_backpack_and_the_parsers_bag_on_one_object_are_one_garment():
    h, w = 200, 100
    person = {
        "box": [0, 0, 100, 200],
        "garments": [
            {
                "garment_id": 0,
                "category": "backpack",
                "category_id": taxonomy.COCO_CATEGORY_ID["backpack"],
                "score": 0.7,
                "box": [60.0, 80.0, 90.0, 130.0],
                "mask": None,
                "attributes": [],
            }
        ],
    }
    bag = np.zeros((h, w), bool)
    bag[82:128, 62:88] = True
    other = np.zeros((h, w), bool)
    other[150:160, 5:20] = True  # a second bag, far from the backpack
    det = {
        "labels": ["bag", "bag"],
        "scores": np.array([0.8, 0.6]),
        "boxes": np.array([[62, 82, 88, 128], [5, 150, 20, 160]]),
        "masks": np.stack([bag, other]),
    }
    attach_garments(person, det, (0, 0, w, h), h, w)
    assert [g["category"] for g in person["garments"]] == ["backpack", "bag"]
    assert (rle.decode(person["garments"][0]["mask"]) == bag).all()  # the detector's name, the parser's mask
    # the confirmed backpack keeps the detector's score; the bag only the parser saw ranks under
    # the detector's confident accessories (0.6 x 0.3)
    assert [g["score"] for g in person["garments"]] == pytest.approx([0.7, 0.18])
    # a parser that says the person wears no bag and no tie takes the detector's ones away too
    person = {
        "box": [0, 0, 100, 200],
        "garments": [
            {
                "garment_id": k,
                "category": c,
                "category_id": taxonomy.COCO_CATEGORY_ID[c],
                "score": 0.6,
                "box": [10.0, 10.0, 30.0, 30.0],
                "mask": None,
                "attributes": [],
            }
            for k, c in enumerate(("tie", "umbrella", "backpack"))
        ],
    }
    attach_garments(
        person, {"labels": [], "scores": [], "boxes": [], "masks": None, "absent": ["bag", "tie"]}, (0, 0, w, h), h, w
    )
    assert [(g["garment_id"], g["category"]) for g in person["garments"]] == [(0, "umbrella")]


def test_framing_crops_cut_photo_and_labels_at_the_same_row(tmp_path):
    make_ccp(tmp_path / "ccp", 5)
    whole = converters.convert_ccp(str(tmp_path / "ccp"))
    cut = converters.convert_ccp(str(tmp_path / "ccp"), framing="waist_up", crops=str(tmp_path / "crops"))
    for full, part in zip(whole["images"], cut["images"]):
        photo = Image.open(part["file_name"])
        assert photo.size == (part["width"], part["height"]) and part["width"] == full["width"]
        assert part["height"] < full["height"]
        original = np.asarray(Image.open(full["file_name"]).convert("RGB")).astype(int)
        assert (
            np.abs(np.asarray(photo.convert("RGB")).astype(int) - original[: part["height"]]).mean() < 3
        )  # JPEG noise only
        for region in (a for a in cut["annotations"] if a["image_id"] == part["id"]):
            m = rle.decode(region["segmentation"])
            same = next(
                a
                for a in whole["annotations"]
                if a["image_id"] == full["id"] and a["category_id"] == region["category_id"]
            )
            assert (m == rle.decode(same["segmentation"])[: part["height"]]).all()
    # the cut is at half the labelled person's height, from the top of the head
    parse = np.zeros((100, 10), np.uint8)
    parse[20:80] = V["top"]
    assert converters.framing_cut(parse, 0.5) == 50 and converters.framing_cut(parse, 0.25) == 35
    with pytest.raises(ValueError, match="--crops"):
        converters.convert_ccp(str(tmp_path / "ccp"), framing="waist_up")


def test_training_views_of_tagged_photos_teach_presence_only(tmp_path):
    make_ccp(tmp_path / "ccp", 5)
    (tmp_path / "tags" / "photos").mkdir(parents=True)
    Image.fromarray(np.full((90, 60, 3), 128, np.uint8)).save(tmp_path / "tags" / "photos" / "1005.jpg")
    (tmp_path / "tags" / "tags.json").write_text(
        json.dumps({"tags": {"photos/1005.jpg": ["hair", "skin", "jeans", "purse", "bracelet"]}})
    )
    doc = converters.convert_ccp(str(tmp_path / "ccp"), tags=str(tmp_path / "tags"))
    tagged = doc["images"][-1]
    assert tagged["tags"] == ["bag", "hair", "skin", "trousers"] and tagged["split"] == "train"  # bracelet: not a class
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    index = data.load_index(str(tmp_path / "doc.json"))
    train, _ = data.split(index.samples("garments"), 0.2, index.images)
    sample = next(s for s in train if s.image_id == tagged["id"])
    ((view, target),) = data.load_batch(
        index,
        "garments",
        [sample],
        input_size=96,
        train=True,
        seed=0,
        epoch=0,
        classes=taxonomy.GARMENT_PARSE,
        view=(96, 64),
    )
    assert view.shape == (96, 64, 3) and (target["parse"] == taxonomy.PARSE_IGNORE).all()
    expected = np.zeros(len(taxonomy.GARMENT_PARSE), np.float32)
    expected[[V["hair"], V["skin"], V["trousers"], V["bag"]]] = 1
    expected[0] = -1
    assert target["presence"].tolist() == expected.tolist()
    # a pixel-labelled person: presence from the view's own labels
    ((view, target),) = data.load_batch(
        index,
        "garments",
        [train[0]],
        input_size=96,
        train=False,
        seed=0,
        epoch=0,
        classes=taxonomy.GARMENT_PARSE,
        view=(96, 64),
    )
    present = {taxonomy.GARMENT_PARSE[k] for k, v in enumerate(target["presence"]) if v == 1}
    assert {"hair", "skin", "top", "shoes"} <= present and "dress" not in present


def test_parser_v2_gives_pixels_at_the_view_and_a_presence_per_class():
    import torch

    from fashion_ray.models.efficientnet_lite import build_parser

    model = build_parser(len(taxonomy.GARMENT_PARSE)).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 96, 64))
    assert out["out"].shape == (2, len(taxonomy.GARMENT_PARSE), 96, 64) and out["presence"].shape == (2, 16)


@pytest.mark.parametrize("changed", ["weights", "parser_onnx"])
def test_the_bundles_garment_parser_is_refused_when_its_weights_change(tmp_path, changed):
    import shutil

    from fashion_ray.config import Device
    from fashion_ray.models import BundleError, build_stage_predictor, load_bundle
    from fashion_ray.models.bundle import BUILTIN_BUNDLES_DIR

    spec = load_bundle("bootstrap").stages["clothing"]
    assert spec.architecture == "efficientnet_garment_parser"
    # the torch weights, or the ONNX file a CPU runs
    path = spec.weights if changed == "weights" else spec.model_options["files"]["parser_onnx"]["path"]
    shutil.copytree(f"{BUILTIN_BUNDLES_DIR}/bootstrap", tmp_path / "b")
    with open(tmp_path / "b" / path, "r+b") as fh:
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=rf"sha256 mismatch for .*{path}"):
        build_stage_predictor(load_bundle(str(tmp_path / "b")), "clothing", Device())


def test_a_bundle_with_the_11_parser_still_labels(tmp_path):
    """Bundles published with 1.1's parser (a head on BlazePose's trunk) keep working beside v2."""
    import shutil

    from fashion_ray.config import Device
    from fashion_ray.models import build_stage_predictor, load_bundle
    from fashion_ray.models.bundle import BUILTIN_BUNDLES_DIR, StageModel, save_bundle
    from fashion_ray.models.garments import BLAZEPOSE_PARSER, build_head

    pose = load_bundle("bootstrap").stages["person"].model_options["files"]["pose"]
    shutil.copy(f"{BUILTIN_BUNDLES_DIR}/bootstrap/{pose['path']}", tmp_path / pose["path"])
    spec = StageModel(BLAZEPOSE_PARSER, taxonomy.GARMENT_PARSE, 256, 0.0, 0.5, model_options={"files": {"trunk": pose}})
    bundle = save_bundle(str(tmp_path), "old", "1.1.0", {"clothing": (spec, build_head().state_dict())})
    parser = build_stage_predictor(bundle, "clothing", Device())
    out = parser.predict([np.random.default_rng(0).integers(0, 255, (120, 60, 3), dtype=np.uint8)])[0]
    assert out["masks"].shape[1:] == (120, 60) and len(out["labels"]) == len(out["scores"]) == len(out["boxes"])


def test_absent_garments_are_counted_per_photo_on_the_labelled_person_and_on_everyone():
    from fashion_ray import evaluation

    ids = taxonomy.COCO_CATEGORY_ID
    truth = np.zeros((20, 10), np.uint8)
    truth[2:10, 2:8] = V["top"]
    truth[10:18, 2:8] = V["trousers"]
    truth[0:2, 3:7] = V["hair"]  # part of the labelled person, never a garment
    run_truth = evaluation.semantic._GT_TO_RUN[truth]

    def ann(ann_id, name, box, parent=None):
        return {"id": ann_id, "category_id": ids[name], "bbox": box, **({"parent_person_id": parent} if parent else {})}

    predicted = [
        ann(1, "person", [2, 0, 6, 18]),
        ann(2, "person", [8, 0, 2, 5]),  # the labelled person; a passer-by
        ann(3, "long_sleeve_top", [2, 2, 6, 8], 1),
        ann(4, "scarf", [3, 2, 4, 2], 1),  # scarf: absent
        ann(5, "skirt", [2, 10, 6, 4], 1),  # absent
        ann(6, "scarf", [8, 1, 2, 2], 2),
        ann(7, "bag", [8, 3, 2, 2], 2),
        ann(8, "tie", [0, 0, 2, 2]) | {"confident": False},  # an accessory candidate: not a label, not counted
    ]  # the passer-by's: absent too
    counter = evaluation.AbsentGarments()
    counter.add(truth, run_truth, predicted)
    counter.add(truth, run_truth, [])  # a photo where nobody is found
    report = counter.evaluate()
    assert (report["photos"], report["labelled_person_found"]) == (2, 1)
    assert report["per_photo_labelled_person"] == 2 / 2 and report["per_photo_all_persons"] == 4 / 2
    assert report["by_class_labelled_person"]["scarf"] == 0.5 and report["by_class_all_persons"]["scarf"] == 1.0
    assert report["by_class_labelled_person"]["bag"] == 0 and report["by_class_all_persons"]["bag"] == 0.5
    assert report["by_class_all_persons"]["top"] == 0  # the photo has a top
