"""Category ids, the part hierarchy and the seed-004 remap, against hand-written cases."""

import numpy as np

from fashion_ray import taxonomy


def test_coco_category_ids_are_fixed():
    ids = taxonomy.COCO_CATEGORY_ID
    assert ids["person"] == 1 and ids["short_sleeve_top"] == 2 and ids["sling_dress"] == 14
    assert ids["head"] == 15 and ids["lower_leg"] == 20 and ids["full_body_garment"] == 23
    assert ids["bag"] == 24 and ids["tie"] == 28  # accessories, appended in bundle 1.0
    assert ids["shoes"] == 29 and ids["scarf"] == 33  # footwear and accessories, appended in bundle 1.1
    assert len(set(ids.values())) == len(ids) == 1 + 13 + 6 + 3 + 5 + 5


def test_hierarchy_levels_from_a_part_map():
    part_map = np.array([[0, 1, 2], [3, 4, 5], [6, 0, 2]])  # 0 bg, 1 head .. 6 lower leg
    levels = taxonomy.part_hierarchy_masks(part_map)
    assert levels["upper_body"].tolist() == [[False, True, True], [True, True, False], [False, False, True]]
    assert levels["lower_body"].tolist() == [[False, False, False], [False, False, True], [True, False, False]]
    assert levels["body"].sum() == 7


def test_seed004_numbering_remaps_by_name():
    seed = {0: "bg", 1: "low_hand", 2: "torso", 3: "low_leg", 4: "head", 5: "up_leg", 6: "up_hand"}
    ours = {"bg": 0, "head": 1, "torso": 2, "up_hand": 3, "low_hand": 4, "up_leg": 5, "low_leg": 6}
    assert taxonomy.SEED004_TO_PARTS == {k: ours[v] for k, v in seed.items()}
