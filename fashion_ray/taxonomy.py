"""Class lists, COCO category ids and explicit remaps between label numberings.

One place defines every category the outputs use so Parquet, COCO and bundles agree.
COCO category ids are fixed forever (consumers store them): person = 1, garments 2..,
parts after. Never renumber; append.
"""

from __future__ import annotations

# The cascade's stages, in the order they run; bundles, jobs and training name them this way.
# actions label persons from their keypoints and tracks (video), so they come last.
PERSON_STAGE, CLOTHING_STAGE, PARTS_STAGE, ACTIONS_STAGE = "person", "clothing", "parts", "actions"
STAGES = (PERSON_STAGE, CLOTHING_STAGE, PARTS_STAGE, ACTIONS_STAGE)
# what training can learn: each stage's model, and the garment parser (a clothing-stage model
# trained on per-pixel garment maps)
GARMENTS_TASK = "garments"

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
CARRIED = ("bag", "backpack")  # one carried object: the detector names both, the garment parser says bag


def same_object_class(a: str, b: str) -> bool:
    """Whether two categories can name one object (a detector's backpack is the parser's bag)."""
    return a == b or (a in CARRIED and b in CARRIED)


def parse_class_of(category: str) -> str:
    """The garment parser's class a written category falls under (a backpack is a bag to it)."""
    return "bag" if category in CARRIED else PARSE_OF.get(category, category)


ACCESSORY_FROM_COCO = {
    "handbag": "bag",
    "backpack": "backpack",
    "suitcase": "suitcase",
    "umbrella": "umbrella",
    "tie": "tie",
}

# What catalog teams file beside garments, parsed per pixel by the garment stage (bag and tie are
# ACCESSORIES already: one category each, whichever stage finds them).
CATALOG_ITEMS = ("shoes", "belt", "hat", "glasses", "scarf")

# The garment parser's per-pixel classes (value = index; 255 = pixels neither trained nor scored).
# Skin and hair are parse classes, never garments. top / outwear / dress get their DeepFashion2
# name from the sleeve length (models/garments.py: sleeve_length).
GARMENT_PARSE = (
    "background",
    "skin",
    "hair",
    "top",
    "outwear",
    "dress",
    "skirt",
    "shorts",
    "trousers",
    "shoes",
    "bag",
    "belt",
    "hat",
    "glasses",
    "scarf",
    "tie",
)
PARSE_IGNORE = 255
PARSE_SUPERCATEGORY = "garment_parse"  # the categories of a training or ground-truth file of parse regions
NOT_GARMENTS = ("background", "skin", "hair")

# Clothing Co-Parsing's 59 labels (label_list.mat order, 0 = null) -> a parse class, or None:
# dropped on purpose (PARSE_IGNORE: neither trained nor scored) because no product class files
# it or it is too rare / small to learn from 703 photos (jewellery, gloves, legwear, underwear).
CCP_TO_PARSE = {
    "null": "background",
    "accessories": None,
    "bag": "bag",
    "belt": "belt",
    "blazer": "outwear",
    "blouse": "top",
    "bodysuit": "top",
    "boots": "shoes",
    "bra": None,
    "bracelet": None,
    "cape": "outwear",
    "cardigan": "outwear",
    "clogs": "shoes",
    "coat": "outwear",
    "dress": "dress",
    "earrings": None,
    "flats": "shoes",
    "glasses": "glasses",
    "gloves": None,
    "hair": "hair",
    "hat": "hat",
    "heels": "shoes",
    "hoodie": "top",
    "intimate": None,
    "jacket": "outwear",
    "jeans": "trousers",
    "jumper": "top",
    "leggings": "trousers",
    "loafers": "shoes",
    "necklace": None,
    "panties": None,
    "pants": "trousers",
    "pumps": "shoes",
    "purse": "bag",
    "ring": None,
    "romper": None,
    "sandals": "shoes",
    "scarf": "scarf",
    "shirt": "top",
    "shoes": "shoes",
    "shorts": "shorts",
    "skin": "skin",
    "skirt": "skirt",
    "sneakers": "shoes",
    "socks": None,
    "stockings": None,
    "suit": "outwear",
    "sunglasses": "glasses",
    "sweater": "top",
    "sweatshirt": "top",
    "swimwear": None,
    "t-shirt": "top",
    "tie": "tie",
    "tights": None,
    "top": "top",
    "vest": "top",
    "wallet": "bag",
    "watch": None,
    "wedges": "shoes",
}

