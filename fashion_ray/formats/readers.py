"""Reading label sets back as COCO: a labelling run or synthetic set, a folder of COCO shards,
a COCO file, or a COCO results list. Evaluation, converters and exporters read through here.
"""

from __future__ import annotations

import json
from collections import Counter

from fashion_ray import storage, taxonomy
from fashion_ray.formats.coco import coco_document
from fashion_ray.formats.shards import iter_shard_rows, read_manifest


def _read_json(uri: str, options=None):
    fs, path = storage.filesystem(uri, options)
    return json.loads(fs.cat_file(path))


def to_our_categories(doc: dict, skipped: Counter | None = None) -> list[dict]:
    """A COCO document's annotations with category ids mapped to ours by name (COCO val's
    "bicycle" is id 2 there and a garment id here). Annotations of categories we do not label
    are left out and counted by name in `skipped`. A document without categories (a results
    list, our own shards' ids) is taken as using ours."""
    categories = doc.get("categories")
    if not categories:
        return doc.get("annotations", [])
    ours = {}
    for c in categories:
        name = taxonomy.NAME_ALIASES.get(c["name"], c["name"])
        if name in taxonomy.COCO_CATEGORY_ID:
            ours[c["id"]] = taxonomy.COCO_CATEGORY_ID[name]
    names = {c["id"]: c["name"] for c in categories}
    out = []
    for a in doc.get("annotations", []):
        if a["category_id"] in ours:
            out.append({**a, "category_id": ours[a["category_id"]]})
        elif skipped is not None:
            skipped[names.get(a["category_id"], str(a["category_id"]))] += 1
    return out


def iter_coco_chunks(uri: str, options=None, skipped: Counter | None = None):
    """Yield (images, annotations, error rows) one shard at a time, category ids ours.

    A run or synthetic folder (manifest.json) is read from its Parquet shards, the source of
    truth (error rows included); otherwise a folder of COCO shards, a COCO file, or a COCO
    results list (annotations only). Annotations of categories that are not ours are counted
    in `skipped` (name -> count) and left out.
    """
    fs, path = storage.filesystem(uri, options)
    if fs.isdir(path):
        if fs.exists(storage.filesystem(storage.join(uri, "manifest.json"), options)[1]):
            for rows in iter_shard_rows(uri, read_manifest(uri, options), options):
                doc = coco_document(rows)
                yield doc["images"], doc["annotations"], sum(r["status"] == "error" for r in rows)
            return
        if fs.exists(storage.filesystem(storage.join(uri, "_lease.json"), options)[1]):
            # a run folder without its manifest: running, or crashed before its first commit
            raise FileNotFoundError(f"{uri}: no manifest.json yet (the run has not committed anything)")
        protocol = storage.split_uri(uri)[0]
        for name in sorted(n for n in fs.find(path) if n.endswith(".json")):
            doc = _read_json(storage.to_uri(protocol, name), options)
            yield doc.get("images", []), to_our_categories(doc, skipped), 0
        return
    doc = _read_json(uri, options)
    if isinstance(doc, list):
        yield [], doc, 0
    else:
        yield doc.get("images", []), to_our_categories(doc, skipped), 0


def load_coco(uri: str, options=None) -> tuple[dict, int]:
    """The whole set as one COCO dict (small sets, tests); evaluate_uris streams instead."""
    images, anns, errors = {}, [], 0
    for chunk_images, chunk_anns, chunk_errors in iter_coco_chunks(uri, options):
        images.update({i["id"]: i for i in chunk_images})
        anns += chunk_anns
        errors += chunk_errors
    return {"images": list(images.values()), "annotations": anns, "categories": taxonomy.COCO_CATEGORIES}, errors
