"""The reports as Markdown, laid out as the seeds lay them out (seed 001's COCO tables, seed
004's part and parse columns, the AVA table)."""

from __future__ import annotations

from fashion_ray.evaluation.coco import STAT_LINES


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


SEED004_COLUMNS = [
    ("Background", "background"),
    ("Low hand", "lower_arm"),
    ("Torso", "torso"),
    ("Low leg", "lower_leg"),
    ("Head", "head"),
    ("Up leg", "upper_leg"),
    ("Up hand", "upper_arm"),
]


TABLES = [
    ("Person boxes", "person_bbox"),
    ("Garment boxes (DeepFashion2 classes)", "garment_bbox"),
    ("Garment masks (DeepFashion2 classes)", "garment_segm"),
    ("Garment boxes (class-agnostic)", "any_garment_bbox"),
    ("Garment masks (class-agnostic)", "any_garment_segm"),
    ("Accessory boxes", "accessory_bbox"),
]


def to_markdown(report: dict) -> str:
    """The report as Markdown: only the tables the ground truth has labels for."""
    c = report["counts"]
    out = [
        f"# Evaluation\n\nimages {c['images']}, error rows {c['error_rows']}; persons: {c['persons_gt']} in ground truth, "
        f"{c['persons_matched']} matched (IoU >= 0.5), {c['persons_missed']} missed, {c['persons_extra']} extra\n"
    ]
    unscored = [title for title, key in TABLES if not report[key]["gt"]] + (
        [] if report["parts"]["gt"] else ["Body parts"]
    )
    if c["persons_gt"]:
        out.append("| person score >= | " + " | ".join(c["at_score"]) + " |\n|:--|" + ":--:|" * len(c["at_score"]))
        out.append(
            "| matched / extra | "
            + " | ".join(f"{v['matched']} / {v['extra']}" for v in c["at_score"].values())
            + " |\n"
        )
    if unscored:
        out.append(f"Not scored (no ground truth of their categories): {', '.join(unscored)}.\n")
    skipped = report.get("skipped_ground_truth") or {}
    if skipped:
        out.append(
            f"Ground truth of categories fashion-ray does not label, skipped: "
            f"{', '.join(f'{name} {n}' for name, n in skipped.items())}.\n"
        )
    for title, key in TABLES:
        t = report[key]
        if not t["gt"]:
            continue
        out.append(f"## {title}\n\n{t['gt']} ground-truth, {t['dt']} predicted\n")
        out.append("| metric | IoU | area | maxDets | value |\n|:--:|:--:|:--:|:--:|:--:|")
        out += [f"| {m} | {iou} | {area} | {md} | {_fmt(v)} |" for (m, iou, area, md), v in zip(STAT_LINES, t["stats"])]
        if t["per_category"] and len(t["per_category"]) > 1:
            out.append("\n| category | AP |\n|:--|:--:|")
            out += [f"| {k} | {_fmt(v)} |" for k, v in t["per_category"].items()]
        out.append("")
    p = report["parts"]
    if p["gt"]:
        # seed 004's columns, in its order and with its names
        out.append("## Body parts (IoU)\n")
        out.append(
            "| "
            + " | ".join([title for title, _ in SEED004_COLUMNS] + ["Upper body", "Lower body", "Body", "mIoU (parts)"])
            + " |"
        )
        out.append("|" + "---|" * (len(SEED004_COLUMNS) + 4))
        out.append(
            "| "
            + " | ".join(
                [_fmt(p["iou"][n]) for _, n in SEED004_COLUMNS]
                + [_fmt(p["levels"][lv]) for lv in ("upper_body", "lower_body", "body")]
                + [_fmt(p["miou_parts"])]
            )
            + " |"
        )
    return "\n".join(out) + "\n"


def parse_to_markdown(report: dict) -> str:
    """Seed 004's layout: one row per table, a column per class, the mean last."""
    out = [
        f"# Garment parsing (per-class IoU)\n\nimages {report['counts']['images']}, error rows {report['counts']['error_rows']}\n"
    ]
    for title, key, mean in (
        ("Garment classes", "garment_parse", "miou_garments"),
        ("Pose regions (classes merged)", "garment_regions", "miou_regions"),
    ):
        iou = report[key]["iou"]
        names = list(iou)
        out.append(f"## {title}\n\n| | " + " | ".join(names) + " | mIoU |\n|:--|" + ":--:|" * (len(names) + 1))
        out.append("| IoU | " + " | ".join(_fmt(iou[n]) for n in names) + f" | {_fmt(report[key][mean])} |\n")
    absent = report.get("absent_garments")
    if absent:
        names = list(absent["by_class_labelled_person"])
        out.append(
            f"## Garments of a class the photo does not have, per photo\n\nlabelled person found on "
            f"{absent['labelled_person_found']} of {absent['photos']} photos\n\n| | "
            + " | ".join(names)
            + " | all |\n|:--|"
            + ":--:|" * (len(names) + 1)
        )
        for label, key, total in (
            ("labelled person", "by_class_labelled_person", "per_photo_labelled_person"),
            ("every person", "by_class_all_persons", "per_photo_all_persons"),
        ):
            out.append(
                f"| {label} | " + " | ".join(f"{absent[key][n]:.2f}" for n in names) + f" | {absent[total]:.2f} |"
            )
        out.append("")
    return "\n".join(out)


def actions_to_markdown(report: dict) -> str:
    out = [
        f"AVA frame-mAP at IoU {report['iou']}: **{_fmt(report['frame_mAP'])}** over {len(report['per_class'])} "
        f"actions, {report['keyframes']} keyframes; precision / recall of detections scored >= {report['threshold']}",
        "",
        "| action | AVA id | ground truth | AP | detections | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in report["per_class"].items():
        out.append(
            f"| {name} | {c['id']} | {c['positives']} | {_fmt(c['ap'])} | {c['detections']} | {_fmt(c['precision'])} "
            f"| {_fmt(c['recall'])} |"
        )
    single = report.get("single_label")
    if single and single["matched_persons"]:
        out += [
            "",
            f"Persons with one labelled action, matched to a detected person: {single['matched_persons']}; "
            f"the top-scored of the scored actions is that one for **{_fmt(single['accuracy'])}** of them "
            f"({', '.join(f'{k}: {v}' for k, v in single['confusion'].items())}).",
        ]
    return "\n".join(out) + "\n"
