"""Pseudo-labels for unlabelled image sets: k-means on simple image features.

A method that needs class labels (PIL, class-wise noise) can still protect a flat folder: the
images are clustered and each cluster is treated as a class. This is the idea of "Unlearnable
Clusters" (Zhang et al., CVPR 2023): a shortcut tied to a cluster still breaks the
image-to-label mapping a trainer learns, as long as the clusters correlate with the trainer's
classes. It is weaker than protecting against the true labels (see ``benchmarks/RESULTS.md``,
``## PIL``, for the measured gap on CIFAR-10).

Features: each image is resized to ``side``² (bilinear, antialiased), flattened to [0, 1]
floats, standardised per feature, reduced by PCA to ``pca_dims`` dimensions, then clustered
with k-means (scikit-learn, seeded, fixed ``n_init``). The set is put in a canonical order
(sorted by ``ids``) first and clusters are numbered by their first member in that order, so
the result does not depend on the order the files were read in.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Dict, Optional

import numpy as np

from .imageset import ImageSet

__all__ = ["pseudo_labels", "pseudo_label_plan", "pseudo_label_warning", "image_features", "DEFAULT_K"]

DEFAULT_K = 10
#: Side of the images the clustering features are computed from.
FEATURE_SIDE = 16


def image_features(data: ImageSet, side: int = FEATURE_SIDE, pca_dims: int = 64, seed: int = 0) -> np.ndarray:
    """Standardised, PCA-reduced pixel features, one row per image (in the set's order).

    Args:
        data: the images (any sizes).
        side: images are resized to ``side × side`` first.
        pca_dims: PCA output dimensions (capped by the number of images and pixels).
        seed: seeds the randomised PCA solver.

    Returns:
        ``(N, D)`` float32 features, ``D <= pca_dims``.
    """
    from sklearn.decomposition import PCA

    small = data.stacked_at((side, side))
    f = small.reshape(len(small), -1).astype(np.float32) / 255.0
    f -= f.mean(axis=0, keepdims=True)
    std = f.std(axis=0, keepdims=True)
    f /= np.where(std > 1e-6, std, 1.0)
    dims = min(pca_dims, len(f) - 1, f.shape[1])
    if dims < 1:
        return f
    return PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(f).astype(np.float32)


def pseudo_labels(data: ImageSet, k: int = DEFAULT_K, seed: int = 0, *, side: int = FEATURE_SIDE, pca_dims: int = 64,
                  n_init: int = 3) -> ImageSet:
    """The set with k-means cluster indices as labels (``classes = ["cluster0", ...]``).

    Args:
        data: images, labelled or not (existing labels are ignored and replaced).
        k: number of clusters; capped at the number of images.
        seed: seeds PCA and k-means; the same seed gives the same labels.
        side: feature resolution (images resized to ``side``²).
        pca_dims: PCA dimensions of the features.
        n_init: k-means restarts (fixed, so results are reproducible across scikit-learn versions).

    Returns:
        A new :class:`ImageSet` with the same images and ids, ``labels`` = cluster index and
        ``classes = [f"cluster{j}" for j in range(k)]``.
    """
    from sklearn.cluster import KMeans

    n = len(data)
    k = max(1, min(int(k), n))
    order = np.argsort(np.asarray(data.ids, dtype=object), kind="stable")  # canonical, file-order free
    canon = data.subset(order)
    if k == 1:
        assign = np.zeros(n, np.int64)
    else:
        feats = image_features(canon, side=side, pca_dims=pca_dims, seed=seed)
        with warnings.catch_warnings():  # duplicate images: fewer distinct points than clusters
            warnings.simplefilter("ignore")
            assign = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(feats).astype(np.int64)
    # Number clusters by first appearance in the canonical order: deterministic names.
    _, first = np.unique(assign, return_index=True)
    rank = np.empty(assign.max() + 1, np.int64)
    rank[assign[np.sort(first)]] = np.arange(len(first))
    canon_labels = rank[assign]
    labels = np.empty(n, np.int64)
    labels[order] = canon_labels
    k_used = int(canon_labels.max()) + 1 if n else 0
    return replace(data, labels=labels, classes=[f"cluster{j}" for j in range(k_used)])


def pseudo_label_plan(method: Any, data: ImageSet) -> Optional[Dict[str, Any]]:
    """What pseudo-labelling ``method.protect(data)`` does: ``None`` when it uses the given labels.

    A method that needs labels, given an unlabelled set, protects against k-means
    pseudo-labels with ``k = method.pseudo_classes`` (10 when the method has no such field),
    capped at the number of images. The returned dict is what manifests record.
    """
    if not getattr(method, "needs_labels", False) or data.labels is not None:
        return None
    k = int(getattr(method, "pseudo_classes", DEFAULT_K))
    return {"kind": "kmeans", "k_requested": k, "k": max(1, min(k, len(data))),
            "features": "16x16 pixels, standardised, PCA 64", "reference": "Zhang et al., Unlearnable Clusters, CVPR 2023"}


def pseudo_label_warning(method: Any, data: ImageSet) -> Optional[str]:
    """What to tell a user who protects an unlabelled set with a method that needs labels."""
    plan = pseudo_label_plan(method, data)
    if plan is None:
        return None
    few = (f"; with {len(data)} images most clusters hold only a few" if len(data) < 5 * plan["k"] else "")
    return (f"warning: no class labels: {getattr(method, 'registry_name', 'the method')} protects against "
            f"{plan['k']} k-means clusters of the pixels{few}; measured with pil on CIFAR-10, that left victims "
            "within a point of clean accuracy (benchmarks/RESULTS.md, 'PIL'); put the images in class folders "
            "(root/<class>/<file>) for real protection")
