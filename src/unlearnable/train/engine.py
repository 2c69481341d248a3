"""The victim-training engine: one GPU-first code path that also runs on CPU.

:func:`train_victim` trains a fresh model on (possibly protected) training images with a
named :class:`~unlearnable.train.recipes.Recipe` and a
:class:`~unlearnable.defenses.base.Defense`, evaluates it on clean test images after every
epoch, and returns a :class:`TrainResult` that records everything a results row needs.

Why it is fast (after airbench and Page's "How to train your ResNet"; our own code):

* the training set lives on the device as uint8, moved there once (4x smaller than float);
* batches are gathered by indexing with a per-epoch ``randperm`` drawn on the device;
  no DataLoader, no worker processes, no per-sample Python;
* augmentation runs batched on the device (the defense's ``augment`` hook);
* bf16 autocast and channels-last memory on CUDA (tensor cores), torch.compile optional;
* no host-device synchronisation inside an epoch: loss and accuracy accumulate on the
  device and are read once per epoch.

The same code runs on CPU in fp32 (tests, laptops), deterministically for a given seed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..device import describe_device, resolve_device
from ..data.imageset import label_array
from ..errors import UnlearnableError
from .recipes import Recipe, get_recipe

if TYPE_CHECKING:  # pragma: no cover
    from ..defenses.base import Defense

__all__ = ["TrainResult", "train_victim", "evaluate", "describe_device", "DIVERGED_LOSS_FACTOR"]

log = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

#: An epoch whose mean training loss exceeds this many times ln K (the loss of a uniform guess
#: over K classes), or is not finite, counts as diverged. A run that learns stays near or
#: below ln K; a learning rate that recovers from a spike was measured at ~5 ln K, one that
#: never did at 1e6+ ln K.
DIVERGED_LOSS_FACTOR = 1000.0
ProgressFn = Callable[[int, int, Dict[str, Any]], None]
CheckpointFn = Callable[[int, torch.nn.Module], None]


@dataclass
class TrainResult:
    """What one victim training run produced and how.

    Accuracies are fractions in [0, 1] on the clean test set. ``final_acc`` is the number
    to report (the last epoch); ``best_acc`` is the best epoch, recorded for reference
    only (it selects on the test set). ``curve`` has one dict per epoch with keys
    ``epoch`` (1-based), ``lr`` (of the epoch's last step), ``train_loss``, ``train_acc``
    (on the augmented batches; against the arg-max of soft labels), ``test_acc`` and
    ``epoch_seconds`` (training steps only).

    Model selection on held-out training data (a defense with ``validation_split``, e.g.
    ``early-stop``): the curve entries also carry ``val_acc`` (on the held-out part of the
    training data as the trainer has it, i.e. protected), ``selected_epoch`` is the epoch with
    the best validation accuracy (the earliest on ties) and ``selected_acc`` its clean test
    accuracy; ``n_val`` held-out images are not trained on. Without one, these are ``None``
    and 0.

    A run whose training loss diverged (an epoch's mean loss not finite, or above
    :data:`DIVERGED_LOSS_FACTOR` · ln K, far above the ln K of a uniform guess) stops after
    that epoch with ``diverged`` true and ``diverged_epoch`` set: its accuracies measure a
    broken optimisation (too high a learning rate), not the data, and must not be reported
    as a result.
    """

    arch: str
    recipe: str
    recipe_params: Dict[str, Any]
    defense: str
    seed: int
    device: str
    torch_version: str
    final_acc: float
    best_acc: float
    best_epoch: int
    curve: List[Dict[str, float]]
    seconds: float  # total wall time of train_victim (setup, training, evaluation)
    train_seconds: float  # training steps only, evaluation excluded (CUDA events on GPU)
    n_train: int  # training images after the defense's transform_dataset (and validation hold-out)
    n_test: int
    num_classes: int
    defense_params: Dict[str, Any] = field(default_factory=dict)
    compiled: bool = False  # whether torch.compile was actually used
    amp: str = "fp32"  # "bf16" or "fp32"
    started: str = ""  # ISO timestamp (UTC)
    selected_epoch: Optional[int] = None  # best validation epoch (defenses with validation_split)
    selected_acc: Optional[float] = None  # clean test accuracy at selected_epoch
    n_val: int = 0  # held-out validation images (not trained on)
    diverged: bool = False  # the training loss became non-finite or exploded; training stopped early
    diverged_epoch: Optional[int] = None  # the epoch (1-based) at which it was detected
    model: Optional[torch.nn.Module] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """All fields except the model, JSON-serialisable."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        # A diverged epoch's loss is nan or inf, which strict JSON has no word for: null.
        d["curve"] = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in e.items()}
                      for e in self.curve]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainResult":
        """The inverse of :meth:`to_dict` (without the model)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"model"}
        return cls(**{k: v for k, v in d.items() if k in names})


def _validation_splitter(dfn: "Defense"):
    """The one component of ``dfn`` that defines ``validation_split``, or ``None``."""
    parts = list(getattr(dfn, "defenses", None) or [dfn])
    found = [d for d in parts if callable(getattr(d, "validation_split", None))]
    if len(found) > 1:
        raise UnlearnableError(f"defense {dfn.spec!r}: more than one part holds out validation data")
    return found[0] if found else None


def _as_nchw_uint8(x: ArrayLike, what: str) -> torch.Tensor:
    """uint8 NHWC numpy array or uint8 NCHW tensor -> uint8 NCHW tensor (on its device)."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UnlearnableError(f"{what} must be a uint8 (N, H, W, C) array with C = 1 or 3, got {x.dtype} "
                                   f"{x.shape} (an (N, C, H, W) layout goes in as a torch tensor)")
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UnlearnableError(f"{what} must be a uint8 (N, C, H, W) tensor with C = 1 or 3, got {x.dtype} "
                                   f"{tuple(x.shape)} (an (N, H, W, C) layout goes in as a numpy array)")
        return x
    raise UnlearnableError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _as_labels(y: ArrayLike, n: int, what: str) -> torch.Tensor:
    return torch.from_numpy(label_array(y, n, what, flatten=True))