# A parse class with sleeves -> its DeepFashion2 name per sleeve length ("none" = sleeveless).
SLEEVED = {
    "top": {"none": "vest", "short": "short_sleeve_top", "long": "long_sleeve_top"},
    "outwear": {"none": "vest", "short": "short_sleeve_outwear", "long": "long_sleeve_outwear"},
    "dress": {"none": "vest_dress", "short": "short_sleeve_dress", "long": "long_sleeve_dress"},
}
# Any garment category the product writes -> the parse class it comes from (evaluation on parse maps).
PARSE_OF = {name: parse for parse, names in SLEEVED.items() for name in names.values()} | {
    "vest": "top",
    "sling": "top",
    "sling_dress": "dress",
    "shorts": "shorts",
    "trousers": "trousers",
    "skirt": "skirt",
    **{name: name for name in ("shoes", "bag", "belt", "hat", "glasses", "scarf", "tie")},
}
# Parse classes merged into the pose regions the bootstrap clothing stage wrote before (comparison).
REGION_OF_PARSE = {
    "top": "upper_body_garment",
    "outwear": "upper_body_garment",
    "skirt": "lower_body_garment",
    "shorts": "lower_body_garment",
    "trousers": "lower_body_garment",
    "dress": "full_body_garment",
}


def parse_value_of(categories: list[dict]) -> dict[int, int]:
    """Category id -> parse map value for a file of parse regions: supercategory
    "garment_parse" (jobs/convert.py --format ccp; "ignore" -> 255), or Clothing Co-Parsing's
    own COCO view (every category a CCP label, remapped by CCP_TO_PARSE)."""
    ours = {
        c["id"]: PARSE_IGNORE if c["name"] == "ignore" else GARMENT_PARSE.index(c["name"])
        for c in categories
        if c.get("supercategory") == PARSE_SUPERCATEGORY and (c["name"] in GARMENT_PARSE[1:] or c["name"] == "ignore")
    }
    if ours or not categories or not all(c["name"] in CCP_TO_PARSE for c in categories):
        return ours
    return {
        c["id"]: PARSE_IGNORE if CCP_TO_PARSE[c["name"]] is None else GARMENT_PARSE.index(CCP_TO_PARSE[c["name"]])
        for c in categories
    }


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
    for name in CATALOG_ITEMS:
        cats.append({"id": next_id, "name": name, "supercategory": "footwear" if name == "shoes" else "accessory"})
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


# AVA 2.2's actions (ava_action_list_v2.2.pbtxt): id -> name, in its order. Ids 1-14 are
# person movements, 15-63 object manipulation, 64-80 person interaction.
AVA_ACTIONS = dict(
    enumerate(
        (
            "bend/bow (at the waist)",
            "crawl",
            "crouch/kneel",
            "dance",
            "fall down",
            "get up",
            "jump/leap",
            "lie/sleep",
            "martial art",
            "run/jog",
            "sit",
            "stand",
            "swim",
            "walk",
            "answer phone",
            "brush teeth",
            "carry/hold (an object)",
            "catch (an object)",
            "chop",
            "climb (e.g., a mountain)",
            "clink glass",
            "close (e.g., a door, a box)",
            "cook",
            "cut",
            "dig",
            "dress/put on clothing",
            "drink",
            "drive (e.g., a car, a truck)",
            "eat",
            "enter",
            "exit",
            "extract",
            "fishing",
            "hit (an object)",
            "kick (an object)",
            "lift/pick up",
            "listen (e.g., to music)",
            "open (e.g., a window, a car door)",
            "paint",
            "play board game",
            "play musical instrument",
            "play with pets",
            "point to (an object)",
            "press",
            "pull (an object)",
            "push (an object)",
            "put down",
            "read",
            "ride (e.g., a bike, a car, a horse)",
            "row boat",
            "sail boat",
            "shoot",
            "shovel",
            "smoke",
            "stir",
            "take a photo",
            "text on/look at a cellphone",
            "throw",
            "touch (an object)",
            "turn (e.g., a screwdriver)",
            "watch (e.g., TV)",
            "work on a computer",
            "write",
            "fight/hit (a person)",
            "give/serve (an object) to (a person)",
            "grab (a person)",
            "hand clap",
            "hand shake",
            "hand wave",
            "hug (a person)",
            "kick (a person)",
            "kiss (a person)",
            "lift (a person)",
            "listen to (a person)",
            "play with kids",
            "push (another person)",
            "sing to (e.g., self, a person, a group)",
            "take (an object) from (a person)",
            "talk to (e.g., self, a person, a group)",
            "watch (a person)",
        ),
        start=1,
    )
)
AVA_ACTION_ID = {name: i for i, name in AVA_ACTIONS.items()}
# the 60 classes AVA's official frame-mAP is reported over (ava_action_list_v2.2_for_activitynet_2019)
AVA_EVALUATED = (
    1,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    17,
    20,
    22,
    24,
    26,
    27,
    28,
    29,
    30,
    34,
    36,
    37,
    38,
    41,
    43,
    45,
    46,
    47,
    48,
    49,
    51,
    52,
    54,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    66,
    67,
    68,
    69,
    70,
    72,
    73,
    74,
    76,
    77,
    78,
    79,
    80,
)
