"""The implicit-group step as the FairGRPO authors run it, with scikit-learn: every training
step, on the source's whole unlabelled history, fit KMeans for k = 1..k_max, pick k with the
elbow rule, then fit KMeans once more with the chosen k for the labels (a "final fit").

KMeans options are scikit-learn's defaults (init="k-means++", n_init="auto" = 1 run for
k-means++, max_iter=300, tol=1e-4, algorithm="lloyd") with random_state=0, as in the
authors' code. (The benchmark's histories always hold more than k_max distinct rows.)
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans


def elbow(inertias: list[float], tol: float) -> int:
    """First k >= 2 with D_k < tol * D_(k-1), where D_k = I_k - I_(k+1); else the largest k."""
    for k in range(2, len(inertias)):
        if inertias[k - 1] - inertias[k] < tol * (inertias[k - 2] - inertias[k - 1]):
            return k
    return max(len(inertias), 1)


def elbow_step(
    history: np.ndarray, k_max: int = 3, tol: float = 0.10, seed: int = 0
) -> tuple[int, np.ndarray]:
    """One step's clustering of the whole history: (chosen k, labels of every row)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        inertias = [
            KMeans(n_clusters=k, random_state=seed).fit(history).inertia_ for k in range(1, k_max + 1)
        ]
        k = elbow(inertias, tol)
        labels = KMeans(n_clusters=k, random_state=seed).fit(history).labels_
    return k, labels
