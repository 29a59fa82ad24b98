"""The converted detectors' pre/post-processing against hand-computed cases, and the bundle's
ONNX files: checked by sha256, run by onnxruntime, a failure on one image kept to that image."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil

import numpy as np
import onnx as onnx_format
import pytest
from PIL import Image

from fashion_ray import taxonomy
from fashion_ray.boxes import box_iou, owner
from fashion_ray.config import Device
from fashion_ray.models import BundleError, blazepose, build_stage_predictor, load_bundle, nanodet, verify_bundle
from fashion_ray.models.bundle import BUILTIN_BUNDLES_DIR
from fashion_ray.stages import PersonStage, link_accessories, persons_column
from helpers import SAMPLE_CORPUS, job_main


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(SAMPLE_CORPUS, name)).convert("RGB"))


def _outputs(hot: dict[int, tuple[int, int, int, tuple[int, int, int, int]]]):
    """NanoDet head outputs that are zero except, per stride, one cell (row, col, class) with
    score 0.9 and distance bins (left, top, right, bottom) one-hot."""
    out = []
    for stride in nanodet.STRIDES:
        cells = nanodet.INPUT_SIDE // stride
        cls = np.zeros((cells * cells, 80), np.float32)
        reg = np.zeros((cells * cells, 4, nanodet.REG_BINS), np.float32)
        if stride in hot:
            row, col, label, bins = hot[stride]
            cls[row * cells + col, label] = 0.9
            for side, b in enumerate(bins):
                reg[row * cells + col, side, b] = 60.0  # softmax of a 60-logit spike is one-hot
        out.append((cls, reg.reshape(-1, 4 * nanodet.REG_BINS)))
    return out


def test_nanodet_decode_by_hand():
    # stride 8, cell row 2 col 3: centre (3.5 * 8, 2.5 * 8) = (28, 20); distances 2, 3, 1, 4 strides
    # -> box (28 - 16, 20 - 24, 28 + 8, 20 + 32); stride 32, row 0 col 12: centre (400, 16), all 10 bins
    boxes, scores = nanodet.decode(_outputs({8: (2, 3, 0, (2, 3, 1, 4)), 32: (0, 12, 26, (10, 10, 10, 10))}))
    assert boxes.shape == (52 * 52 + 26 * 26 + 13 * 13, 4) and scores.shape == (boxes.shape[0], 80)
    hot = np.argwhere(scores > 0.5)
    assert hot.tolist() == [[2 * 52 + 3, 0], [52 * 52 + 26 * 26 + 12, 26]]
    np.testing.assert_allclose(boxes[2 * 52 + 3], [12, -4, 36, 52], atol=1e-3)
    np.testing.assert_allclose(boxes[52 * 52 + 26 * 26 + 12], [80, -304, 720, 336], atol=1e-3)


def test_letterbox_keeps_the_ratio_and_normalises_bgr():
    image = np.zeros((416, 832, 3), np.uint8)
    image[..., 0] = 255  # pure red
    tensor, scale = nanodet.letterbox(image)
    assert tensor.shape == (1, 3, 416, 416) and scale == 0.5
    # content rows 0..207 in BGR order: blue 0, green 0, red 255; the padding below is black
    np.testing.assert_allclose(
        tensor[0, :, 100, 200], [-103.53 / 57.375, -116.28 / 57.12, (255 - 123.675) / 58.395], rtol=1e-5
    )
    np.testing.assert_allclose(
        tensor[0, :, 300, 200], [-103.53 / 57.375, -116.28 / 57.12, -123.675 / 58.395], rtol=1e-5
    )


def test_tiles_only_where_the_smallest_person_needs_them():
    # a 24 px person in a 416 px image is 24 px at the model's input, under 28: 2 x 2 tiles of
    # 260 px (416 * 1.25 / 2) overlapping by 104 px
    assert nanodet.plan_tiles(416, 416, 24) == [
        (0, 0, 260, 260),
        (156, 0, 416, 260),
        (0, 156, 260, 416),
        (156, 156, 416, 416),
    ]
    assert nanodet.plan_tiles(416, 416, 40) == []  # big enough at full frame
    # full HD with 24 px people would want 7 tiles a side; capped at 3: 800 px tiles
    tiles = nanodet.plan_tiles(1920, 1080, 24, max_per_side=3)
    assert tiles == [(x, y, x + 800, y + 800) for y in (0, 280) for x in (0, 560, 1120)]
    assert nanodet.plan_tiles(1920, 1080, 24, max_per_side=1) == []


def test_one_zoom_view_magnifies_as_much_as_the_smallest_person_needs():
    # 640 x 480, 24 px people: 28 px at the input wants a long side of 640 * 28 / 24 = 746.7,
    # up to the next stride of 32: 768 (768 x 576 with a tight canvas, 2.6 full frames)
    assert nanodet.plan_zoom(640, 480, 24, 1024) == 768
    assert nanodet._input_shape((480, 640, 3), 768) == (576, 768)
    assert nanodet.plan_zoom(640, 480, 24, 416) is None  # zoom off: tiles
    assert nanodet.plan_zoom(416, 416, 40, 1024) is None  # big enough at full frame
    # full HD would want 2,240 px: capped, the view magnifies as the capped 800 px tiles did
    assert nanodet.plan_zoom(1920, 1080, 24, 1024) == 1024
    assert nanodet._input_shape((1080, 1920, 3), 1024) == (576, 1024)


def test_a_tight_letterbox_pads_to_the_stride_only():
    tensor, scale = nanodet.letterbox(np.zeros((480, 640, 3), np.uint8), 768, tight=True)
    assert tensor.shape == (1, 3, 576, 768) and scale == 1.2
    tensor, scale = nanodet.letterbox(np.zeros((100, 300, 3), np.uint8), 500, tight=True)
    assert tensor.shape == (1, 3, 192, 512)  # 167 rows and 500 columns, each up to a stride of 32


def test_nanodet_decode_of_a_wide_input_by_hand():
    # a 64 x 128 input: stride 8 has 8 x 16 cells; cell row 1 col 14 is centre (116, 12)
    shape = (64, 128)
    out = []
    for stride in nanodet.STRIDES:
        cells = (shape[0] // stride) * (shape[1] // stride)
        out.append((np.zeros((cells, 80), np.float32), np.zeros((cells, 4 * nanodet.REG_BINS), np.float32)))
    boxes, _ = nanodet.decode(out, shape)
    assert boxes.shape == (8 * 16 + 4 * 8 + 2 * 4, 4)
    # every bin equally likely: each side is 5 strides from the centre
    np.testing.assert_allclose(boxes[16 + 14], [116 - 40, 12 - 40, 116 + 40, 12 + 40], atol=1e-3)
    np.testing.assert_allclose(boxes[8 * 16 + 4 * 8 + 7], [112 - 160, 48 - 160, 112 + 160, 48 + 160], atol=1e-3)


def test_coarse_tiles_only_where_the_tiles_are_finer_than_two_by_two():
    # 640 x 480 with 24 px people: 3 x 3 tiles of 267 px; the coarse grid is 2 x 2 of 400 px
    fine = nanodet.plan_tiles(640, 480, 24)
    assert fine == [(x, y, x + 267, y + 267) for y in (0, 106, 213) for x in (0, 186, 373)]
    assert nanodet.plan_coarse_tiles(640, 480, 24, fine) == [
        (x, y, x + 400, y + 400) for y in (0, 80) for x in (0, 240)
    ]
    # already 2 x 2 (416 px) or no tiles at all (a large person at full frame): none
    assert nanodet.plan_coarse_tiles(416, 416, 24, nanodet.plan_tiles(416, 416, 24)) == []
    assert nanodet.plan_coarse_tiles(416, 416, 40, []) == []


def test_a_coarse_view_keeps_only_the_persons_no_fine_tile_holds_whole():
    fine = nanodet.plan_tiles(640, 480, 24)  # 267 px tiles at x 0, 186, 373 and y 0, 106, 213
    persons = np.array(
        [
            [20, 20, 120, 220],  # inside the first tile: seen whole there, larger
            [250, 10, 300, 200],  # inside the second tile of the top row
            [200, 50, 260, 350],  # 300 px tall: taller than any tile
            [150, 10, 290, 200],  # cut by the first tile's right edge and the second's left edge
            [374, 214, 640, 481],  # the last tile, to within its 2 px margin
        ],
        np.float32,
    )
    assert nanodet.whole_in_a_tile(persons, fine).tolist() == [True, True, False, False, True]
    assert nanodet.whole_in_a_tile(persons, []).tolist() == [False] * 5


def test_tile_merge_keeps_the_full_frame_box_over_its_parts():
    full = (np.array([[100, 100, 200, 400]], np.float32), np.array([0.9], np.float32), np.array([0]))
    image = (416, 416)
    left, right = (0, 0, 260, 260, *image), (156, 0, 416, 260, *image)
    tiles = [
        # the upper half of the full-frame person, and a small person in the tiles' overlap
        (
            np.array([[100, 100, 200, 250], [220, 50, 230, 80]], np.float32),
            np.array([0.8, 0.7], np.float32),
            np.array([0, 0]),
            left,
        ),
        # the small person again (a duplicate), and a person at x 200-290 whole in this tile
        (
            np.array([[220, 51, 230, 80], [200, 10, 290, 60]], np.float32),
            np.array([0.6, 0.75], np.float32),
            np.array([0, 0]),
            right,
        ),
        # the left tile cut that person at its edge x = 260: a part of the box above
        (np.array([[200, 10, 260, 60]], np.float32), np.array([0.85], np.float32), np.array([0]), left),
    ]
    boxes, scores, labels = nanodet.merge_tiles(full, tiles)
    assert boxes.tolist() == [[100, 100, 200, 400], [200, 10, 290, 60], [220, 50, 230, 80]]
    assert scores.tolist() == pytest.approx([0.9, 0.75, 0.7]) and labels.tolist() == [0, 0, 0]


def test_load_time_graph_edits_are_the_onnx_packages_edits():
    """NanoDet's free input size and BlazePose's trunk outputs are edited on a subset of ONNX's
    schema (models/onnx.py, to spare every actor the onnx import): the models read back with
    the onnx package equal the same edits made with it, every untouched field included."""
    from fashion_ray.models import garments

    def read(name: str) -> bytes:
        with open(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap", name), "rb") as fh:
            return fh.read()

    detector, pose = read("nanodet_g_416.onnx"), read("blazepose_heavy.onnx")
    expected = onnx_format.load_from_string(detector)
    for out in expected.graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "cells"
    dims = expected.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del expected.graph.value_info[:]
    edited, pairs = nanodet.any_input_size(detector)
    assert onnx_format.load_from_string(edited) == expected
    assert len(pairs) == 3 and len({name for pair in pairs for name in pair}) == 6

    expected = onnx_format.load_from_string(pose)
    del expected.graph.output[:]
    for name in garments.TRUNK_OUTPUTS.values():
        expected.graph.output.append(
            onnx_format.helper.make_tensor_value_info(name, onnx_format.TensorProto.FLOAT, None)
        )
    assert onnx_format.load_from_string(garments.trunk_model(pose)) == expected


def test_nms_is_per_class():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 10]], np.float32)
    keep = nanodet.nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 26]))
    assert keep.tolist() == [0, 2]  # the person duplicate goes; the handbag on the same spot stays


def test_blazepose_view_maps_landmarks_back():
    view = blazepose.square_view([100, 50, 200, 250])  # 200 px tall: a 260 px square around it
    assert view == pytest.approx((20.0, 20.0, 260.0))
    landmarks = np.zeros((39, 5), np.float32)
    landmarks[0] = [128, 64, 0, 10, 10]  # the input's centre column, a quarter down
    mask = np.zeros((256, 256), np.float32)
    mask[:, 128:] = 1.0
    out = blazepose.postprocess(landmarks.ravel(), mask, np.array([0.9]), view, 300, 300)
    assert out["keypoints"].shape == (33, 3) and out["pose_score"] == pytest.approx(0.9)
    np.testing.assert_allclose(out["keypoints"][0], [150, 85, 1.0], atol=1e-3)
    # the mask's right half: image x >= 150 inside the view (x < 280, y 20..280)
    prob = out["mask_prob"] > 0.5
    assert prob[100, 160] and not prob[100, 140] and not prob[10, 160] and not prob[100, 290]


def test_accessories_go_to_the_person_who_carries_them():
    alice, bob = [100, 100, 200, 400], [400, 100, 500, 400]
    assert owner([190, 250, 230, 300], [alice, bob]) == 0  # a bag at Alice's hip
    assert owner([210, 250, 250, 300], [bob, alice]) == 1  # order does not matter
    assert owner([290, 250, 310, 300], [alice, bob]) is None  # halfway between, held by neither box
    assert owner([700, 300, 760, 400], [alice, bob]) is None  # a suitcase standing alone
    persons = [{"box": alice, "garments": []}, {"box": bob, "garments": []}]
    link_accessories(
        persons,
        [
            {"category": "umbrella", "score": 0.6, "box": [380, 20, 520, 150]},
            {"category": "bag", "score": 0.7, "box": [190, 250, 230, 300]},
            {"category": "suitcase", "score": 0.9, "box": [700, 300, 760, 400]},
        ],
    )
    assert [(g["garment_id"], g["category"], g["category_id"]) for g in persons[0]["garments"]] == [
        (0, "bag", taxonomy.COCO_CATEGORY_ID["bag"])
    ]
    assert [g["category"] for g in persons[1]["garments"]] == ["umbrella"]


def test_a_changed_onnx_file_is_refused(tmp_path):
    broken = tmp_path / "bootstrap"
    shutil.copytree(f"{BUILTIN_BUNDLES_DIR}/bootstrap", broken)
    with open(broken / "nanodet_g_416.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    bundle = load_bundle(str(broken))
    verify_bundle(bundle, ["clothing", "parts"])
    with pytest.raises(BundleError, match=r"sha256 mismatch for .*nanodet_g_416\.onnx"):
        verify_bundle(bundle, ["person"])


def test_unknown_person_options_are_refused(tmp_path):
    shutil.copytree(f"{BUILTIN_BUNDLES_DIR}/bootstrap", tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "bundle.json").read_text())
    raw["stages"]["person"]["options"]["min_person_heigth"] = 30
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"unknown person options \['min_person_heigth'\]"):
        build_stage_predictor(load_bundle(str(tmp_path / "b")), "person", Device())


def _bundle_with(**person_options):
    bundle = load_bundle("bootstrap")
    spec = bundle.stages["person"]
    spec = dataclasses.replace(spec, model_options={**spec.model_options, **person_options})
    return dataclasses.replace(bundle, stages={**bundle.stages, "person": spec})


def test_a_cpu_runs_the_int8_detector_where_the_bundle_asks_for_it():
    def detector(**options):
        return build_stage_predictor(_bundle_with(**options), "person", Device()).detector

    assert detector(cpu_int8=True).int8 and not detector().int8 and not detector(cpu_int8=False).int8
    with pytest.raises(BundleError, match=r"cpu_int8 is true or false, not 'no'"):
        detector(cpu_int8="no")
    # what models/cpu_models.py keeps in fp32: the first convolution and the three heads
    files = load_bundle("bootstrap").stages["person"].model_options["files"]
    graph = onnx_format.load(os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap", files["detector_int8"]["path"])).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert (ops["Conv"], ops["QLinearConv"]) == (4, 30)


def test_the_cpu_files_are_made_again_by_their_job(tmp_path, capsys):
    # the parser's export is byte for byte (torch is pinned); the quantiser's bytes may move with
    # onnxruntime's version, so the INT8 file is checked by what it keeps in fp32
    bundle = tmp_path / "bootstrap"
    shutil.copytree(f"{BUILTIN_BUNDLES_DIR}/bootstrap", bundle, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copy(f"{BUILTIN_BUNDLES_DIR}/bootstrap/nanodet_g_416.onnx", bundle)
    assert job_main("make_cpu_models", "--bundle-dir", str(bundle)) == 0
    files = load_bundle(str(bundle)).stages["clothing"].model_options["files"]
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert printed["garments_v2.onnx"] == files["parser_onnx"]["sha256"]
    graph = onnx_format.load(str(bundle / "nanodet_g_416_int8.onnx")).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert (ops["Conv"], ops["QLinearConv"]) == (4, 30)
    assert job_main("make_cpu_models", "--bundle-dir", str(tmp_path)) == 2
    assert "no bundle.json in" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["astronaut.jpg", "camera.jpg", "grace_hopper.jpg", "two_people.jpg"])
def test_the_int8_detector_finds_what_the_fp32_one_finds(name):
    photo, bundle = _photo(name), load_bundle("bootstrap")
    options = bundle.stages["person"].model_options
    found = []
    for key in ("detector", "detector_int8"):
        data = open(os.path.join(bundle.uri, options["files"][key]["path"]), "rb").read()
        detector = nanodet.NanoDet(data, score_threshold=0.25, min_person_height=14, max_input_side=1280)
        found.append(detector.detect([photo])[0])
    assert found[0][2], "the photo has someone to compare"
    # each model's detections from 0.35 have a twin in the other's from 0.25: a person from 0.5
    # at IoU 0.9 (a few pixels on a 330 px person cut by the photo's edge) and within 0.05 of its
    # score; a person under 0.5 (the astronaut photo's 87 px sliver of a man at its left edge) and
    # an accessory (a tie: small, scored near its threshold) at IoU 0.75, within 0.05 and 0.1.
    # INT8 sums differ by CPU: the sliver is at IoU 0.81 on a VNNI / AMX Xeon, over 0.9 on older
    # AVX2 ones, whose u8 x s8 products saturate
    for (boxes, scores, names), (other_boxes, other_scores, other_names) in (found, found[::-1]):
        for box, score, name in zip(boxes, scores, names):
            if score < 0.35:
                continue
            twins = [k for k, other in enumerate(other_names) if other == name]
            assert twins, f"{name} at {score:.2f} has no twin"
            twin = max(twins, key=lambda k: box_iou(box, other_boxes[k]))
            assert box_iou(box, other_boxes[twin]) >= (0.9 if name == "person" and score >= 0.5 else 0.75)
            assert abs(score - other_scores[twin]) <= (0.05 if name == "person" else 0.1)


def test_a_failure_on_one_image_is_one_model_error_row():
    photo = _photo("camera.jpg")
    n = 3
    batch = {
        "id": np.arange(n),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "error_detail": np.array([""] * n, dtype=object),
        "persons": persons_column([[] for _ in range(n)]),
    }
    images = np.empty(n, dtype=object)
    images[:] = [photo, np.zeros((0, 7, 3), np.uint8), photo[:, ::-1].copy()]  # the middle one has no pixels
    batch["image"] = images
    out = PersonStage("bootstrap", Device(), batch_size=3)(batch)
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert out["error"][1] == "model_error" and out["error_detail"][1].startswith("person: ")
    for k in (0, 2):
        [person] = [p for p in out["persons"][k].items if p["confident"]]
        assert person["score"] >= 0.5 and len(person["keypoints"]) == 33 * 3 and person["mask"] is not None


def test_batched_views_give_the_single_view_detections():
    photo = _photo("two_people.jpg")
    bundle = load_bundle("bootstrap")
    data = open(os.path.join(bundle.uri, "nanodet_g_416.onnx"), "rb").read()
    batched = nanodet.NanoDet(data, score_threshold=0.5, min_person_height=24, max_batch=8)
    single = nanodet.NanoDet(data, score_threshold=0.5, min_person_height=24, max_batch=1)
    images = [photo, photo[:300, :400].copy()]
    for (b1, s1, n1), (b2, s2, n2) in zip(batched.detect(images), single.detect(images)):
        assert n1 == n2 and len(n1) >= 1
        np.testing.assert_allclose(b1, b2, atol=0.05)
        np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_a_small_person_the_full_frame_misses_is_found_by_the_zoom_view():
    # the cameraman shrunk to 18 px tall on a 640 x 480 grey canvas: 12 px at the 416 px full
    # frame (scored 0.16), 29 px in the 1,024 px zoom view (0.32): the converted graph, run at a
    # size it does not declare
    photo = _photo("camera.jpg")
    data = open(os.path.join(load_bundle("bootstrap").uri, "nanodet_g_416.onnx"), "rb").read()
    found = nanodet.NanoDet(data, score_threshold=0.5, min_person_height=512).detect([photo])[0]
    x0, y0, x1, y1 = found[0][found[2].index("person")]
    person = np.asarray(Image.fromarray(photo[int(y0) : int(y1), int(x0) : int(x1)]).resize((13, 18)))
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[300:318, 400:413] = person
    full_only = nanodet.NanoDet(data, score_threshold=0.25, min_person_height=512)  # no tiles, no zoom
    zoom = nanodet.NanoDet(data, score_threshold=0.25, min_person_height=16, max_input_side=1024)
    assert "person" not in full_only.detect([canvas])[0][2]
    boxes, _, names = zoom.detect([canvas])[0]
    assert names == ["person"]
    np.testing.assert_allclose(boxes[0], [400, 300, 413, 318], atol=3)


def _person_stage(photo: np.ndarray, **kwargs) -> list[dict]:
    batch = {
        "id": np.arange(1),
        "status": np.array(["ok"], dtype=object),
        "error": np.array([""], dtype=object),
        "error_detail": np.array([""], dtype=object),
        "persons": persons_column([[]]),
    }
    batch["image"] = np.empty(1, dtype=object)
    batch["image"][0] = photo
    return PersonStage("bootstrap", Device(), batch_size=1, **kwargs)(batch)["persons"][0].items


def test_a_run_threshold_replaces_the_bundles():
    # the cameraman scores 0.88: the bundle's 0.5 keeps him, a run asking for 0.95 makes him a
    # candidate (the bundle's floor, 0.2, is where candidates end)
    photo = _photo("camera.jpg")
    persons = _person_stage(photo)
    assert [round(p["score"], 2) for p in persons if p["confident"]] == [0.88]
    assert [p["person_id"] for p in persons] == list(range(len(persons)))
    strict = _person_stage(photo, score_threshold=0.95)
    assert not any(p["confident"] for p in strict) and round(strict[0]["score"], 2) == 0.88


def test_candidates_are_boxes_and_scores_and_the_confident_persons_do_not_change():
    """The bundle's candidate floor adds persons under the threshold to what the same detector
    finds without it; the confident ones, their boxes and scores stay exactly as they were."""
    bundle = load_bundle("bootstrap")
    floor = bundle.stages["person"].model_options["candidate_floor"]
    data = open(os.path.join(bundle.uri, "nanodet_g_416.onnx"), "rb").read()
    options = dict(score_threshold=0.5, min_person_height=24)
    plain, with_floor = nanodet.NanoDet(data, **options), nanodet.NanoDet(data, **options, candidate_floor=floor)
    photos = [_photo(name) for name in ("two_people.jpg", "astronaut.jpg")]
    for (b1, s1, n1), (b2, s2, n2) in zip(plain.detect(photos), with_floor.detect(photos)):
        sure = s2 >= 0.5
        assert n2[: len(n1)] == n1 and sure[: len(n1)].all() and not sure[len(n1) :].any()
        np.testing.assert_array_equal(b2[: len(n1)], b1)
        np.testing.assert_array_equal(s2[: len(n1)], s1)
        assert len(n2) > len(n1) and (s2[len(n1) :] >= floor).all()

    persons = _person_stage(_photo("two_people.jpg"))
    confident = [p for p in persons if p["confident"]]
    candidates = [p for p in persons if not p["confident"]]
    assert len(confident) == 2 and all(p["mask"] and p["keypoints"] and p["appearance"] for p in confident)
    assert candidates and all(floor <= p["score"] < 0.5 for p in candidates)
    assert all(p["mask"] is None and p["keypoints"] is None and "appearance" not in p for p in candidates)


def test_candidates_by_hand():
    """Under the threshold, after NMS among themselves, and neither overlapping a confident
    person (IoU > 0.6) nor mostly inside one (a piece a tile saw)."""
    confident = np.array([[0, 0, 100, 200]], np.float32)
    boxes = np.array(
        [
            [0, 0, 100, 200],  # the confident person itself (0.9): not a candidate
            [5, 0, 100, 190],  # the same person again, lower: IoU 0.9 with them
            [10, 100, 90, 200],  # their legs: wholly inside them
            [300, 0, 360, 120],  # someone else, faint
            [302, 2, 360, 120],  # the same someone, fainter: NMS takes it
            [80, 0, 180, 200],  # a neighbour overlapping the person by a quarter of its box
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.45, 0.4, 0.35, 0.3, 0.25], np.float32)
    assert nanodet.person_candidates(confident, boxes, scores, 0.5).tolist() == [3, 5]
    # with nobody confident, the legs (IoU 0.38 with the fainter whole box) are a person of their own
    assert nanodet.person_candidates(np.zeros((0, 4), np.float32), boxes, scores, 0.5).tolist() == [1, 2, 3, 5]


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_cuda_provider(), reason="onnxruntime-gpu is installed: the refusal cannot happen here")
def test_cuda_without_onnxruntime_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device 'cuda' needs onnxruntime-gpu"):
        build_stage_predictor(load_bundle("bootstrap"), "person", Device("cuda"))


@pytest.mark.cuda
@pytest.mark.skipif(
    not _cuda_provider(), reason="needs onnxruntime-gpu (cluster/runtime_env.yaml) for the CUDA provider"
)
def test_the_person_stage_on_the_gpu_finds_what_the_cpu_finds():
    photo = _photo("two_people.jpg")
    bundle = load_bundle("bootstrap")
    cpu, gpu = (build_stage_predictor(bundle, "person", Device(name)).predict([photo])[0] for name in ("cpu", "cuda"))
    assert len(cpu["boxes"]) == len(gpu["boxes"]) == 2
    np.testing.assert_allclose(cpu["boxes"], gpu["boxes"], atol=2.0)
    np.testing.assert_allclose(cpu["scores"], gpu["scores"], atol=0.02)


def test_a_faint_full_frame_box_does_not_erase_a_sure_small_person():
    # a 0.1 full-frame box over a group; a tile finds one person inside it at 0.8 (kept), and a
    # 0.05 piece of that person's box is claimed by it (0.8 >= 0.5 x 0.05)
    full = (np.array([[100, 100, 300, 300]], np.float32), np.array([0.1], np.float32), np.array([0]))
    region = (0, 0, 260, 260, 416, 416)
    tiles = [
        (
            np.array([[150, 150, 180, 230], [150, 150, 180, 200]], np.float32),
            np.array([0.8, 0.05], np.float32),
            np.array([0, 0]),
            region,
        )
    ]
    boxes, scores, _ = nanodet.merge_tiles(full, tiles)
    assert boxes.tolist() == [[150, 150, 180, 230], [100, 100, 300, 300]] and scores.tolist() == pytest.approx(
        [0.8, 0.1]
    )


def test_a_tall_person_under_the_threshold_is_one_person_not_the_pieces_the_tiles_saw():
    # full frame: the whole person at 0.45 (under 0.5: faint), a faint group box at 0.3;
    # the tiles: the upper and lower part of the person, each cut by its tile's inner edge,
    # and one whole small person (not cut) inside the group box
    sure = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    faint = (
        np.array([[100, 20, 200, 400], [300, 300, 400, 400]], np.float32),
        np.array([0.45, 0.3], np.float32),
        np.array([0, 0]),
    )
    tiles = [
        (
            np.array([[100, 20, 200, 260]], np.float32),
            np.array([0.86], np.float32),
            np.array([0]),
            (0, 0, 260, 260, 416, 416),
        ),
        (
            np.array([[100, 156, 200, 400], [320, 320, 340, 360]], np.float32),
            np.array([0.8, 0.55], np.float32),
            np.array([0, 0]),
            (0, 156, 416, 416, 416, 416),
        ),
    ]
    boxes, scores, _ = nanodet.merge_tiles(sure, tiles, faint=faint)
    assert boxes.tolist() == [[100, 20, 200, 400], [320, 320, 340, 360]] and scores.tolist() == pytest.approx(
        [0.86, 0.55]
    )


def test_a_tall_person_is_one_person_not_the_pieces_the_zoom_view_saw():
    # a 550 x 820 street photo, zoomed to 1,024 px: the whole person (750 px, 930 at the zoom's
    # input) is past NanoDet's largest box there, so the zoom view sees two pieces (0.66, 0.51);
    # the full frame has the whole person at 0.45 (faint). A 40 px person (20 px at the full
    # frame, under 2 x 28: only the zoom sees them whole) inside a faint group box stays a person.
    image = (550, 820)
    sure = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    faint = (
        np.array([[150, 30, 380, 780], [400, 500, 540, 700]], np.float32),
        np.array([0.45, 0.3], np.float32),
        np.array([0, 0]),
    )
    zoom = (
        np.array([[159, 31, 377, 383], [157, 390, 356, 777], [450, 600, 470, 640]], np.float32),
        np.array([0.66, 0.51, 0.55], np.float32),
        np.array([0, 0, 0]),
        (0, 0, *image, *image),
    )
    boxes, scores, _ = nanodet.merge_tiles(sure, [zoom], faint=faint)
    assert boxes.tolist() == [[150, 30, 380, 780], [450, 600, 470, 640]]
    assert scores.tolist() == pytest.approx([0.66, 0.55])


def test_two_halves_of_a_tall_person_vouch_for_a_faint_whole_box_whatever_it_scores():
    # CCP 0135 (550 x 825, zoomed to 1,280 px): the full frame scores the whole woman 0.23, the
    # zoom view sees her head-to-waist (0.74) and her legs (0.63) with a gap between them. Alone,
    # neither piece is vouched by so faint a box (0.23 < 0.5 x 0.63); together, one in each half,
    # they are one person: the whole box, scored as the surer half. A faint box holding one
    # piece only (a group behind) stays out.
    image = (550, 825)
    sure = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    faint = (
        np.array([[109, 41, 363, 780], [380, 100, 540, 700]], np.float32),
        np.array([0.23, 0.22], np.float32),
        np.array([0, 0]),
    )
    zoom = (
        np.array([[127, 42, 303, 312], [180, 500, 324, 778], [390, 110, 530, 420]], np.float32),
        np.array([0.74, 0.63, 0.7], np.float32),
        np.array([0, 0, 0]),
        (0, 0, *image, *image),
    )
    boxes, scores, _ = nanodet.merge_tiles(sure, [zoom], faint=faint, person=0)
    assert boxes.tolist() == [[109, 41, 363, 780], [390, 110, 530, 420]]
    assert scores.tolist() == pytest.approx([0.74, 0.7])
    # the rule is a person's: an umbrella's two halves vouch for nothing
    boxes, _, _ = nanodet.merge_tiles(sure, [zoom], faint=faint, person=25)
    assert len(boxes) == 3
    # nor do a person's where the faint box lies inside a sure box (the astronaut photo: her
    # legs, 0.27, inside her whole 0.73 box): the halves are pieces of the sure box
    whole = (np.array([[100, 30, 370, 790]], np.float32), np.array([0.73], np.float32), np.array([0]))
    boxes, scores, _ = nanodet.merge_tiles(whole, [zoom], faint=faint, person=0)
    assert boxes.tolist() == [[100, 30, 370, 790], [390, 110, 530, 420]]
    assert scores.tolist() == pytest.approx([0.73, 0.7])


def test_the_zoom_view_lends_confidence_and_the_full_frame_places_large_people():
    # a 640 x 480 photo, person class 0, candidate floor 0.2
    full = (
        np.array([[100, 50, 200, 400], [350, 300, 360, 320]], np.float32),  # a large faint person, a small one
        np.array([0.45, 0.3], np.float32),
        np.array([0, 0]),
    )
    zoom = (
        np.array(
            [
                [95, 40, 210, 420],  # the large person again, surer and placed worse: IoU 0.80 with the full box
                [350, 301, 360, 321],  # the small one again: 13 px at the full frame, the zoom's own
                [300, 300, 310, 320],  # a person only the zoom sees, 0.55 -> 0.458
                [400, 300, 410, 320],  # only the zoom sees, 0.22 -> 0.183: under the floor
                [500, 100, 600, 400],  # a bag (class 26) only the zoom sees: not discounted
            ],
            np.float32,
        ),
        np.array([0.7, 0.6, 0.55, 0.22, 0.5], np.float32),
        np.array([0, 0, 0, 0, 26]),
    )
    (boxes, scores, labels), full_after = nanodet.weigh_zoom(zoom, full, 640, person=0, floor=0.2)
    assert boxes.tolist() == [[350, 301, 360, 321], [300, 300, 310, 320], [500, 100, 600, 400]]
    assert scores.tolist() == pytest.approx([0.6, 0.55 / 1.2, 0.5]) and labels.tolist() == [0, 0, 26]
    assert full_after[0].tolist() == full[0].tolist() and full_after[1].tolist() == pytest.approx([0.7, 0.3])


def _street_row(persons: list[dict], **fields) -> dict:
    """A labelled 640x480 photo's row holding these persons (and any other fields)."""
    return {
        "id": 5,
        "uri": "/photos/street.jpg",
        "width": 640,
        "height": 480,
        "status": "ok",
        "frame_index": None,
        "timestamp_s": None,
        "persons": persons,
        **fields,
    }


