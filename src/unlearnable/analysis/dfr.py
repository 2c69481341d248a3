"""Deep feature reweighting (DFR): are useful features hidden in a model trained on protected data?

Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, "What Can We Learn from Unlearnable
Datasets?" (NeurIPS 2023), §3, after Kirichenko, Izmailov, Wilson, "Last Layer Re-Training is
Sufficient for Robustness to Spurious Correlations" (ICLR 2023). Train a victim on the protected
set; after every epoch freeze its features (the input of the last linear layer), refit only a
linear head on a fixed random subset of ``n_clean`` clean training images (scikit-learn
logistic regression on standardised embeddings, as the paper describes; the authors' code uses
L-BFGS on the head) and measure clean test accuracy. The maximum over epochs says how much a
trainer with a little clean data could recover; compare it with the same refit on a randomly
initialised network (≈36% on CIFAR-10 in the paper) — the floor that any network provides.

Penultimate features are found generically: a forward hook on the input of the model's last
``nn.Linear`` module (in registration order), which is the classifier head of every model in
this package.

BatchNorm (``bn_mode``):

* ``"eval"`` (default): features with the checkpoint's running statistics, as trained.
* ``"train"``: the authors' code leaves BatchNorm in train mode while refitting, which
  re-estimates its statistics on clean data. Here a copy of the checkpoint has its running
  statistics reset and re-estimated on the clean subset (cumulative average, one pass in
  train mode, no gradients), then features are extracted in eval mode with them. The training
  run itself is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from ..errors import UnlearnableError

__all__ = ["DFRResult", "dfr", "dfr_refit", "penultimate_features"]


@dataclass
class DFRResult:
    """Per-epoch DFR accuracies of one victim run, and the random-init baseline.

    Attributes:
        epochs: epochs evaluated (1-based).
        accs: clean test accuracy of the refit head at each of ``epochs``.
        max_acc: the maximum of ``accs``.
        best_epoch: the epoch reaching it.
        baseline_acc: the same refit on the untrained network (``None`` if skipped).
        victim_accs: the victim's own clean test accuracy at each of ``epochs``.
        n_clean: clean images used for the refit.
        bn_mode: ``"eval"`` or ``"train"``.
        train_result: the victim's :meth:`TrainResult.to_dict`.
    """

    epochs: List[int]
    accs: List[float]
    max_acc: float
    best_epoch: int
    baseline_acc: Optional[float]
    victim_accs: List[float]
    n_clean: int
    bn_mode: str
    train_result: Dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _last_linear(model):
    import torch

    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    if last is None:
        raise UnlearnableError(f"DFR needs a model with an nn.Linear head; {type(model).__name__} has none")
    return last


def penultimate_features(model, x, *, batch_size: int = 512, device=None) -> np.ndarray:
    """Inputs of the model's last ``nn.Linear`` for uint8 NHWC images ``x`` (model in its current mode).

    Returns:
        ``(N, F)`` float32 features.
    """
    import torch

    from ._inputs import as_float_nchw, model_device

    dev = device or model_device(model)
    head = _last_linear(model)
    grabbed: List[torch.Tensor] = []
    handle = head.register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].detach().flatten(1).float()))
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                grabbed.clear()
                model(as_float_nchw(x[i:i + batch_size], dev))
                out.append(grabbed[-1].cpu())
    finally:
        handle.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, head.in_features), np.float32)


def _reestimate_bn(model, x, batch_size: int):
    """A copy of ``model`` with BatchNorm running statistics re-estimated on ``x``."""
    import torch

    from ._inputs import as_float_nchw, model_device

    m = copy.deepcopy(model)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm) and b.track_running_stats]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative moving average: every batch weighs the same
    m.train()
    dev = model_device(m)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if len(xb) > 1:  # BatchNorm cannot use a batch of one
                m(as_float_nchw(xb, dev))
    m.eval()
    return m


def dfr_refit(model, clean_x, clean_y, test_x, test_y, *, bn_mode: str = "eval", batch_size: int = 512,
              C: float = 1.0, max_iter: int = 1000) -> float:
    """Refit the last layer of ``model`` on clean data; return its clean test accuracy.

    Args:
        model: a trained (or random) network with an ``nn.Linear`` head; not modified.
        clean_x: uint8 NHWC clean images for the refit (the DFR subset).
        clean_y: their labels.
        test_x: uint8 NHWC clean test images.
        test_y: their labels.
        bn_mode: ``"eval"`` or ``"train"`` (re-estimate BatchNorm statistics on ``clean_x``).
        batch_size: images per forward pass.
        C: inverse L2 strength of the logistic regression.
        max_iter: its iteration cap.

    Returns:
        Clean test accuracy in [0, 1].
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if bn_mode not in ("eval", "train"):
        raise UnlearnableError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    was_training = model.training
    try:
        if bn_mode == "train":
            m = _reestimate_bn(model, clean_x, batch_size)
        else:
            model.eval()
            m = model
        ftr = penultimate_features(m, clean_x, batch_size=batch_size)
        fte = penultimate_features(m, test_x, batch_size=batch_size)
    finally:
        model.train(was_training)
    scaler = StandardScaler().fit(ftr)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(ftr), np.asarray(clean_y))
    return float((clf.predict(scaler.transform(fte)) == np.asarray(test_y)).mean())


