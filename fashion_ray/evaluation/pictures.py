"""The pictures an evaluation comes with: precision-recall curves per class (PNG) and an HTML
page of the worst misses and false positives as crops, written beside evaluation.json.
"""

from __future__ import annotations

import html
import io
import os

import numpy as np

from fashion_ray import storage

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds
CROP_SIDE = 160


def pr_curve_png(title: str, curves: dict[str, dict[str, list[float]]]) -> bytes:
    """One PNG: precision against recall per class, at IoU 0.5 (solid) and 0.75 (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for k, (name, by_iou) in enumerate(sorted(curves.items())):
        colour = plt.cm.tab10(k % 10)
        for iou, style in (("0.50", "-"), ("0.75", "--")):
            precision = np.array(by_iou[iou])
            reached = precision > -1  # -1: COCOeval never reached that recall
            ax.plot(
                RECALL_POINTS[reached], precision[reached], style, color=colour, label=name if iou == "0.50" else None
            )
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"{title} (solid: IoU 0.5, dashed: 0.75)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _crop_jpeg(path: str, box, options) -> bytes | None:
    """The case's box on its photo with some context, outlined, as a small JPEG; None if unreadable."""
    from PIL import Image, ImageDraw

    try:
        fs, local = storage.filesystem(path, options)
        image = Image.open(io.BytesIO(fs.cat_file(local))).convert("RGB")
    except Exception:  # a photo moved since: the page says so instead of failing the report
        return None
    x, y, w, h = box
    pad = 0.3 * max(w, h) + 8
    x0, y0 = max(0, int(x - pad)), max(0, int(y - pad))
    x1, y1 = min(image.width, int(x + w + pad)), min(image.height, int(y + h + pad))
    crop = image.crop((x0, y0, x1, y1))
    ImageDraw.Draw(crop).rectangle((x - x0, y - y0, x - x0 + w, y - y0 + h), outline=(255, 40, 40), width=2)
    crop.thumbnail((CROP_SIDE, CROP_SIDE))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def photo_path(file_name: str, photos_root: str) -> str:
    """Where a ground-truth photo is: a URI or an absolute path as it is; a relative one under the
    ground truth's folder, unless it names a file from here already (a labelling run or synthetic
    set records the paths it was given, `out/synth/images/...`, folder included)."""
    if "://" in file_name or os.path.isabs(file_name) or os.path.isfile(file_name):
        return file_name
    return storage.join(photos_root, file_name)


def write_pictures(report: dict, tables: list[tuple[str, str]], out: str, photos_root: str, options=None) -> list[str]:
    """pr_<table>.png per scored table and worst.html with crops under out/worst/; returns the files written."""
    written = []
    sections = []
    for title, key in tables:
        table = report[key]
        if not table["gt"]:
            continue
        if table.get("pr_curves"):
            name = f"pr_{key}.png"
            storage.write_bytes_atomic(storage.join(out, name), pr_curve_png(title, table["pr_curves"]), options)
            written.append(name)
        cells = []
        for k, case in enumerate(table.get("worst", [])):
            path = photo_path(case.get("file_name", ""), photos_root)
            jpeg = _crop_jpeg(path, case["box"], options)
            picture = "(photo not readable)"
            if jpeg is not None:
                crop_name = f"worst/{key}_{k}.jpg"
                storage.write_bytes_atomic(storage.join(out, crop_name), jpeg, options)
                picture = f'<img src="{crop_name}">'
            score = "" if case.get("score") is None else f" score {case['score']:.2f}"
            cells.append(
                f"<figure>{picture}<figcaption>{html.escape(case['kind'])}: {html.escape(case['category'])}"
                f"{score}<br>{html.escape(os.path.basename(path))}</figcaption></figure>"
            )
        if cells:
            sections.append(
                f"<h2>{html.escape(title)}</h2><p>misses (largest first), then false positives "
                f"(highest score first), at IoU 0.5</p><div>{''.join(cells)}</div>"
            )
    page = (
        "<!doctype html><meta charset='utf-8'><title>fashion-ray: worst cases</title><style>"
        "figure{display:inline-block;margin:4px;font:11px sans-serif;width:170px;vertical-align:top}</style>"
        "<h1>Worst misses and false positives</h1>" + ("".join(sections) or "<p>none</p>")
    )
    storage.write_bytes_atomic(storage.join(out, "worst.html"), page.encode(), options)
    return written + ["worst.html"]
