"""report.html: the whole evaluation on one self-contained page (PNGs embedded as base64)."""

from __future__ import annotations

import base64
import datetime as dt
from html import escape
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 4px; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 20px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0 20px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 1.5em; }
figure { margin: 16px 0; } figcaption { color: #555; margin-bottom: 6px; }
img { max-width: 100%; border: 1px solid #eee; }
.pair { display: flex; gap: 16px; flex-wrap: wrap; } .pair figure { flex: 1 1 45%; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(Path(path).name)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{_img(path)}</figure>"


def _per_class_table(per_class: dict[str, dict]) -> str:
    known = ["precision", "recall", "f1", "auroc", "average_precision", "support", "threshold"]
    cols = [c for c in known if c in next(iter(per_class.values()), {})]
    head = "<tr><th>class</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    rows = []
    for cls, vals in per_class.items():
        cells = "".join(
            f"<td>{vals[c]}</td>"
            if c == "support" or vals[c] is None
            else f"<td>{vals[c]:.3f}</td>"
            for c in cols
        )
        rows.append(f"<tr><td>{escape(cls)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(path: Path, metrics: dict[str, Any], figures: dict[str, tuple[Path, str]]) -> Path:
    """One HTML page: headline numbers, per-class table, every figure, model and data."""
    if "subset_accuracy" in metrics:  # multi-label
        cards = [("subset accuracy", metrics["subset_accuracy"]), ("micro F1", metrics["f1_micro"]),
                 ("macro F1", metrics["f1_macro"]), ("mAP", metrics["map"]),
                 ("Hamming loss", metrics["hamming_loss"])]  # fmt: skip
    else:
        cards = [("accuracy", metrics["accuracy"]), ("macro F1", metrics["f1_macro"]),
                 ("weighted F1", metrics["f1_weighted"]), ("macro AUROC", metrics["auroc_macro"]),
                 ("ECE", metrics["ece"])]  # fmt: skip
    cards += [(k.replace("_", " "), v) for k, v in metrics.items() if k.startswith("top")]
    inspection = {"escape_rate": "escape rate", "false_reject_rate": "false-reject rate"}
    cards += [(name, metrics[k]) for k, name in inspection.items() if k in metrics]
    cards_html = "".join(
        f'<div class="card">{escape(k)}<b>{"n/a" if v is None else f"{v:.3f}"}</b></div>'
        for k, v in cards
    )
    bad = metrics.get("bad_files") or []
    bad_html = (
        "<h2>Skipped files</h2><ul>"
        + "".join(f"<li>{escape(b['path'])}: {escape(b['reason'])}</li>" for b in bad)
        + "</ul>"
        if bad
        else ""
    )
    figs = dict(figures)
    body = [
        "<h1>vitft evaluation</h1>",
        f'<p class="meta">model <code>{escape(metrics["model"])}</code><br>'
        f"data <code>{escape(metrics['data_dir'])}</code>, split <b>{escape(metrics['split'])}</b>"
        f", {metrics['images']} images, classes {escape(', '.join(metrics['classes']))}"
        f"{', TTA' if metrics.get('tta') else ''}<br>"
        f"written {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
        f'<div class="cards">{cards_html}</div>',
        "<h2>Per class</h2>",
        _per_class_table(metrics["per_class"]),
        bad_html,
    ]
    if "confusion_matrix" in figs:
        body.append(_figure(*figs.pop("confusion_matrix")))
    pair = [figs.pop(k) for k in ("pr_curves", "roc_curves") if k in figs]
    if pair:
        body.append('<div class="pair">' + "".join(_figure(*f) for f in pair) + "</div>")
    body += [_figure(p, c) for p, c in figs.values()]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>vitft evaluation</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    path.write_text(page)
    return path