def dfr(protected_x: np.ndarray, protected_y, clean_x: np.ndarray, clean_y, test_x: np.ndarray, test_y, *,
        recipe: Any = "paper", arch: Optional[str] = None, defense: Any = "standard", n_clean: int = 5000,
        bn_mode: str = "eval", every: int = 1, baseline: bool = True, seed: int = 0,
        num_classes: Optional[int] = None, device: Union[str, None] = None,
        model_factory: Optional[Callable[..., Any]] = None, C: float = 1.0, max_iter: int = 1000,
        progress: Optional[Callable[[int, int, Dict[str, Any]], None]] = None) -> DFRResult:
    """DFR over a victim run on protected data (Sandoval-Segura et al., NeurIPS 2023).

    Args:
        protected_x: uint8 NHWC protected training images.
        protected_y: their labels.
        clean_x: uint8 NHWC clean training images (the refit subset is drawn from them).
        clean_y: their labels.
        test_x: uint8 NHWC clean test images.
        test_y: their labels.
        recipe: victim recipe (name or :class:`~unlearnable.train.recipes.Recipe`); the paper
            trains ResNet-18 for 60 epochs (SGD 0.1, wd 5e-4, cosine, batch 128).
        arch: architecture overriding the recipe's.
        defense: the victim's training defense (default ``standard`` augmentation).
        n_clean: clean images in the refit subset (fixed, seeded; capped at ``len(clean_x)``).
        bn_mode: ``"eval"`` or ``"train"`` (see the module docstring).
        every: evaluate every this many epochs (the last epoch always).
        baseline: also refit on the randomly initialised network.
        seed: seeds the victim, the subset and the baseline network.
        num_classes: K (default: largest label + 1).
        device: training device.
        model_factory: as in :func:`~unlearnable.train.engine.train_victim`.
        C: inverse regularisation strength of the logistic regression.
        max_iter: its iteration cap.
        progress: passed to ``train_victim``.

    Returns:
        A :class:`DFRResult`.
    """
    import torch

    from ..train.engine import train_victim
    from ..train.recipes import get_recipe

    if bn_mode not in ("eval", "train"):
        raise UnlearnableError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    if every < 1:
        raise UnlearnableError(f"every must be at least 1, got {every}")
    rec = get_recipe(recipe, arch=arch)
    cy = np.asarray(clean_y, dtype=np.int64)
    if len(clean_x) != len(cy) or len(clean_x) < 2:
        raise UnlearnableError("DFR needs at least 2 labelled clean images")
    k = int(num_classes if num_classes is not None
            else max(np.max(protected_y), np.max(cy), np.max(test_y)) + 1)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(clean_x), size=min(n_clean, len(clean_x)), replace=False))
    sx, sy = np.asarray(clean_x)[sub], cy[sub]
    if len(np.unique(sy)) < 2:
        raise UnlearnableError("the DFR clean subset holds a single class; use more clean images")

    epochs_done: List[int] = []
    accs: List[float] = []

    def checkpoint(epoch: int, model) -> None:
        if epoch % every and epoch != rec.epochs:
            return
        epochs_done.append(epoch)
        accs.append(dfr_refit(model, sx, sy, test_x, test_y, bn_mode=bn_mode, C=C, max_iter=max_iter))

    result = train_victim(protected_x, protected_y, test_x, test_y, recipe=rec, defense=defense, num_classes=k,
                          seed=seed, device=device, checkpoint_fn=checkpoint, model_factory=model_factory,
                          progress=progress)
    if not accs:  # stopped early by a defense before the first evaluated epoch
        raise UnlearnableError("no epoch was evaluated; lower `every`")
    by_epoch = {int(e["epoch"]): e["test_acc"] for e in result.curve}
    base = None
    if baseline:
        from ..device import resolve_device

        if model_factory is None:
            from ..models import create_model as model_factory
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            h = np.asarray(test_x).shape[1]
            net = model_factory(rec.arch, num_classes=k, input_size=h, in_channels=np.asarray(test_x).shape[-1])
        net = net.to(resolve_device(device))
        base = dfr_refit(net, sx, sy, test_x, test_y, bn_mode=bn_mode, C=C, max_iter=max_iter)
    i = int(np.argmax(accs))
    return DFRResult(epochs=epochs_done, accs=accs, max_acc=float(accs[i]), best_epoch=epochs_done[i],
                     baseline_acc=base, victim_accs=[by_epoch[e] for e in epochs_done], n_clean=len(sub),
                     bn_mode=bn_mode, train_result=result.to_dict())