def test_accessories_reach_coco_with_their_person(tmp_path):
    from pycocotools.coco import COCO

    from fashion_ray.formats import coco

    persons = [
        {
            "person_id": 0,
            "score": 0.9,
            "box": [100, 100, 200, 400],
            "mask": None,
            "keypoints": None,
            "garments": [],
            "parts": [],
        }
    ]
    link_accessories(persons, [{"category": "bag", "score": 0.7, "box": [190, 250, 230, 300]}])
    doc = coco.coco_document([_street_row(persons)])
    (tmp_path / "c.json").write_text(json.dumps(doc))
    loaded = COCO(str(tmp_path / "c.json"))
    [person] = loaded.getAnnIds(catIds=[taxonomy.PERSON_CATEGORY_ID])
    [bag] = loaded.loadAnns(loaded.getAnnIds(catIds=[taxonomy.COCO_CATEGORY_ID["bag"]]))
    assert bag["parent_person_id"] == person and bag["attributes"]["parent_person_id"] == person
    assert bag["bbox"] == [190.0, 250.0, 40.0, 50.0] and "segmentation" not in bag
    assert loaded.loadCats(bag["category_id"])[0]["supercategory"] == "accessory"


def test_a_detection_the_pose_model_finds_nobody_in_is_rescored_to_a_candidate():
    """Pose flag under min_pose_presence: the detection keeps POSE_DOUBT of its score, no pose
    and no mask (a candidate under any threshold of 0.5 or more); a person the pose model sees
    keeps score, landmarks and mask."""
    from fashion_ray.models import bootstrap

    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[10, 10, 90, 190], [150, 20, 230, 190]], np.float32)
    detection = (boxes, np.array([0.9, 0.8], np.float32), ["person", "person"])

    def pose(box, presence):
        keypoints = np.zeros((33, 3), np.float32)
        keypoints[:, 0] = np.linspace(box[0] + 5, box[2] - 5, 33)
        keypoints[:, 1] = np.linspace(box[1] + 5, box[3] - 5, 33)
        keypoints[:, 2] = 0.9
        keypoints[[2, 5], 2] = 0.1  # eyes unseen: a body down the box's diagonal is no collapsed pose
        prob = np.zeros(image.shape[:2], np.float32)
        prob[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = 1.0
        return {"keypoints": keypoints, "mask_prob": prob, "pose_score": presence}

    predictor = bootstrap.NanoDetPosePerson(
        None, None, mask_threshold=0.5, box_source="detector", person_threshold=0.5, min_pose_presence=0.1
    )
    out = predictor._assemble(image, detection, {0: pose(boxes[0], 0.02), 1: pose(boxes[1], 0.97)})
    # best first: the seen person (0.8), then the one nobody is in (0.9 x 0.45 = 0.405)
    assert out["scores"].tolist() == pytest.approx([0.8, 0.9 * bootstrap.POSE_DOUBT])
    assert out["boxes"].tolist() == [boxes[1].tolist(), boxes[0].tolist()]
    assert out["keypoints"][0] is not None and out["keypoints"][1] is None
    assert out["masks"][0].sum() == 80 * 170 and not out["masks"][1].any()


def test_an_accessory_nobody_holds_reaches_coco_and_parquet_as_itself(tmp_path):
    """A suitcase standing alone is no person's garment: it is the row's object, an annotation of
    its own category with no parent in COCO, and in Parquet's `objects`. An accessory candidate
    (under the accessory threshold) is an object too, flagged, even in a confident hand."""
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from fashion_ray.formats import coco
    from fashion_ray.formats.shards import write_rows

    persons = [
        {"person_id": 0, "score": 0.9, "confident": True, "box": [100, 100, 200, 400], "garments": [], "parts": []},
        {"person_id": 1, "score": 0.3, "confident": False, "box": [400, 100, 460, 300], "garments": [], "parts": []},
    ]
    accessories = [
        {"category": "bag", "score": 0.7, "box": [190, 250, 230, 300]},  # at the confident person's hand
        {"category": "suitcase", "score": 0.6, "box": [420, 250, 470, 320]},  # beside a candidate: nobody's
        {"category": "umbrella", "score": 0.25, "box": [120, 90, 180, 150], "confident": False},  # a guess
    ]
    objects = link_accessories(persons, accessories)
    assert [g["category"] for g in persons[0]["garments"]] == ["bag"] and persons[1]["garments"] == []
    assert objects == [
        {"object_id": 0, "category": "suitcase", "category_id": taxonomy.COCO_CATEGORY_ID["suitcase"],
         "score": 0.6, "box": [420.0, 250.0, 470.0, 320.0], "confident": True},
        {"object_id": 1, "category": "umbrella", "category_id": taxonomy.COCO_CATEGORY_ID["umbrella"],
         "score": 0.25, "box": [120.0, 90.0, 180.0, 150.0], "confident": False},
    ]  # fmt: skip
    row = _street_row(persons, objects=objects)
    (tmp_path / "c.json").write_text(json.dumps(coco.coco_document([row])))
    loaded = COCO(str(tmp_path / "c.json"))
    [suitcase] = loaded.loadAnns(loaded.getAnnIds(catIds=[taxonomy.COCO_CATEGORY_ID["suitcase"]]))
    assert suitcase["bbox"] == [420.0, 250.0, 50.0, 70.0] and suitcase["score"] == 0.6
    assert "parent_person_id" not in suitcase and suitcase["attributes"] == {"confident": True}
    [umbrella] = loaded.loadAnns(loaded.getAnnIds(catIds=[taxonomy.COCO_CATEGORY_ID["umbrella"]]))
    assert umbrella["confident"] is False and umbrella["score"] == 0.25 and "parent_person_id" not in umbrella
    # the labels alone (YOLO, Label Studio): the candidate person and the candidate umbrella are left out
    labels = {(a["category_id"], a["score"]) for a in coco.annotations(row, candidates=False)}
    assert labels == {(taxonomy.PERSON_CATEGORY_ID, 0.9), (taxonomy.COCO_CATEGORY_ID["bag"], 0.7),
                      (taxonomy.COCO_CATEGORY_ID["suitcase"], 0.6)}  # fmt: skip

    shard = write_rows([row], output=str(tmp_path / "out"), info={})
    [written] = pq.read_table(tmp_path / "out" / "parquet" / f"{shard.name}.parquet").to_pylist()
    assert [(o["category"], o["box"], o["confident"]) for o in written["objects"]] == [
        ("suitcase", [420.0, 250.0, 470.0, 320.0], True),
        ("umbrella", [120.0, 90.0, 180.0, 150.0], False),
    ]
    assert (shard.objects, shard.object_candidates) == (1, 1) and shard.entry()["object_candidates"] == 1
