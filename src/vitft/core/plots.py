"""The evaluation figures (matplotlib, headless): each function returns a Figure; heatmap
overlays take arrays and return images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (servers, CI)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _matrix(ax, values: np.ndarray, classes: list[str], fmt: str, title: str) -> None:
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() if values.max() > 0 else 1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = values.max() if values.max() > 0 else 1
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = values[i, j]
            ax.text(
                j, i, format(v, fmt), ha="center", va="center",
                color="white" if v > top / 2 else "black", fontsize=9,
            )  # fmt: skip
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def confusion_matrix(cm: np.ndarray, classes: list[str]) -> Figure:
    """Counts and row-normalised (recall per true class), side by side."""
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    _matrix(axes[0], cm, classes, "d", "counts")
    _matrix(axes[1], norm, classes, ".2f", "row-normalised (recall)")
    fig.tight_layout()
    return fig


def curves(
    per_class: dict[str, tuple[np.ndarray, np.ndarray]],
    scores: dict[str, float],
    kind: str,
    points: dict[str, tuple[float, float, str]] | None = None,
) -> Figure:
    """One-vs-rest curves per class: ``roc`` (x=FPR, y=TPR) or ``pr`` (x=recall, y=precision).

    ``points``: per class an operating point ``(x, y, text)`` marked on its curve.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for cls, (x, y) in per_class.items():
        if scores[cls] is None:  # no positives (or no negatives) in the data: no curve
            continue
        label = f"{cls} ({'AUC' if kind == 'roc' else 'AP'} {scores[cls]:.3f})"
        (line,) = ax.plot(x, y, label=label, drawstyle="default" if kind == "roc" else "steps-post")
        if points and cls in points:
            px, py, text = points[cls]
            ax.plot([px], [py], "o", color=line.get_color(), markeredgecolor="k")
            ax.annotate(text, (px, py), textcoords="offset points", xytext=(-8, -14), fontsize=7)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="precision-recall (one-vs-rest)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    fig.tight_layout()
    return fig


