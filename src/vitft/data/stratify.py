"""Seeded, stratified carving of val/test out of multi-label training samples.

Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) as kept in the
``iterative-stratification`` package: each carved part gets about its fraction of every class's
positives (and of the images without any label), which a random split misses for rare classes.
"""

from __future__ import annotations

import numpy as np


def multilabel_split(samples: list, fractions: dict[str, float], seed: int) -> tuple[list, dict]:
    """Split ``(path, 0/1 tuple)`` samples; returns (rest, {name: part}). Same seed, same split."""
    # iterstrat loads scikit-learn, scipy and pandas (~1 s): only a multi-label split pays for
    # them, not every importer of vitft.data.folder (a predict on a folder of images).
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    rest = sorted(samples)
    parts: dict[str, list] = {}
    for name, frac in fractions.items():
        # Each part is a fraction of all samples, taken from what is left.
        n = round(frac * len(samples))
        if n < 1 or len(rest) - n < 1:
            parts[name] = []
            continue
        y = np.array([label for _, label in rest], dtype=np.int64)
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n, random_state=seed)
        keep, take = next(splitter.split(np.zeros(len(rest)), y))
        parts[name] = sorted(rest[i] for i in take)
        rest = sorted(rest[i] for i in keep)
    return rest, parts