class _Backends:
    """On CUDA, turn on ``cudnn.benchmark`` for the run, then restore the caller's setting.

    Why: shapes are fixed, so picking the fastest convolution algorithm once pays off at
    every step.
    """

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"

    def __enter__(self):
        if self.active:
            self.before = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.backends.cudnn.benchmark = self.before


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1024,
    amp: bool = False,
    tta_flip: bool = False,
    tta_translate: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    """Top-1 accuracy of ``model`` on uint8 NCHW images ``x`` (already on the model's device).

    Args:
        model: the classifier (put in eval mode here).
        x: ``(N, C, H, W)`` uint8 images on the device.
        y: ``(N,)`` int64 labels on the device.
        batch_size: images per forward pass.
        amp: bf16 autocast.
        tta_flip: average the logits of each image and its left-right mirror.
        tta_translate: if ``t > 0``, average half of that with the same for the image shifted
            by ``t`` pixels up-left and down-right (reflect padding), as airbench94's TTA.
        memory_format: layout the batches are given to the model in.

    Returns:
        Accuracy as a fraction in [0, 1] (0 for an empty set).
    """
    model.eval()
    n = x.shape[0]
    if n == 0:
        return 0.0
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, n, batch_size):
        xb = x[i : i + batch_size].float().div_(255).contiguous(memory_format=memory_format)
        with _autocast(x.device, amp):
            logits = _tta_logits(model, xb, tta_flip)
            if tta_translate > 0:
                t = int(tta_translate)
                h, w = xb.shape[2:]
                pad = F.pad(xb, (t, t, t, t), mode="reflect")
                shifted = (_tta_logits(model, pad[:, :, :h, :w].contiguous(memory_format=memory_format), tta_flip)
                           + _tta_logits(model, pad[:, :, 2 * t:, 2 * t:].contiguous(memory_format=memory_format), tta_flip))
                logits = 0.5 * logits + 0.25 * shifted
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    return correct.item() / n  # the one sync of the evaluation


