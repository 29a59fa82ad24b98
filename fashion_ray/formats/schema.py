"""The Arrow schema of label rows: the one definition Parquet readers rely on.

One row per image (or sampled video frame). Nested: persons -> garments, parts.
Boxes are [x1, y1, x2, y2] in original image pixels; masks are COCO RLE at original size.
Bump SCHEMA_VERSION on any change; it is stored in the Parquet metadata and the manifest.
"""

from __future__ import annotations

import pyarrow as pa

# 2: COCO `attributes` became an object (name -> value); 3: persons gained `appearance`;
# 4: persons gained `actions`, rows `camera_shift`; 5: a garment's Parquet `attributes` became a
# map (name -> value) like COCO's, from a list of "name:value" strings; 6: persons gained
# `confident` (candidates under the person threshold are written too, a box and a score), rows
# `objects` (accessories no person holds); 7: objects gained `confident` (accessory candidates
# under the accessory threshold are written too, as objects of nobody's)
SCHEMA_VERSION = 7

RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
BOX = pa.list_(pa.float32())

GARMENT = pa.struct(
    [
        ("garment_id", pa.int32()),
        ("category", pa.string()),
        ("category_id", pa.int32()),  # COCO category id (taxonomy.COCO_CATEGORY_ID)
        ("score", pa.float32()),
        ("box", BOX),
        ("mask", RLE),
        ("attributes", pa.map_(pa.string(), pa.string())),  # e.g. {"sleeve": "long"}
    ]
)

PART = pa.struct(
    [
        ("part", pa.string()),  # head, torso, upper_arm, lower_arm, upper_leg, lower_leg
        ("part_id", pa.int32()),  # 1..6, Pascal-Person-Part order
        ("side", pa.string()),  # left / right / null where unknown
        ("area", pa.int64()),
        ("box", BOX),
        ("mask", RLE),
    ]
)

ACTION = pa.struct(
    [
        ("action_id", pa.int32()),  # AVA 2.2 action id (taxonomy.AVA_ACTIONS)
        ("action", pa.string()),  # its AVA name
        ("score", pa.float32()),
    ]
)

PERSON = pa.struct(
    [
        ("person_id", pa.int32()),  # index within the image; COCO ann ids derive from it
        ("track_id", pa.int64()),  # person track within a video (from 1), null for photos
        ("score", pa.float32()),
        # at or over the person threshold: false for a candidate, which has a box and a score only
        # (no mask, keypoints, garments, parts, actions or track); filter on it for the labels
        ("confident", pa.bool_()),
        ("box", BOX),
        ("mask", RLE),
        ("keypoints", pa.list_(pa.float32())),  # flattened x, y, visibility
        ("appearance", pa.list_(pa.float32())),  # colour descriptor (video/appearance.py) the tracker matches on
        ("garments", pa.list_(GARMENT)),
        ("parts", pa.list_(PART)),
        ("actions", pa.list_(ACTION)),  # multi-label, best first; empty without the actions stage
    ]
)

OBJECT = pa.struct(  # an accessory no person holds (a suitcase standing alone): a box, no mask
    [
        ("object_id", pa.int32()),  # index within the image; COCO ann ids derive from it
        ("category", pa.string()),  # bag, backpack, suitcase, umbrella, tie
        ("category_id", pa.int32()),
        ("score", pa.float32()),
        # at or over the accessory threshold: false for a candidate (linked to no person)
        ("confident", pa.bool_()),
        ("box", BOX),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("frame_index", pa.int64()),  # sampled video frame index, null for photos
        ("timestamp_s", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        # video frames: how far the scene moved (dx, dy px) since the previous sampled frame, a
        # panning camera's motion that actions take out of a walker's; null where not measured
        ("camera_shift", pa.list_(pa.float32())),
        ("status", pa.string()),  # "ok" | "error"
        (
            "error",
            pa.string(),
        ),  # reason: media.ERROR_REASONS, "model_error", or a plan's "no_frames_in_window" / "too_many_frames"
        ("error_detail", pa.string()),
        ("bundle_name", pa.string()),
        ("bundle_version", pa.string()),
        ("stages", pa.list_(pa.string())),
        ("persons", pa.list_(PERSON)),
        ("objects", pa.list_(OBJECT)),
    ],
    metadata={"fashion_ray.schema_version": str(SCHEMA_VERSION)},
)


def attribute_map(value) -> dict[str, str]:
    """A garment's attributes as {name: value}, from any shape a row holds them in: a dict, the
    (name, value) pairs pyarrow reads a map as, or the "name:value" cues the stages give and
    shards before schema 5 hold (a cue with no value reads "true")."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in value or []:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            out[str(item[0])] = str(item[1])
        else:
            name, sep, cue = str(item).partition(":")
            out[name] = cue if sep else "true"
    return out


def with_attribute_maps(rows: list[dict]) -> list[dict]:
    """The rows (in place) with every garment's attributes as a dict: what is written to, and
    read back from, the map column."""
    for row in rows:
        for person in row.get("persons") or []:
            for garment in person.get("garments") or []:
                garment["attributes"] = attribute_map(garment.get("attributes"))
    return rows


def is_confident(item: dict) -> bool:
    """A person or object (a row's, or its COCO annotation) at or over its class's threshold:
    what the stages label further, the tracker follows and previews draw as labels. Rows
    before schema 6 (objects: 7) hold no candidates (null here); garments and parts are never
    candidates."""
    return item.get("confident") is not False