def escape_curve(
    false_reject: np.ndarray,
    escape: np.ndarray,
    chosen: tuple[float, float] | None,
    chosen_label: str,
    argmax: tuple[float, float],
    max_escape: float | None,
    title: str,
) -> Figure:
    """Inspection: escape rate against false-reject rate as the threshold on P(defective) moves,
    the chosen point and the top-class decision marked; the right panel zooms into the corner
    where both are low, where an operating point should be."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    top = max(0.2, 3 * (max_escape or 0), 1.5 * (chosen[1] if chosen else 0))
    right = max(0.25, 1.5 * argmax[0], 1.5 * (chosen[0] if chosen else 0))
    for ax, (xmax, ymax) in zip(axes, ((1.0, 1.0), (min(right, 1.0), top)), strict=True):
        ax.plot(false_reject, escape, "-", color="tab:blue", lw=1.5, label="thresholds")
        ax.plot(*argmax, "s", color="gray", markeredgecolor="k", label="top class decides")
        if max_escape is not None:
            ax.axhline(
                max_escape, color="tab:red", ls="--", lw=0.9, label=f"max_escape {max_escape:g}"
            )
        if chosen is not None:
            here = f"here: escape {chosen[1]:.3f}, false reject {chosen[0]:.3f}"
            ax.plot(*chosen, "o", color="tab:red", markersize=8, markeredgecolor="k",
                    label=f"{chosen_label}\n{here}")  # fmt: skip
        # a margin below 0, so the segments along the axes stay visible
        ax.set(xlim=(-0.03 * xmax, 1.02 * xmax), ylim=(-0.03 * ymax, 1.02 * ymax))
        ax.set(xlabel="false-reject rate (ok parts called defective)")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="escape rate (defective parts called ok)", title=title)
    axes[1].set(title=f"zoom: escape rate up to {top:.2f}")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_grid(confusion: dict[str, np.ndarray], cols: int = 4) -> Figure:
    """Multi-label: one 2x2 matrix per class, rows true absent/present, columns predicted."""
    names = list(confusion)
    cols = min(cols, max(1, len(names)))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, cls in zip(axes.flat, names, strict=False):
        cm = np.asarray(confusion[cls])
        ax.axis("on")
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        ax.set_xticks([0, 1], ["absent", "present"])
        ax.set_yticks([0, 1], ["absent", "present"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(cls)
        for i in range(2):
            for j in range(2):
                white = cm[i, j] > cm.max() / 2
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        color="white" if white else "black")  # fmt: skip
    fig.suptitle("per-class confusion (at the tuned thresholds)")
    fig.tight_layout()
    return fig


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int, ece: float) -> Figure:
    """Accuracy vs confidence per bin (a calibrated model follows the diagonal) + counts."""
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, weights=correct.astype(float), minlength=n_bins)
    conf = np.bincount(which, weights=confidence, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, conf = acc / counts, conf / counts
    centers = (edges[:-1] + edges[1:]) / 2
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    has = counts > 0
    width = 1 / n_bins
    ax.bar(centers[has], acc[has], width=width, edgecolor="k", label="accuracy")
    ax.bar(
        centers[has], conf[has] - acc[has], bottom=acc[has], width=width, color="tab:red",
        alpha=0.35, edgecolor="tab:red", label="gap to confidence",
    )  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set(ylabel="accuracy", ylim=(0, 1), title=f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    axh.bar(centers, counts, width=width, edgecolor="k", color="gray")
    axh.set(xlabel="confidence (top-1 probability)", ylabel="images", xlim=(0, 1))
    fig.tight_layout()
    return fig


def image_grid(
    images: Sequence[Image.Image], titles: Sequence[str], cols: int = 4, suptitle: str = ""
) -> Figure:
    """Images with a title each (e.g. the worst errors: true / predicted / confidence)."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)  # room for the titles
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, (2.6 + 0.15 * lines) * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap_figure(
    images: Sequence[Image.Image],
    maps: dict[str, Sequence],
    titles: Sequence[str],
    explained: str | Sequence[str] | None = None,
) -> Figure:
    """One row per image: the image, then one overlay per method (columns)."""
    rows, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    for r, img in enumerate(images):
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(titles[r], fontsize=8)
        for c, (method, per_image) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(overlay(img, np.asarray(per_image[r])))
            what = explained if isinstance(explained, str) or explained is None else explained[r]
            suffix = f" ({what})" if what and method in ("gradcam", "gradattn") else ""
            if not np.asarray(per_image[r]).any():
                suffix += ": empty (no positive evidence)"  # ReLU'd Grad-CAM, not a bug
            axes[r, c].set_title(f"{method}{suffix}", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def upsample(heatmap: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(gh, gw)`` map bilinearly resized to ``size`` = (height, width)."""
    t = torch.as_tensor(np.asarray(heatmap), dtype=torch.float32)[None, None]
    up = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return up[0, 0].clamp(min=0).numpy()


def overlay(
    image: Image.Image, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5
) -> Image.Image:
    """The image with the heatmap (jet colormap) blended over it, at the image's size."""
    heat = upsample(heatmap, (image.height, image.width))
    colored = colormaps["jet"](heat / max(float(heat.max()), 1e-12))[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) / 255 + alpha * colored
    return Image.fromarray((blended.clip(0, 1) * 255).astype(np.uint8))


def training_curves(history: dict[str, tuple[np.ndarray, np.ndarray]], x_label: str) -> Figure:
    """One panel per metric (``loss``, ``acc`` ...), one line per split (``train/loss`` ...)."""
    names = sorted({key.partition("/")[2] or key for key in history})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for key, (x, y) in sorted(history.items()):
            if (key.partition("/")[2] or key) == name:
                ax.plot(x, y, marker="o", ms=3, label=key.partition("/")[0] or key)
        ax.set(xlabel=x_label, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
