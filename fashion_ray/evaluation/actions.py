"""AVA actions: frame-mAP at IoU 0.5 (the official evaluation's AP), per-action precision and
recall, single-label accuracy; ground truth and predictions read from AVA CSVs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from fashion_ray import storage, taxonomy
from fashion_ray.boxes import box_iou_matrix


def average_precision(scores: np.ndarray, true_positive: np.ndarray, positives: int) -> float:
    """Pascal VOC's AP (as AVA's official evaluation computes it): precision made
    non-increasing, summed over the recall steps."""
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(true_positive[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / positives
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def ava_frame_map(
    ground_truth: list[tuple], detections: list[tuple], classes=None, iou: float = 0.5, threshold: float = 0.5
) -> dict:
    """AVA's frame-mAP: per action class, detections (video_id, timestamp, x0, y0, x1, y1,
    action_id, score) are matched in each keyframe (video_id, timestamp) to ground-truth boxes
    of that class (video_id, timestamp, x0, y0, x1, y1, action_id), highest score first, each
    to the box it overlaps most (IoU >= iou), a box matched once; AP per class as Pascal VOC,
    the mean over the classes with ground truth (`classes`: the classes evaluated, default
    every class in the ground truth). Beside AP, each class's precision and recall of the
    detections scored >= threshold (what a user filtering on the score gets)."""

    def key(row):
        return str(row[0]), round(float(row[1]), 3)

    wanted = set(classes) if classes is not None else {int(r[6]) for r in ground_truth}
    per_class, details = {}, {}
    for cls in sorted(wanted):
        gt: dict[tuple, list] = {}
        for r in ground_truth:
            if int(r[6]) == cls:
                gt.setdefault(key(r), []).append([float(v) for v in r[2:6]])
        dets: dict[tuple, list] = {}
        for r in detections:
            if int(r[6]) == cls:
                dets.setdefault(key(r), []).append((float(r[7]), [float(v) for v in r[2:6]]))
        positives = sum(len(v) for v in gt.values())
        scores, hits = [], []
        for frame, found in dets.items():
            found.sort(key=lambda d: -d[0])
            boxes = np.asarray(gt.get(frame, []), np.float64).reshape(-1, 4)
            taken = np.zeros(len(boxes), bool)
            overlaps = box_iou_matrix(np.asarray([b for _, b in found]), boxes) if len(boxes) else None
            for k, (score, _) in enumerate(found):
                scores.append(score)
                best = int(np.argmax(overlaps[k])) if overlaps is not None else -1
                hit = best >= 0 and overlaps[k, best] >= iou and not taken[best]
                if hit:
                    taken[best] = True
                hits.append(hit)
        if positives:
            scores_arr, hits_arr = np.asarray(scores, np.float64), np.asarray(hits, bool)
            per_class[cls] = average_precision(scores_arr, hits_arr, positives)
            kept = scores_arr >= threshold
            details[cls] = {
                "ap": per_class[cls],
                "positives": positives,
                "detections": int(kept.sum()),
                "precision": float(hits_arr[kept].mean()) if kept.any() else None,
                "recall": float(hits_arr[kept].sum() / positives),
            }
    values = [v for v in per_class.values() if not math.isnan(v)]
    return {
        "frame_mAP": float(np.mean(values)) if values else float("nan"),
        "per_class_AP": per_class,
        "per_class": details,
        "iou": iou,
        "threshold": threshold,
    }


def snap_to_keyframes(ground_truth: list, detections: list, tolerance_s: float = 0.25) -> list[tuple]:
    """The detections (AvaLine) at a ground-truth keyframe of their video, their timestamp moved
    to it: sampled frames sit at true presentation times (2.002 s in a 29.97 fps video), AVA's
    keyframes at whole seconds. A detection farther than tolerance_s from every keyframe is not
    evaluated, as AVA scores keyframes only: a video sampled at 3 fps is not charged a false
    positive for each person on the frames between its labelled ones."""
    keyframes: dict[str, np.ndarray] = {}
    for line in ground_truth:
        keyframes.setdefault(line.video_id, set()).add(line.timestamp)
    keyframes = {v: np.array(sorted(t)) for v, t in keyframes.items()}
    out = []
    for d in detections:
        times = keyframes.get(d.video_id)
        if times is None:
            continue
        nearest = times[int(np.argmin(np.abs(times - d.timestamp)))]
        if abs(nearest - d.timestamp) <= tolerance_s:
            out.append((d.video_id, float(nearest), *d.box, d.action_id, d.value))
    return out


def evaluate_actions(
    ground_truth: list, detections: list, *, classes=None, threshold: float = 0.5, tolerance_s: float = 0.25
) -> dict:
    """Frame-mAP and per-action precision / recall of AVA detections (formats.ava.AvaLine)
    against AVA ground truth, and the single-label accuracy over the classes scored; keyed by
    AVA name in the report."""
    gt = [(g.video_id, g.timestamp, *g.box, g.action_id) for g in ground_truth]
    snapped = snap_to_keyframes(ground_truth, detections, tolerance_s)
    report = ava_frame_map(gt, snapped, classes=classes, threshold=threshold)
    return {
        "frame_mAP": report["frame_mAP"],
        "iou": report["iou"],
        "threshold": threshold,
        "keyframes": len({(g.video_id, g.timestamp) for g in ground_truth}),
        "per_class": {taxonomy.AVA_ACTIONS.get(k, str(k)): {"id": k, **v} for k, v in report["per_class"].items()},
        "single_label": single_label_accuracy(
            ground_truth, snapped, classes if classes is not None else {g.action_id for g in ground_truth}
        ),
    }


def read_ava_uris(uri: str, options=None) -> list:
    """AVA lines from a CSV file, or a labelling run's persons' actions (photos too: a photo
    is video_id = its file name without extension, at timestamp 0, as the Penn-Fudan
    conversion writes its ground truth)."""
    from fashion_ray.formats import ava
    from fashion_ray.formats.shards import iter_shard_rows, read_manifest

    if uri.endswith(".csv"):
        fs, path = storage.filesystem(uri, options)
        return ava.read_csv(fs.cat_file(path), uri)
    lines = []
    for rows in iter_shard_rows(uri, read_manifest(uri, options), options):
        for row in rows:
            if row["status"] != "ok":
                continue
            w, h, t = row["width"], row["height"], row["timestamp_s"] or 0.0
            for p in row["persons"]:
                box = (p["box"][0] / w, p["box"][1] / h, p["box"][2] / w, p["box"][3] / h)
                lines += [
                    ava.AvaLine(ava.video_id_of(row["uri"]), t, box, a["action_id"], a["score"]) for a in p["actions"]
                ]
    return lines


def single_label_accuracy(ground_truth: list, detections: list[tuple], classes, iou: float = 0.5) -> dict:
    """Of the labelled persons with exactly one action among `classes` that a detected person
    matches (IoU >= iou), the share whose highest-scored action among `classes` is that one
    (Penn-Fudan's walking / standing). A matched person without any of them counts as wrong."""
    classes = set(classes)
    people: dict[tuple, dict] = {}
    for g in ground_truth:
        people.setdefault((g.video_id, g.timestamp, g.value, g.box), set()).add(g.action_id)
    detected: dict[tuple, dict] = {}
    for d in detections:
        detected.setdefault((d[0], round(float(d[1]), 3)), {}).setdefault(tuple(d[2:6]), {})[int(d[6])] = float(d[7])
    matched = correct = 0
    confusion: Counter = Counter()
    for (video_id, t, _, box), labels in people.items():
        labels &= classes
        if len(labels) != 1:
            continue
        candidates = detected.get((video_id, round(t, 3)), {})
        overlaps = (
            box_iou_matrix(np.asarray([box]), np.asarray(list(candidates), np.float64).reshape(-1, 4))[0]
            if candidates
            else []
        )
        if not len(overlaps) or overlaps.max() < iou:
            continue
        scores = list(candidates.values())[int(np.argmax(overlaps))]
        scored = {k: v for k, v in scores.items() if k in classes}
        said = max(scored, key=scored.get) if scored else None
        truth = next(iter(labels))
        matched += 1
        correct += said == truth
        confusion[(taxonomy.AVA_ACTIONS[truth], taxonomy.AVA_ACTIONS.get(said, "none"))] += 1
    return {
        "matched_persons": matched,
        "accuracy": round(correct / matched, 4) if matched else None,
        "confusion": {f"{t} -> {s}": n for (t, s), n in sorted(confusion.items())},
    }


def evaluate_actions_uris(
    gt_uri: str, pred_uri: str, options=None, min_score: float = 0.0, threshold: float = 0.5
) -> dict:
    """`jobs/evaluate.py --mode actions`: a run's persons' actions (or an AVA CSV) against an
    AVA CSV, on the videos (photos) the ground truth covers. Classes scored: those in the
    ground truth that AVA's official evaluation lists (taxonomy.AVA_EVALUATED) or that our
    labellers write."""
    from fashion_ray.actions import RULE_ACTIONS

    ground_truth = read_ava_uris(gt_uri, options)
    if not ground_truth:
        raise ValueError(f"{gt_uri}: no AVA lines with an action id")
    videos = {g.video_id for g in ground_truth}  # a run may hold more videos than the ground truth covers
    detections = [d for d in read_ava_uris(pred_uri, options) if d.value >= min_score and d.video_id in videos]
    present = {g.action_id for g in ground_truth}
    classes = sorted(present & (set(taxonomy.AVA_EVALUATED) | set(RULE_ACTIONS)))
    report = evaluate_actions(ground_truth, detections, classes=classes, threshold=threshold)
    return {
        "ground_truth": gt_uri,
        "predictions": pred_uri,
        "min_score": min_score,
        **report,
        "not_labelled": sorted(taxonomy.AVA_ACTIONS[k] for k in present - set(classes) if k in taxonomy.AVA_ACTIONS),
    }