def _tta_logits(model: torch.nn.Module, xb: torch.Tensor, flip: bool) -> torch.Tensor:
    logits = model(xb).float()
    if flip:
        logits = 0.5 * (logits + model(xb.flip(3)).float())  # mirror TTA: cheap, +~0.5 points
    return logits


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _make_optimizer(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD; with ``recipe.norm_lr_scale != 1`` normalisation parameters get their own group.

    Each param group carries ``lr_scale``: the engine sets ``lr = schedule * lr_scale``.
    """
    norm_ids = set()
    if recipe.norm_lr_scale != 1.0:
        for m in model.modules():
            if isinstance(m, _NORMS):
                norm_ids.update(id(p) for p in m.parameters(recurse=False))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if id(p) not in norm_ids], lr_scale=1.0, weight_decay=recipe.weight_decay)]
    if norm_ids:
        s = recipe.norm_lr_scale  # decay / s keeps lr * decay, the per-step shrink, unchanged (airbench)
        groups.append(dict(params=[p for p in params if id(p) in norm_ids], lr_scale=s, weight_decay=recipe.weight_decay / s))
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if device.type == "cuda":
        try:
            return torch.optim.SGD(groups, fused=True, **kw)  # one kernel for the whole update
        except (TypeError, RuntimeError):
            pass
    return torch.optim.SGD(groups, **kw)


class _Lookahead:
    """airbench's lookahead (Jordan, 2024): a slow copy of the weights that the fast ones are
    pulled onto every few steps, ``slow ← slow + (1 − decay)(fast − slow); fast ← slow``.

    The decay grows as ``peak · (step / steps)³``: early on the slow copy just follows, late
    in training it averages the last steps' noise away. Floating-point BatchNorm statistics
    are averaged too. With a learning rate that decays to 0 there is little noise left to
    average: ``screen`` measured no gain from it (``benchmarks/RESULTS.md``), so no recipe
    turns it on.
    """

    def __init__(self, model: torch.nn.Module, every: int, peak: float, total_steps: int):
        self.every, self.peak, self.total = every, peak, max(total_steps, 1)
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]  # views of the live tensors
        self.slow = [t.detach().clone() for t in self.fast]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call with the 1-based count of steps taken; syncs every ``every`` steps."""
        if step % self.every == 0:
            self._sync(self.peak * (step / self.total) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        """Leave the model at the slow weights (airbench's final update, decay 1)."""
        self._sync(1.0)

    def _sync(self, decay: float) -> None:
        torch._foreach_lerp_(self.slow, self.fast, 1.0 - decay)
        torch._foreach_copy_(self.fast, self.slow)


def _maybe_compile(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> Tuple[Callable, bool]:
    if not (recipe.compile and device.type == "cuda"):
        return model, False
    try:
        # Static shapes: one graph for the full batch, one for the epoch's last batch.
        return torch.compile(model, dynamic=False), True
    except Exception as e:  # pragma: no cover - depends on the installed toolchain
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); training eagerly", RuntimeWarning)
        return model, False


def train_victim(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    recipe: Union[str, Recipe],
    defense: Union[str, "Defense", None] = None,
    num_classes: Optional[int] = None,
    arch: Optional[str] = None,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    progress: Optional[ProgressFn] = None,
    checkpoint_fn: Optional[CheckpointFn] = None,
    return_model: bool = False,
    log_every: Optional[int] = None,
    model_factory: Optional[Callable[..., torch.nn.Module]] = None,
    context: Optional[Dict[str, Any]] = None,
) -> TrainResult:
    """Train a fresh victim model on ``train_*`` and measure it on clean ``test_*``.

    Args:
        train_x: training images, uint8 NHWC numpy array or uint8 NCHW tensor.
        train_y: ``(N,)`` integer labels.
        test_x: clean test images, same formats.
        test_y: ``(M,)`` integer labels.
        recipe: a :class:`Recipe` or a registered recipe name.
        defense: a :class:`Defense`, a spec string (``"standard"``, ``"jpeg:quality=10+standard"``)
            or ``None`` for no defense at all (the audit passes ``"standard"`` by default).
        num_classes: number of classes (default: largest label + 1).
        arch: model registry name, overriding ``recipe.arch``.
        seed: seeds model initialisation, shuffling and augmentation; on CPU the same seed
            gives the same result bit for bit.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; ``None`` picks CUDA when available.
        progress: ``progress(epoch, epochs, info)`` after every epoch, ``info`` being the
            epoch's curve entry (``epoch`` is 1-based).
        checkpoint_fn: ``checkpoint_fn(epoch, model)`` after every epoch (per-epoch analyses
            such as DFR); the model is the eager module, in eval mode. It must leave the
            model's parameters and buffers unchanged (copy it to re-estimate BatchNorm).
        return_model: keep the trained model in ``TrainResult.model``.
        log_every: log a line through :mod:`logging` every this many epochs (``None``: never).
        model_factory: ``factory(name, num_classes=, input_size=, in_channels=)`` used
            instead of :func:`unlearnable.models.create_model` (tests, custom models).
        context: what the trainer has besides the training set, handed to
            :meth:`Defense.prepare` (e.g. ``clean_x``/``clean_y`` for clean-ratio mixing);
            ``num_classes``, ``epochs`` and ``device`` are added.

    Returns:
        A :class:`TrainResult`.
    """
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    from ..defenses.base import create_defense

    recipe = get_recipe(recipe)
    dfn = create_defense(defense)
    dev = resolve_device(device)
    arch = arch or recipe.arch
    amp = recipe.bf16 if dev.type == "cuda" else recipe.bf16_cpu
    if amp and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp = False  # pre-Ampere GPUs: bf16 would be emulated (slow)
    fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format

    # -- data: to the device once, as uint8 ----------------------------------------------
    xtr = _as_nchw_uint8(train_x, "train_x")
    xte = _as_nchw_uint8(test_x, "test_x")
    ytr = _as_labels(train_y, xtr.shape[0], "train_y")
    yte = _as_labels(test_y, xte.shape[0], "test_y")
    if xtr.shape[0] < 2:
        raise UnlearnableError(f"need at least 2 training images, got {xtr.shape[0]}")
    if xte.shape[0] == 0:
        raise UnlearnableError("the test set is empty: there is nothing to measure accuracy on")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UnlearnableError(f"train images {tuple(xtr.shape[1:])} and test images {tuple(xte.shape[1:])} differ in shape (C, H, W)")
    if num_classes is None:
        num_classes = int(max(ytr.max().item(), yte.max().item() if yte.numel() else 0)) + 1
    if ytr.max().item() >= num_classes or yte.max().item() >= num_classes:  # >= 0: label_array
        raise UnlearnableError(f"labels must lie in [0, {num_classes})")

    with torch.random.fork_rng(devices=[dev.index] if dev.type == "cuda" else []), _Backends(dev):
        torch.manual_seed(seed)  # model init, dropout: global streams, restored on exit
        g_data = torch.Generator(device=dev).manual_seed(seed)  # shuffling
        g_aug = torch.Generator(device=dev).manual_seed(seed + 1_000_003)  # augmentation (own stream: a defense
        # that draws more numbers must not change the shuffle order)
        g_set = torch.Generator(device=dev).manual_seed(seed + 2_000_006)  # transform_dataset

        xtr = xtr.to(dev, non_blocking=True)
        ytr = ytr.to(dev, non_blocking=True)
        dfn.prepare({**(context or {}), "num_classes": int(num_classes), "epochs": recipe.epochs, "device": dev})
        xtr, ytr = dfn.transform_dataset(xtr, ytr, g_set)
        if xtr.dtype != torch.uint8:
            raise UnlearnableError(f"defense {dfn.spec!r}: transform_dataset must return uint8 images, got {xtr.dtype}")
        # Model selection on held-out training data (early-stop): split after the transform,
        # from its own stream, so runs without it are unchanged.
        splitter = _validation_splitter(dfn)
        xval = yval = None
        if splitter is not None:
            g_val = torch.Generator(device=dev).manual_seed(seed + 3_000_009)
            tr_idx, val_idx = splitter.validation_split(xtr.shape[0], g_val)
            tr_idx, val_idx = tr_idx.to(dev), val_idx.to(dev)
            if tr_idx.numel() < 2 or val_idx.numel() < 1:
                raise UnlearnableError(f"defense {dfn.spec!r}: validation split left {tr_idx.numel()} training "
                                       f"and {val_idx.numel()} validation images")
            pick = getattr(splitter, "validation_images", None)
            xval = pick(xtr, val_idx) if pick is not None else xtr[val_idx]
            xval, yval = xval.contiguous(memory_format=fmt), ytr[val_idx]
            xtr, ytr = xtr[tr_idx], ytr[tr_idx]
        patience = getattr(splitter, "patience", None)
        best_val, since_best = -1.0, 0
        xtr = xtr.contiguous(memory_format=fmt)  # batches gathered from it inherit the layout
        xte = xte.to(dev).contiguous(memory_format=fmt)
        yte = yte.to(dev)
        n = xtr.shape[0]
        _, c, h, w = xtr.shape

        # -- model -----------------------------------------------------------------------
        if model_factory is None:
            from ..models import create_model as model_factory  # lazy: models may import heavy deps
        model = model_factory(arch, num_classes=num_classes, input_size=h, in_channels=c)
        model = model.to(dev, memory_format=fmt)
        if hasattr(model, "init_whitening") and recipe.whiten_images > 0:
            # airbench: first conv = ZCA-style whitening of 2x2 patches from training images.
            k = min(n, recipe.whiten_images)
            idx = torch.randperm(n, device=dev, generator=g_set)[:k]
            with torch.no_grad():
                model.init_whitening(xtr[idx].float().div_(255))
        opt = _make_optimizer(model, recipe, dev)
        fwd, compiled = _maybe_compile(model, recipe, dev)

        # -- schedule --------------------------------------------------------------------
        bs = min(recipe.batch_size, n)
        steps_per_epoch = n // bs + (1 if n % bs > 1 else 0)  # skip a last batch of 1: BatchNorm needs 2
        total_steps = recipe.epochs * steps_per_epoch
        lrs = [recipe.lr_at(s, total_steps, steps_per_epoch) for s in range(total_steps)]  # host floats, no sync
        ls = recipe.label_smoothing

        def train_step(xb: torch.Tensor, yb: torch.Tensor, lr: float) -> Tuple[torch.Tensor, torch.Tensor]:
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]  # per-iteration schedule, host float: no sync
            with _autocast(dev, amp):
                logits = fwd(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=ls)  # yb may be (B, K) probabilities
            opt.zero_grad(set_to_none=True)  # frees the grads instead of a memset
            loss.backward()
            if recipe.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            return loss.detach(), logits.detach()

        lookahead = _Lookahead(model, recipe.lookahead_every, recipe.lookahead_decay, total_steps) \
            if recipe.lookahead_every > 0 else None
        curve: List[Dict[str, float]] = []
        diverged_epoch: Optional[int] = None
        loss_limit = DIVERGED_LOSS_FACTOR * max(1.0, math.log(max(int(num_classes), 2)))
        train_seconds = 0.0
        step = 0
        cuda = dev.type == "cuda"
        for epoch in range(1, recipe.epochs + 1):
            if cuda:  # GPU-side timing of the training steps: CUDA events, read after the epoch
                ev_start, ev_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ev_start.record()
            t0 = time.perf_counter()
            dfn.start_epoch(epoch, recipe.epochs)
            model.train()
            perm = torch.randperm(n, device=dev, generator=g_data)  # drawn on the device: no host copy
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            seen = 0
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                xb = xtr[idx].float().div_(255)  # gather uint8, convert on the device
                yb = ytr[idx]
                xb, yb = dfn.augment(xb, yb, g_aug)
                xb = dfn.adversary(model, xb, yb)
                xb = xb.contiguous(memory_format=fmt)  # no-op when the layout already matches
                try:
                    loss, logits = train_step(xb, yb, lrs[step])
                except Exception as e:
                    if not compiled or step > 0:
                        raise
                    # Compilation happens at the first call; nothing was updated yet, so retry eagerly.
                    warnings.warn(f"torch.compile failed at the first step ({type(e).__name__}: {e}); training eagerly", RuntimeWarning)
                    fwd, compiled = model, False
                    loss, logits = train_step(xb, yb, lrs[step])
                b = yb.shape[0]
                loss_sum += loss * b
                hard = yb if yb.ndim == 1 else yb.argmax(1)
                correct += (logits.argmax(1) == hard).sum()
                seen += b
                step += 1
                if lookahead is not None:
                    lookahead.after_step(step)
            if lookahead is not None and epoch == recipe.epochs:
                lookahead.finish()  # before the last evaluation: the final accuracy is the slow weights'
            if cuda:
                ev_end.record()
                ev_end.synchronize()
                epoch_seconds = ev_start.elapsed_time(ev_end) / 1000.0  # ms -> s
            else:
                epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds

            test_acc = _evaluate(model, xte, yte, recipe, amp, fmt)
            entry = {
                "epoch": epoch,
                "lr": float(lrs[step - 1]),
                "train_loss": loss_sum.item() / seen,  # one sync per epoch
                "train_acc": correct.item() / seen,
                "test_acc": test_acc,
                "epoch_seconds": epoch_seconds,
            }
            if xval is not None:
                entry["val_acc"] = _evaluate(model, xval, yval, recipe, amp, fmt)
                if entry["val_acc"] > best_val:
                    best_val, since_best = entry["val_acc"], 0
                else:
                    since_best += 1
            curve.append(entry)
            if checkpoint_fn is not None:
                checkpoint_fn(epoch, model)
            if progress is not None:
                progress(epoch, recipe.epochs, dict(entry))
            if log_every and (epoch % log_every == 0 or epoch == recipe.epochs):
                log.info(
                    "epoch %d/%d lr %.4g loss %.4f train %.4f test %.4f (%.2fs)",
                    epoch, recipe.epochs, entry["lr"], entry["train_loss"], entry["train_acc"], test_acc, epoch_seconds,
                )
            if not math.isfinite(entry["train_loss"]) or entry["train_loss"] > loss_limit:
                # Read from the epoch's accumulated loss (the sync above): no extra sync per step.
                diverged_epoch = epoch
                log.warning("training diverged at epoch %d/%d (mean train loss %g); stopped: lower the learning rate",
                            epoch, recipe.epochs, entry["train_loss"])
                break
            if patience is not None and since_best >= patience:
                break  # early stopping: no better validation accuracy for `patience` epochs

    best = max(curve, key=lambda e: e["test_acc"])
    selected = max(curve, key=lambda e: e["val_acc"]) if xval is not None else None  # max: earliest on ties
    model.eval()
    return TrainResult(
        arch=arch,
        recipe=recipe.name,
        recipe_params=recipe.to_dict(),
        defense=dfn.spec,
        defense_params=dfn.describe(),
        seed=seed,
        device=describe_device(dev),
        torch_version=torch.__version__,
        final_acc=curve[-1]["test_acc"],
        best_acc=best["test_acc"],
        best_epoch=int(best["epoch"]),
        curve=curve,
        seconds=time.perf_counter() - t_start,
        train_seconds=train_seconds,
        n_train=n,
        n_test=int(xte.shape[0]),
        num_classes=int(num_classes),
        compiled=compiled,
        amp="bf16" if amp else "fp32",
        started=started,
        model=model if return_model else None,
        selected_epoch=None if selected is None else int(selected["epoch"]),
        selected_acc=None if selected is None else selected["test_acc"],
        n_val=0 if xval is None else int(xval.shape[0]),
        diverged=diverged_epoch is not None,
        diverged_epoch=diverged_epoch,
    )


def _evaluate(model, x, y, recipe, amp, fmt) -> float:
    # Eager even when training is compiled: eval mode, no_grad and the eval batch shapes
    # would each cost torch.compile another graph (tens of seconds) to save milliseconds
    # per epoch, and evaluation is not part of the timed training.
    return evaluate(model, x, y, batch_size=recipe.eval_batch_size, amp=amp, tta_flip=recipe.tta_flip,
                    tta_translate=recipe.tta_translate, memory_format=fmt)
