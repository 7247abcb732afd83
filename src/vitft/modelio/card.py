"""model/README.md: an HF-style model card written from what the run knows (no hand edits needed).

Task, classes, data summary, metrics with their split, training config, intended use and limits,
provenance, and (after ``vitft export``) the export formats with their measured parity.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
_EXPORTS_START = "<!-- vitft:exports -->"
_EXPORTS_END = "<!-- /vitft:exports -->"


def _metrics_table(metrics: dict[str, float]) -> str:
    rows = []
    for key in sorted(metrics):
        split, _, name = key.partition("/")
        if name:
            rows.append(f"| {name} | {split} | {metrics[key]:.4f} |")
    if not rows:
        return "No metrics were recorded."
    return "| metric | split | value |\n| --- | --- | --- |\n" + "\n".join(rows)


def _counts_table(classes: list[str], counts: dict[str, dict[str, int]]) -> str:
    splits = [s for s in ("train", "val", "test") if s in counts]
    head = "| class | " + " | ".join(splits) + " |\n|" + " --- |" * (len(splits) + 1)
    body = [
        f"| {c} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |" for c in classes
    ]
    return head + "\n" + "\n".join(body)


def model_card(
    *,
    task: str | None,
    classes: list[str],
    metrics: dict[str, float],
    config: dict[str, Any],
    provenance: dict[str, Any],
) -> str:
    """The card's Markdown, with HF front matter (library, pipeline tag, base model, metrics)."""
    model = config.get("model", {})
    data = provenance.get("data", {})
    lines = [
        *_front_matter(provenance.get("pretrained") or {}),
        f"# {task or 'image'} classifier ({model.get('name', 'vit')}, vitft)",
        "",
        f"Image classification into {len(classes)} classes: {', '.join(classes)}. Below its "
        "confidence threshold a prediction should be treated as `uncertain` (reject option of "
        "`vitft predict` / `vitft serve`).",
        "",
        "## Data",
        f"Folder dataset `{data.get('root', '?')}`; split origin: "
        + ", ".join(f"{k}={v}" for k, v in data.get("origin", {}).items())
        + f". Every image of every split is listed in the run's `{data.get('manifest', '?')}` "
        f"(sha256 `{str(data.get('manifest_sha256', ''))[:16]}`).",
        "",
        _counts_table(classes, data.get("counts", {})),
        "",
        "## Metrics",
        "Measured on the held-out splits of the data above, with the best checkpoint.",
        "",
        _metrics_table(metrics),
        "",
        *_training(config, provenance),
        *_use(data.get("root", "?")),
    ]
    return "\n".join(lines)


def _front_matter(pretrained: dict[str, Any]) -> list[str]:
    base = pretrained.get("source") if pretrained.get("kind") == "hub" else None
    return [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags: [vitft, image-classification, vision-transformer]",
        *([f"base_model: {base}"] if base else []),
        "---",
    ]


def _training(config: dict[str, Any], provenance: dict[str, Any]) -> list[str]:
    """The Training section: weights, head, freeze, optimizer, code and package versions."""
    model, trainer = config.get("model", {}), config.get("trainer", {})
    optimizer = config.get("optimizer", {})
    pretrained = provenance.get("pretrained") or {}
    git = provenance.get("git") or {}
    versions = provenance.get("versions", {})
    weights = (
        f"`{pretrained['source']}` ({pretrained['kind']}, "
        f"revision {pretrained.get('commit') or pretrained.get('weights_sha256') or 'unknown'})"
        if pretrained
        else f"none: `{model.get('name')}` built from its config, trained from scratch"
    )
    commit = (
        f", git {git['commit'][:12]}{' (dirty tree)' if git.get('dirty') else ''}" if git else ""
    )
    return [
        "## Training",
        f"- pretrained weights: {weights}",
        f"- head: {config.get('head', {}).get('name')}, "
        f"freeze: {config.get('freeze', {}).get('name')}",
        f"- optimizer: {str(optimizer.get('_target_', '')).rsplit('.', 1)[-1]} "
        f"lr={optimizer.get('lr')}, epochs <= {trainer.get('max_epochs')}, "
        f"seed {config.get('seed')}",
        f"- code: vitft {versions.get('vitft')}{commit}; torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}, lightning {versions.get('lightning')}",
        "- the full resolved config is `config.yaml` in the run dir; provenance: `provenance.json`",
        "",
    ]


def _use(data_root: str) -> list[str]:
    """Intended use and limits, how to load the model, and the exports' placeholder."""
    return [
        "## Intended use and limits",
        "- Intended: sorting images like the training data (same camera, lighting, product and "
        "classes) and flagging low-confidence images for a person to look at.",
        "- Not intended: classes it has not seen (it still answers one of its classes; use the "
        "threshold / OOD score), other cameras or products without re-validation, or safety "
        "decisions without a person in the loop.",
        f"- The metrics above hold for data like `{data_root}`; measure on your own "
        "line with `vitft eval` before relying on them.",
        "",
        "## Use",
        "```python",
        "import vitft",
        "vitft.load('model', threshold=0.8).predict(['part.png'])",
        "```",
        "",
        _EXPORTS_START,
        "## Export formats",
        "Not exported yet: `vitft export model_dir=<this folder>` adds the formats and their "
        "parity with this model here.",
        _EXPORTS_END,
        "",
    ]


def write_card(model_dir: str | Path, **kwargs: Any) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(model_card(**kwargs))
    return path


def update_card_exports(
    model_dir: str | Path, parity: dict[str, dict], out_dir: str | Path
) -> bool:
    """Replace the card's export section with the formats of ``parity`` (export's results)."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file() or _EXPORTS_START not in path.read_text():
        return False
    rows = [
        f"| {fmt} | {r.get('agreement', float('nan')):.2%} | {r.get('split')} | "
        f"{'pass' if r.get('passed') else 'FAIL'} | {r.get('size_mb', float('nan')):.1f} |"
        for fmt, r in parity.items()
    ]
    section = "\n".join(
        [
            _EXPORTS_START,
            "## Export formats",
            f"Exported to `{out_dir}`; top-1 agreement with this PyTorch fp32 model:",
            "",
            "| format | agreement | split | parity | size MB |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            _EXPORTS_END,
        ]
    )
    text = re.sub(
        re.escape(_EXPORTS_START) + ".*?" + re.escape(_EXPORTS_END),
        lambda _m: section,
        path.read_text(),
        flags=re.S,
    )
    path.write_text(text)
    return True
