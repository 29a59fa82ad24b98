"""Synthetic scenes: deterministic, internally consistent ground truth, valid COCO; and the
make_synthetic -> label_corpus -> evaluate loop end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from fashion_ray import masks as rle
from fashion_ray import taxonomy
from fashion_ray.bench import synth
from helpers import job_main


def test_same_seed_same_scene_other_seed_other_scene():
    a_img, a_people = synth.render_scene(7, 3)
    b_img, b_people = synth.render_scene(7, 3)
    c_img, _ = synth.render_scene(8, 3)
    assert np.array_equal(a_img, b_img) and not np.array_equal(a_img, c_img)
    assert [p.box for p in a_people] == [p.box for p in b_people]


@pytest.mark.parametrize("index", range(12))
def test_ground_truth_is_consistent(index):
    img, people = synth.render_scene(0, index)
    assert img.shape == (320, 320, 3) and img.dtype == np.uint8
    for p in people:
        assert np.array_equal(p.parts > 0, p.mask), "every person pixel in exactly one part"
        assert p.box == rle.bbox_xyxy(p.mask), "box tight around the mask"
        head = p.parts == 1
        covered = np.zeros_like(p.mask)
        for category, g in p.garments:
            assert category in taxonomy.DEEPFASHION2
            assert not (g & ~p.mask).any() and not (g & head).any()
            assert not (g & covered).any(), "garments of one person do not overlap"
            covered |= g
        assert set(np.unique(p.sides[p.parts == 1])) <= {0}
    for a in range(len(people)):  # occlusion: visible masks of different people never overlap
        for b in range(a + 1, len(people)):
            assert not (people[a].mask & people[b].mask).any()


def test_scenes_are_varied():
    counts, categories, sizes = set(), set(), []
    for i in range(60):
        _, people = synth.render_scene(1, i)
        counts.add(len(people))
        for p in people:
            categories |= {c for c, _ in p.garments}
            sizes.append(p.box[3] - p.box[1])
    assert {0, 1, 2, 3} <= counts
    assert len(categories) >= 12  # nearly all 13 DeepFashion2 categories in 60 images
    assert min(sizes) < 80 < 200 < max(sizes)


def test_make_synthetic_sharding_does_not_change_the_set(ray_session, tmp_path):
    one = synth.make_synthetic(str(tmp_path / "a"), 10, seed=3, rows_per_shard=10)
    many = synth.make_synthetic(str(tmp_path / "b"), 10, seed=3, rows_per_shard=3)
    assert len(one["shards"]) == 1 and len(many["shards"]) >= 4  # at most 3 rows a shard
    assert sum(s["rows"] for s in many["shards"]) == 10 and max(s["rows"] for s in many["shards"]) <= 3

    def rows(folder, manifest):
        out = {}
        for s in manifest["shards"]:
            for r in pq.read_table(tmp_path / folder / s["parquet"]).to_pylist():
                out[os.path.basename(r["uri"])] = r["persons"]
        return out

    assert rows("a", one) == rows("b", many)
    for s in many["shards"]:
        gt = COCO(str(tmp_path / "b" / s["coco"]))
        anns = gt.loadAnns(gt.getAnnIds())
        persons = {a["id"] for a in anns if a["category_id"] == 1}
        for a in anns:
            assert gt.annToMask(a).sum() == a["area"]
            if a["category_id"] != 1:
                assert a["parent_person_id"] in persons


def test_make_label_evaluate_end_to_end(ray_session, tmp_path, capsys):
    """The three jobs' main() in turn, as their CLIs call them, on the tests' Ray."""
    synth_dir, labels = tmp_path / "synth", tmp_path / "labels"
    assert job_main("make_synthetic", "--output", str(synth_dir), "--count", "8") == 0
    assert job_main("label_corpus", "--input", str(synth_dir / "images"), "--output", str(labels)) == 0
    capsys.readouterr()
    assert job_main("evaluate", "--predictions", str(labels), "--ground-truth", str(synth_dir)) == 0
    scored = capsys.readouterr().out
    report = json.loads((labels / "eval" / "evaluation.json").read_text())
    gt_persons = json.loads((synth_dir / "manifest.json").read_text())["counts"]["persons"]
    assert report["counts"]["images"] == 8 and report["counts"]["persons_gt"] == gt_persons
    assert "| AP | 0.50:0.95 | all | 100 |" in scored and "## Body parts (IoU)" in scored
