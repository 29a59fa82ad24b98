"""Class lists, COCO category ids and explicit remaps between label numberings.

One place defines every category the outputs use so Parquet, COCO and bundles agree.
COCO category ids are fixed forever (consumers store them): person = 1, garments 2..,
parts after. Never renumber; append.
"""

from __future__ import annotations

# The cascade's stages, in the order they run; bundles, jobs and training name them this way.
STAGES = ("person", "clothing", "parts")

PERSON = "person"

# DeepFashion2's 13 categories, in its own category_id order (1..13).
DEEPFASHION2 = (
    "short_sleeve_top",
    "long_sleeve_top",
    "short_sleeve_outwear",
    "long_sleeve_outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short_sleeve_dress",
    "long_sleeve_dress",
    "vest_dress",
    "sling_dress",
)

# Garment regions the bootstrap bundle can honestly tell apart without a clothing model:
# where cloth covers the upper body, the lower body, or both as one piece.
GARMENT_REGIONS = ("upper_body_garment", "lower_body_garment", "full_body_garment")

# What a person carries or wears that the person detector finds (COCO classes), as garment-level
# labels linked to their person. Fashionpedia's names where it has one ("bag, wallet" -> bag).
ACCESSORIES = ("bag", "backpack", "suitcase", "umbrella", "tie")
ACCESSORY_FROM_COCO = {"handbag": "bag", "backpack": "backpack", "suitcase": "suitcase", "umbrella": "umbrella",
                       "tie": "tie"}

# Names other datasets use for our categories, for matching ground truth by name (evaluation).
NAME_ALIASES = {"handbag": "bag", "pedestrian": PERSON, "PASpersonWalking": PERSON, "PASpersonStanding": PERSON}

# Pascal-Person-Part 6-part merge; index = label value in part maps (0 = background).
PARTS = ("head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")

# Hierarchy used in seed 004: body -> upper body {head, torso, arms}, lower body {legs}.
PART_HIERARCHY = {
    "upper_body": ("head", "torso", "upper_arm", "lower_arm"),
    "lower_body": ("upper_leg", "lower_leg"),
    "body": PARTS,
}

# Seed 004 ("Pascal-part" hierarchical format) numbers its 7 classes differently:
# 0 bg, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand.
SEED004_TO_PARTS = {0: 0, 1: 4, 2: 2, 3: 6, 4: 1, 5: 5, 6: 3}


def _coco_categories() -> list[dict]:
    cats = [{"id": 1, "name": PERSON, "supercategory": "person"}]
    next_id = 2
    for name in DEEPFASHION2:
        cats.append({"id": next_id, "name": name, "supercategory": "garment"})
        next_id += 1
    for name in PARTS:
        cats.append({"id": next_id, "name": name, "supercategory": "body_part"})
        next_id += 1
    for name in GARMENT_REGIONS:
        cats.append({"id": next_id, "name": name, "supercategory": "garment"})
        next_id += 1
    for name in ACCESSORIES:
        cats.append({"id": next_id, "name": name, "supercategory": "accessory"})
        next_id += 1
    return cats


COCO_CATEGORIES = _coco_categories()
COCO_CATEGORY_ID = {c["name"]: c["id"] for c in COCO_CATEGORIES}
PERSON_CATEGORY_ID = COCO_CATEGORY_ID[PERSON]
# COCO category id of a part -> its value in part maps (1..6)
PART_VALUE = {COCO_CATEGORY_ID[name]: value for value, name in enumerate(PARTS, start=1)}


def part_hierarchy_masks(part_map):
    """Return {level: bool mask} for upper_body / lower_body / body from a part label map."""
    import numpy as np

    out = {}
    for level, names in PART_HIERARCHY.items():
        values = [PARTS.index(n) + 1 for n in names]
        out[level] = np.isin(part_map, values)
    return out
