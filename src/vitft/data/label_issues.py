"""Training labels that are probably wrong, from image features (``vitft check-data labels=true``).

features (a frozen backbone's, one row per image) -> out-of-fold class probabilities by K-fold
cross-fitting a logistic regression (each image scored by a model that never saw its label; or,
with ``label_issues.crossfit=finetune``, K fine-tuned models on the folds of ``fold_ids``:
``vitft.apps.crossfit``) ->
cleanlab's ``find_label_issues`` (confident learning) ranks the suspects, and its outlier score
flags images unlike the rest -> a ranked CSV a person can act on, a gallery of the top suspects,
and Label Studio review tasks pre-annotated with the suggested label. ``near_duplicates`` finds
images of one split that are near-copies of another's by feature similarity (an augmented copy
in test is a leak that exact hashes miss): a pair far closer than images of one split usually are.

Arrays in, arrays and files out: where the features come from is the caller's business.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.outlier import OutOfDistribution
from cleanlab.rank import get_label_quality_scores
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vitft.core import plots
from vitft.core.errors import VitftError

CSV_FIELDS = ("rank", "path", "given", "suggested", "score", "p_given", "p_suggested", "outlier")


@dataclass
class LabelIssue:
    path: str
    given: str
    suggested: str
    score: float  # cleanlab's label quality of the given label: low = probably wrong
    p_given: float
    p_suggested: float
    outlier: float  # cleanlab's outlier score: low = unlike the other images


def probe(c: float = 1.0):
    """The classifier fitted on the features: standardised, then multinomial logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def out_of_fold_probs(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from a probe fitted on the other folds."""
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    smallest = int(np.bincount(labels, minlength=n_classes).min())
    if smallest < 2:
        raise VitftError(
            f"label issues need at least 2 training images per class (one class has {smallest}); "
            "add images or leave the class out"
        )
    fold = _stratified_folds(labels, max(2, min(int(folds), smallest)), seed)
    probs = np.zeros((len(labels), n_classes))
    for k in range(int(fold.max()) + 1):
        fit_idx, held_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fitted = probe(c).fit(features[fit_idx], labels[fit_idx])
        probs[np.ix_(held_idx, fitted.classes_)] = fitted.predict_proba(features[held_idx])
    return probs


def fold_ids(labels: np.ndarray, folds: int, seed: int = 0, n_classes: int = 0) -> np.ndarray:
    """Each image's fold (``0..folds-1``), stratified by class, for cross-fitting K fine-tuned
    models (``label_issues.crossfit=finetune``): every class in every fold's training part."""
    labels = np.asarray(labels)
    smallest = int(np.bincount(labels, minlength=n_classes).min()) if len(labels) else 0
    if not 2 <= folds <= smallest:
        raise VitftError(
            f"label_issues.folds={folds} needs 2 <= folds <= the training images of the smallest "
            f"class ({smallest}) with crossfit=finetune: set label_issues.folds between 2 and "
            f"{smallest}, or add images"
        )
    return _stratified_folds(labels, folds, seed)


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, every class spread over the folds (the probe's and the fine-tunes')."""
    fold = np.empty(len(labels), int)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held_idx) in enumerate(split.split(np.zeros((len(labels), 1)), labels)):
        fold[held_idx] = k
    return fold


def find_issues(
    paths: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    features: np.ndarray,
    classes: list[str],
) -> list[LabelIssue]:
    """The images cleanlab flags as mislabelled, most likely wrong first."""
    labels = np.asarray(labels)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs)
    k = max(1, min(10, len(labels) - 1))
    outlier = OutOfDistribution({"k": k}).fit_score(features=np.asarray(features, np.float32))
    return [
        LabelIssue(
            path=str(paths[i]),
            given=classes[labels[i]],
            suggested=classes[int(probs[i].argmax())],
            score=float(quality[i]),
            p_given=float(probs[i, labels[i]]),
            p_suggested=float(probs[i].max()),
            outlier=float(outlier[i]),
        )
        for i in ranked
    ]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def near_duplicates(
    a: np.ndarray, b: np.ndarray, ratio: float = 0.25
) -> list[tuple[int, int, float]]:
    """``(i, j, r)`` for each row ``i`` of ``a`` whose nearest row ``j`` of ``b`` is closer than
    ``ratio`` times the typical distance between an image of ``b`` and its nearest neighbour
    (``r``: that fraction). Relative, because what counts as close depends on the backbone."""
    scale = np.concatenate([a, b]).std(0) + 1e-6  # every feature weighs alike
    a, b = a / scale, b / scale
    within = _distances(b, b)
    np.fill_diagonal(within, np.inf)
    typical = float(np.median(within.min(1))) if len(b) > 1 else 1.0
    d = _distances(a, b)
    best = d.argmin(1)
    r = d[np.arange(len(a)), best] / max(typical, 1e-12)
    return [(i, int(best[i]), float(r[i])) for i in range(len(a)) if r[i] < ratio]


def write_csv(out: str | Path, issues: list[LabelIssue]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for rank, x in enumerate(issues, start=1):
            w.writerow(
                [rank, x.path, x.given, x.suggested, f"{x.score:.4f}", f"{x.p_given:.4f}"]
                + [f"{x.p_suggested:.4f}", f"{x.outlier:.4f}"]
            )
    return out


def gallery(out: str | Path, issues: list[LabelIssue], top: int = 24) -> Path | None:
    """A PNG grid of the top suspects, each titled with its rank, given and suggested label."""
    shown = issues[:top]
    if not shown:
        return None
    images, titles = [], []
    for rank, x in enumerate(shown, start=1):
        with Image.open(x.path) as img:
            images.append(img.convert("RGB"))
        titles.append(f"#{rank} {Path(x.path).name[:20]}\ngiven {x.given}\n-> {x.suggested}")
    fig = plots.image_grid(
        images, titles, cols=6, suptitle="Suspect labels: given -> suggested (most likely first)"
    )
    return plots.save(fig, out)
