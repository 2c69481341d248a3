"""t-SNE picture of perturbations (or images), coloured by class.

A common qualitative check in the unlearnable-examples literature: effective (shortcut)
perturbations form one tight cluster per class. scikit-learn's
:class:`~sklearn.manifold.TSNE` on a seeded random subset; the plot needs matplotlib
(``pip install 'unlearnable[plots]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import UnlearnableError

__all__ = ["tsne_embedding", "tsne_plot"]


def tsne_embedding(features: np.ndarray, labels, *, n: int = 2000, seed: int = 0, perplexity: float = 30.0):
    """2-D t-SNE of a seeded random subset of ``n`` samples.

    Returns:
        ``(embedding (m, 2), labels (m,), index (m,))`` with ``m = min(n, N)``.
    """
    from sklearn.manifold import TSNE

    f = np.asarray(features)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if f.shape[0] != y.shape[0]:
        raise UnlearnableError(f"{f.shape[0]} samples but {y.shape[0]} labels")
    if f.shape[0] < 3:
        raise UnlearnableError("t-SNE needs at least 3 samples")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(f.shape[0], size=min(n, f.shape[0]), replace=False))
    x = f[idx].reshape(len(idx), -1).astype(np.float32)
    perp = float(min(perplexity, max(1.0, (len(idx) - 1) / 3.0)))  # sklearn needs perplexity < n
    emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    return emb, y[idx], idx


def tsne_plot(features: np.ndarray, labels, path: Union[str, Path], *, n: int = 2000, seed: int = 0,
              perplexity: float = 30.0, class_names: Optional[Sequence[str]] = None,
              title: str = "t-SNE of perturbations") -> np.ndarray:
    """Save a PNG scatter plot of the t-SNE of ``features`` coloured by class.

    Args:
        features: ``(N, ...)`` perturbations or images (flattened per sample).
        labels: ``(N,)`` integer labels.
        path: output PNG file (its folder must exist).
        n: samples drawn (seeded) for the embedding.
        seed: seeds the subset and t-SNE.
        perplexity: t-SNE perplexity (capped for tiny subsets).
        class_names: legend names (default: the label numbers).
        title: figure title.

    Returns:
        The ``(m, 2)`` embedding.

    Raises:
        UnlearnableError: matplotlib is missing, or the folder of ``path`` does not exist.
    """
    from ..data.save import check_writable
    from ..plotting import pyplot, save_figure

    plt = pyplot("the t-SNE plot")

    p = check_writable(path)
    emb, y, _ = tsne_embedding(features, labels, n=n, seed=seed, perplexity=perplexity)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    try:
        cmap = plt.get_cmap("tab10" if y.max() < 10 else "tab20")
        for c in np.unique(y):
            m = y == c
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(emb[m, 0], emb[m, 1], s=4, color=cmap(int(c) % cmap.N), label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(np.unique(y)) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best")
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, p)
    return emb
