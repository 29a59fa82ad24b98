"""Reading label sets back as COCO: a labelling run or synthetic set, a folder of COCO shards,
a COCO file, or a COCO results list. Evaluation, converters and exporters read through here.
"""

from __future__ import annotations

import json

from fashion_ray import storage, taxonomy
from fashion_ray.formats.coco import coco_document
from fashion_ray.formats.shards import iter_shard_rows, read_manifest


def _read_json(uri: str, options=None):
    fs, path = storage.filesystem(uri, options)
    return json.loads(fs.cat_file(path))


def iter_coco_chunks(uri: str, options=None):
    """Yield (images, annotations, error rows) one shard at a time.

    A run or synthetic folder (manifest.json) is read from its Parquet shards, the source of
    truth (error rows included); otherwise a folder of COCO shards, a COCO file, or a COCO
    results list (annotations only).
    """
    fs, path = storage.filesystem(uri, options)
    if fs.isdir(path):
        if fs.exists(storage.filesystem(storage.join(uri, "manifest.json"), options)[1]):
            for rows in iter_shard_rows(uri, read_manifest(uri, options), options):
                doc = coco_document(rows)
                yield doc["images"], doc["annotations"], sum(r["status"] == "error" for r in rows)
            return
        protocol = storage.split_uri(uri)[0]
        for name in sorted(n for n in fs.find(path) if n.endswith(".json")):
            doc = _read_json(storage.to_uri(protocol, name), options)
            yield doc.get("images", []), doc.get("annotations", []), 0
        return
    doc = _read_json(uri, options)
    if isinstance(doc, list):
        yield [], doc, 0
    else:
        yield doc.get("images", []), doc.get("annotations", []), 0


def load_coco(uri: str, options=None) -> tuple[dict, int]:
    """The whole set as one COCO dict (small sets, tests); evaluate_uris streams instead."""
    images, anns, errors = {}, [], 0
    for chunk_images, chunk_anns, chunk_errors in iter_coco_chunks(uri, options):
        images.update({i["id"]: i for i in chunk_images})
        anns += chunk_anns
        errors += chunk_errors
    return {"images": list(images.values()), "annotations": anns, "categories": taxonomy.COCO_CATEGORIES}, errors
