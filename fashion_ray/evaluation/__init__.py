"""Evaluation that reports what the seeds report, one module per kind of score:

- coco.py: COCO 12-line AP/AR tables (person boxes, garment boxes and masks, class-agnostic
  garments, accessories) and person counts;
- semantic.py: per-part IoU with seed 004's hierarchy levels, garment parse IoU (CCP), garments
  of classes a photo does not have;
- actions.py: AVA frame-mAP with per-action precision / recall;
- runs.py: a labelling run (or any COCO predictions) scored against a ground truth in one pass;
- reports.py: the Markdown reports; pictures.py: PR curves and the worst cases as an HTML page.

Each scorer has detectron2's evaluator shape (reset / process(images, gt, dt) / evaluate);
below are the entry points the jobs and the trainer use.
"""

from fashion_ray.evaluation.actions import ava_frame_map, average_precision, evaluate_actions, evaluate_actions_uris
from fashion_ray.evaluation.coco import CocoTable, PersonCounts
from fashion_ray.evaluation.reports import TABLES, actions_to_markdown, parse_to_markdown, to_markdown
from fashion_ray.evaluation.runs import evaluate, evaluate_uris
from fashion_ray.evaluation.semantic import AbsentGarments, ParseEvaluator, PartsEvaluator, evaluate_parse_uris

__all__ = [
    "TABLES",
    "AbsentGarments",
    "CocoTable",
    "ParseEvaluator",
    "PartsEvaluator",
    "PersonCounts",
    "actions_to_markdown",
    "ava_frame_map",
    "average_precision",
    "evaluate",
    "evaluate_actions",
    "evaluate_actions_uris",
    "evaluate_parse_uris",
    "evaluate_uris",
    "parse_to_markdown",
    "to_markdown",
]
