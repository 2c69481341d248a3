"""The perturbation-optimisation engine shared by every optimising method (EM, REM, SEM, TAP, SEP,
and later TUE, MI-UE, DUNE).

Building blocks, usable in any loop (lightly style), each with a one-line "why":

* :class:`Problem` — the set on the device, once, as **uint8 NCHW** in a *canonical order*
  (sorted by image id, so no method depends on the order files were read), with labels, the
  working resolution and the way back (:meth:`Problem.deltas_out`: input order, HWC, native size).
* δ storage: one **float32** ``(N, C, H, W)`` tensor on the device in [0, 1] units (614 MB for
  CIFAR-10's train set). Why float32 rather than fp16/int8 grey levels: signed steps of 0.8/255
  accumulate exactly enough in float32, resume is bit-exact, and REM's int8 rounding is done
  explicitly where its paper does it (:func:`round_to_levels`).
* :func:`project_` / :func:`signed_step_` — ℓ∞ ball **and** image range ``x + δ ∈ [0, 1]`` in
  one clamp; other norms go through :meth:`Budget.project`.
* :func:`input_grad` — ∇ of a loss w.r.t. the input at ``x + δ``, averaged over ``eot`` random
  crop/flip draws (expectation over transformations), with an optional inner perturbation ρ
  held constant (REM's Danskin gradient, SEM's random ρ); :func:`pgd_rho` is that inner max.
* :class:`Surrogate` — a model + SGD optimiser for alternating (min-min) training:
  :meth:`Surrogate.train_step` on ``x + δ`` (optionally after PGD at ρ_a, REM/SEM);
  :func:`train_clean_surrogate` trains one to convergence on clean data through
  :func:`unlearnable.train.engine.train_victim` so the recipe is named and recorded (TAP, SEP).
* :class:`Checkpoint` — atomic save/resume of (δ, surrogate, optimiser, RNG states, loop
  counters) in the protect pipeline's ``workdir``, guarded by a run signature (method,
  hyperparameters, budget, seed, a hash of the pixels and labels). Resuming replays exactly the
  computation an uninterrupted run does, so on CPU the result is bit-identical. The pass on
  each image's own pixels (:func:`through_resize`) checkpoints its finished batches in grey
  levels, so an interrupted photo folder does not start that pass again.
* :class:`Ticker` — ``progress(done, total)`` in the method's own units (batches or steps);
  the CLI turns it into a bar with an ETA.

GPU: bf16 autocast for surrogate forward/backward on CUDA, channels-last memory; data stays on
the device as uint8 and is converted batch by batch. All randomness comes from explicit
``torch.Generator`` objects on the device (saved in checkpoints); the same seed gives the same
bytes on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..budget import Budget
from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from .base import (Deltas, Method, Progress, as_deltas, at_own_size, deltas_to_native, grey_levels,
                   per_class_patterns_to_images)
from .base import working_size as _working_size
from .resolution import RESIZE_MODES, PaddedResize, patterns_through_resize, size_batches

__all__ = [
    "Problem", "prepare", "project_", "signed_step_", "round_to_levels", "input_grad", "pgd_rho",
    "uniform_rho", "Surrogate", "train_clean_surrogate", "accuracy", "mean_loss", "Checkpoint",
    "Ticker", "run_signature", "crop_flip", "forward", "OptimMethod", "through_resize", "upsampled_start",
    "native_batches",
]

Tensor = torch.Tensor


# -- the set on the device -------------------------------------------------------------------
@dataclass
class Problem:
    """A labelled image set on the device in canonical (id-sorted) order.

    Attributes:
        data: the caller's set (input order).
        x: ``(N, C, H, W)`` uint8 images at the working size, canonical order, on ``device``.
        y: ``(N,)`` int64 labels, canonical order, on ``device``.
        order: ``order[i]`` = input index of canonical position ``i``.
        num_classes: K.
        device: torch device.
        resize: how δ reaches each image's own size when the set is worked at another size:
            ``through`` (the method makes δ at native size, :func:`through_resize`) or
            ``bilinear`` (:meth:`deltas_out` upsamples the working δ).
    """

    data: ImageSet
    x: Tensor
    y: Tensor
    order: np.ndarray
    num_classes: int
    device: torch.device
    resize: str = "bilinear"

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def through(self) -> bool:
        """Whether δ is made on each image's own pixels through the resize (:func:`through_resize`):
        ``resize == "through"`` and the set is worked at another size than its own."""
        return self.resize == "through" and not at_own_size(self.data, self.shape[1:])

    @property
    def memory_format(self) -> torch.memory_format:
        # channels-last: what cuDNN's tensor-core convolutions want (and oneDNN on CPU).
        return torch.channels_last

    def images(self, idx: Optional[Tensor] = None) -> Tensor:
        """Float [0, 1] images at ``idx`` (all when None), converted on the device."""
        xb = self.x if idx is None else self.x[idx]
        return xb.float().div_(255.0)

    def deltas_out(self, delta: Tensor) -> Deltas:
        """δ ``(N, C, H, W)`` canonical order → input order, HWC float32 numpy, native sizes."""
        inv = np.empty_like(self.order)
        inv[self.order] = np.arange(len(self.order))
        d = delta.detach().float().permute(0, 2, 3, 1).cpu().numpy()[inv]
        return deltas_to_native(self.data, d, "bilinear")

    def patterns_out(self, patterns: Tensor, eps: float) -> Deltas:
        """Class patterns ``(K, C, H, W)`` → one δ per image (its class's), at native sizes: the
        pattern itself, or (``resize="through"`` on a set worked at another size) the ±ε δ whose
        resize correlates most with it (:func:`~unlearnable.methods.resolution.patterns_through_resize`)."""
        p = patterns.detach().float().permute(0, 2, 3, 1).cpu().numpy()
        if not self.through:
            return per_class_patterns_to_images(self.data, p, "bilinear")
        labels = self.data.require_labels("a class-wise perturbation")
        return as_deltas(self.data, patterns_through_resize(
            [self.data.image(i) for i in range(len(self.data))], labels, p, eps, device=self.device))

    def fingerprint(self) -> str:
        """Hash of pixels and labels (canonical order): part of the checkpoint signature."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(self.x.shape)).encode())
        h.update(self.x.cpu().numpy().tobytes())
        h.update(self.y.cpu().numpy().astype(np.int64).tobytes())
        return h.hexdigest()


def prepare(data: ImageSet, device: str, working: int = 32, what: str = "this method",
            resize: str = "bilinear") -> Problem:
    """Put ``data`` on ``device`` as uint8 NCHW in canonical order, at its working size.

    Uniform sets of side ≤ 64 run natively; others are resized to ``working``² (base
    ``working_size`` policy) and their δ brought back to native size by
    :meth:`Problem.deltas_out` (``resize="bilinear"``) or made there by :func:`through_resize`.
    """
    labels = data.require_labels(f"method {what!r}")
    dev = torch.device(device)
    h, w = _working_size(data, working)
    order = np.argsort(np.asarray(data.ids, dtype=object), kind="stable")  # canonical: by id, not file order
    x_np = np.ascontiguousarray(data.stacked_at((h, w))[order])
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[order]).to(dev)
    k = max(int(data.num_classes), int(labels.max()) + 1 if len(labels) else 1)
    return Problem(data=data, x=x, y=y, order=order, num_classes=k, device=dev, resize=resize)


# -- projection and steps --------------------------------------------------------------------
def project_(delta: Tensor, x01: Tensor, budget: Budget) -> Tensor:
    """In place: δ onto the budget and ``x + δ`` into [0, 1] (``x01``: float images)."""
    if budget.norm == "linf":
        lo = (-x01).clamp_(min=-budget.eps)  # δ ≥ max(−ε, −x)
        hi = (1.0 - x01).clamp_(max=budget.eps)  # δ ≤ min(ε, 1 − x)
        return delta.clamp_(lo, hi)
    delta.copy_(budget.project(delta, x01))
    return delta


def signed_step_(delta: Tensor, grad: Tensor, alpha: float, x01: Tensor, budget: Budget,
                 descend: bool = True) -> Tensor:
    """In place: δ ← Π(δ ∓ α·sign(∇)) (descent by default), Π = budget ∩ image range."""
    delta.add_(grad.sign(), alpha=-alpha if descend else alpha)
    return project_(delta, x01, budget)


def round_to_levels(delta: Tensor) -> Tensor:
    """δ rounded to whole grey levels (REM/SEM store ``round(255·δ)`` as int8)."""
    return torch.round(delta * 255.0).div_(255.0)


# -- forward / gradients ---------------------------------------------------------------------
def _autocast(device: torch.device):
    # bf16 autocast on CUDA (tensor cores); fp32 on CPU, where it is exact and deterministic.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def forward(model: torch.nn.Module, xb: Tensor) -> Tensor:
    """Logits (float32) of ``model`` on a float batch, channels-last, bf16 autocast on CUDA."""
    with _autocast(xb.device):
        return model(xb.contiguous(memory_format=torch.channels_last)).float()


def crop_flip(pad: int = 4, flip_p: float = 0.5) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The differentiable EOT transform: random crop with zero padding ``pad`` + horizontal flip
    (both are indexing, so gradients flow back to the un-augmented input)."""
    from ..train.augment import random_crop, random_flip

    def aug(x: Tensor, g: torch.Generator) -> Tensor:
        return random_flip(random_crop(x, pad, g), flip_p, g)

    return aug


LossFn = Callable[[Tensor, Tensor], Tensor]


def ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)


def input_grad(model: torch.nn.Module, a: Tensor, target: Tensor, *, loss_fn: LossFn = ce_loss, eot: int = 1,
               augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None,
               generator: Optional[torch.Generator] = None,
               inner: Optional[Callable[[Tensor, Tensor], Tensor]] = None, return_loss: bool = False):
    """∇_a of ``loss_fn(f(t(a) + ρ), target)`` summed over ``eot`` draws of ``t`` (a sum, not a
    mean: only its sign is used).

    Args:
        model: the surrogate (its mode is the caller's; parameters get no gradients).
        a: float input batch ``x + δ`` (NCHW).
        target: labels the loss is computed against.
        loss_fn: ``loss_fn(logits, target)`` → scalar.
        eot: augmentation draws averaged over (1 without ``augment``).
        augment: ``augment(batch, generator)``, differentiable (e.g. :func:`crop_flip`).
        generator: random stream for ``augment`` and ``inner``.
        inner: ``inner(v, target)`` → a constant offset ρ added to the augmented input
            (REM: PGD ascent; SEM: a uniform draw). Treated as a constant (Danskin).
    """
    a = a.detach().requires_grad_(True)
    total = torch.zeros_like(a)
    loss_sum = torch.zeros((), device=a.device)
    draws = max(1, int(eot)) if augment is not None or inner is not None else 1
    for _ in range(draws):
        v = augment(a, generator) if augment is not None else a
        if inner is not None:
            rho = inner(v.detach(), target).detach()
            v = v + rho
        loss = loss_fn(forward(model, v), target)
        (g,) = torch.autograd.grad(loss, a)
        total.add_(g)
        loss_sum += loss.detach()
    return (total, loss_sum / draws) if return_loss else total


def pgd_rho(model: torch.nn.Module, v: Tensor, y: Tensor, rho: float, steps: int, step: float,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """REM's inner max: ρ by ``steps`` of PGD *ascent* on CE at ``v`` (uniform start in ±ρ),
    projected onto ‖ρ‖∞ ≤ ``rho`` and ``v + ρ ∈ [0, 1]``. Returns ρ (detached)."""
    lo = (-v).clamp(min=-rho)
    hi = (1.0 - v).clamp(max=rho)
    r = torch.rand(v.shape, device=v.device, generator=generator).mul_(2 * rho).sub_(rho)
    r = torch.minimum(torch.maximum(r, lo), hi)
    for _ in range(int(steps)):
        r.requires_grad_(True)
        loss = F.cross_entropy(forward(model, v + r), y)
        (g,) = torch.autograd.grad(loss, r)
        r = torch.minimum(torch.maximum(r.detach() + step * g.sign(), lo), hi)
    return r.detach()


def uniform_rho(v: Tensor, rho: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """SEM's inner step: one draw ρ ~ U(−ρ_a, ρ_a), clipped so that ``v + ρ ∈ [0, 1]``."""
    r = torch.rand(v.shape, device=v.device, generator=generator).mul_(2 * rho).sub_(rho)
    return (v + r).clamp_(0.0, 1.0) - v


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: Iterable[Tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy over ``(x, y)`` batches (eval mode is the caller's business)."""
    correct, seen = 0, 0
    for xb, yb in batches:
        correct += int((forward(model, xb).argmax(1) == yb).sum())
        seen += int(yb.numel())
    return correct / max(1, seen)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: Iterable[Tensor]) -> None:
    """Replace every BatchNorm layer's running statistics by their exact values over
    ``batches`` (one pass in train mode, cumulative average); the model is left in eval mode.

    Min-min methods run the surrogate in eval mode on statistics that a few SGD steps per
    round leave behind the weights; with small networks that lag decides the run (EM)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative: every batch weighs the same
        model.train()
        for xb in batches:
            forward(model, xb)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    model.eval()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Iterable[Tuple[Tensor, Tensor]], loss_fn: LossFn = ce_loss) -> float:
    """Mean per-batch loss over ``(x, y)`` batches (weighted by batch size)."""
    total, seen = 0.0, 0
    for xb, yb in batches:
        total += float(loss_fn(forward(model, xb), yb)) * int(yb.numel())
        seen += int(yb.numel())
    return total / max(1, seen)


# -- surrogates ------------------------------------------------------------------------------
class Surrogate:
    """A surrogate model and its SGD optimiser, for alternating (min-min) generation.

    Args:
        arch: model registry name (``resnet18``; ``small-cnn`` for CPU tests).
        problem: the set (gives K, channels, size, device).
        seed: seeds the initialisation (in a forked RNG: the global stream is untouched).
        lr, momentum, weight_decay, nesterov: SGD (torch semantics).
        grad_clip: max global gradient norm (EM: 5.0), None for none.
    """

    def __init__(self, arch: str, problem: Problem, *, seed: int, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False, grad_clip: Optional[float] = None):
        from ..models import create_model

        dev = problem.device
        c, h, _ = problem.shape
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(int(seed))
            if dev.type == "cuda":
                torch.cuda.manual_seed(int(seed))
            model = create_model(arch, num_classes=problem.num_classes, input_size=h, in_channels=c)
        self.model = model.to(dev, memory_format=torch.channels_last)
        self.lr = float(lr)
        self.grad_clip = grad_clip
        kw = dict(lr=self.lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.opt = torch.optim.SGD(self.model.parameters(), **kw)

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = float(lr)

    def train_step(self, xb: Tensor, yb: Tensor) -> Tensor:
        """One SGD step on CE(f(xb), yb) in train mode; returns the loss (detached, no sync)."""
        self.model.train()
        loss = F.cross_entropy(forward(self.model, xb), yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.detach()

    def train_steps(self, batches: Iterable[Tuple[Tensor, Tensor]], *, rho: float = 0.0, rho_steps: int = 0,
                    rho_step: float = 0.0, generator: Optional[torch.Generator] = None) -> float:
        """``n`` SGD steps, one per ``(x + δ, y)`` batch (min-min's θ-phase); with ``rho > 0``
        each is a PGD-AT step at radius ρ (REM/SEM). Returns the mean loss (one sync)."""
        losses = [self.adversarial_step(xb, yb, rho, rho_steps, rho_step, generator) if rho > 0
                  else self.train_step(xb, yb) for xb, yb in batches]
        return float(torch.stack(losses).mean()) if losses else float("nan")

    def adversarial_step(self, xb: Tensor, yb: Tensor, rho: float, steps: int, step: float,
                         generator: Optional[torch.Generator]) -> Tensor:
        """PGD-AT step (REM/SEM surrogate): PGD ascent at radius ρ in eval mode, then one SGD
        step on the adversarial batch in train mode."""
        self.model.eval()
        r = pgd_rho(self.model, xb, yb, rho, steps, step, generator) if rho > 0 and steps > 0 else 0.0
        return self.train_step(xb + r, yb)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def train_clean_surrogate(problem: Problem, *, arch: str, recipe: Any, epochs: Optional[int] = None, seed: int = 0,
                          checkpoint_fn: Optional[Callable[[int, torch.nn.Module], None]] = None,
                          eval_images: int = 1000, defense: str = "standard"):
    """Train a surrogate to convergence on the clean set with a named victim recipe.

    Uses :func:`unlearnable.train.engine.train_victim` (``return_model=True``), so the recipe
    is recorded like any victim's. The "test" set it reports is the first ``eval_images`` of
    the (canonical-order) training set: a training accuracy, not a generalisation number.

    Args:
        problem: the set.
        arch: model name (overrides the recipe's).
        recipe: a :class:`~unlearnable.train.recipes.Recipe` or a registered name.
        epochs: override the recipe's epochs (tests, smoke runs).
        seed: the training seed.
        checkpoint_fn: ``fn(epoch, model)`` after every epoch (SEP's self-ensemble).
        eval_images: images evaluated after each epoch.
        defense: augmentation while training (``standard``: crop + flip).

    Returns:
        ``(model in eval mode, TrainResult)``.
    """
    from ..train.engine import train_victim
    from ..train.recipes import get_recipe

    r = get_recipe(recipe)
    if epochs is not None:
        r = r.replace(epochs=int(epochs))
    m = min(problem.n, int(eval_images))
    res = train_victim(problem.x, problem.y, problem.x[:m], problem.y[:m], recipe=r, defense=defense,
                       num_classes=problem.num_classes, arch=arch, seed=seed, device=problem.device,
                       checkpoint_fn=checkpoint_fn, return_model=True)
    model = res.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, res


# -- δ on each image's own pixels, optimised through the resize ------------------------------
GradFn = Callable[[Tensor, Tensor], Any]


def through_resize(prob: Problem, grad_fn: GradFn, *, steps: int, alpha: float, budget: Budget,
                   start: Callable[[Tensor, Tensor], Tensor], batch_size: int = 512, restarts: int = 1,
                   post: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None,
                   tick: Optional["Ticker"] = None, checkpoint: Optional["Checkpoint"] = None,
                   generators: Optional[Dict[str, torch.Generator]] = None) -> Deltas:
    """Signed-gradient δ optimisation on each image's own pixels, the surrogate seeing the
    trainer's resize ``R(x + δ) = R(x) + R(δ)`` at the working size.

    Used when a set runs at a working size other than its own (mixed sizes, large photos):
    a δ optimised at the working size and upsampled is blurred by a trainer's own downsampling,
    which can undo the protection (measured, ``benchmarks/RESULTS.md``, "Resolution policy"). Images are
    processed once, in batches of similar sizes (:func:`~unlearnable.methods.resolution.size_batches`).

    Args:
        prob: the problem (its ``order`` gives the canonical index of each image).
        grad_fn: ``grad_fn(a, idx)`` → ∇ of the loss to *descend* at the working-size input
            ``a = R(x + δ)`` for canonical indices ``idx``; or ``(∇, loss)`` to rank restarts.
        steps: signed steps per image (per restart).
        alpha: step size in [0, 1] units.
        budget: the ℓ∞ budget; δ stays in it and in ``x + δ ∈ [0, 1]`` at native size.
        start: ``start(d0, idx)`` → the initial native δ, given ``d0`` (zeros, padded shape).
        batch_size: images per batch (also bounded by ``NATIVE_PIXELS`` padded pixels).
        restarts: independent starts per batch; the one with the lowest final loss is kept.
        post: ``post(d, lo, hi)`` applied to the final δ (REM's rounding to grey levels).
        tick: advanced after each batch (progress).
        checkpoint: where and under which signature to keep the finished batches: each is
            saved once (:class:`BatchStore`, in ``<workdir>/<name>/``) with its δ in grey levels
            (the shared quantisation rounds them anyway) and ``generators``' states after it,
            so an interrupted pass over a large photo folder resumes where it stopped and
            gives the same bytes as an uninterrupted one.
        generators: the random generators ``start`` and ``grad_fn`` draw from.

    Returns:
        One HWC δ per image, input order, native sizes (stacked for uniform sets), in whole
        grey levels (int8, or int16 above 127: :func:`~unlearnable.methods.base.grey_levels`),
        which :meth:`Budget.quantize` maps to the same bytes as the unrounded δ, at a quarter
        of float32's memory.
    """
    images = [prob.data.image(int(i)) for i in prob.order]
    hw = tuple(prob.shape[1:])
    cache: Dict[Tuple[int, int], Tensor] = {}
    batches = size_batches([im.shape[:2] for im in images], max(1, int(batch_size)))
    gens = dict(generators or {})
    names = sorted(gens)
    # Finished images in batch order, as grey levels: as small as the images themselves.
    levels: List[np.ndarray] = []
    # Each finished batch is saved once with the generators' states after it (write-once files:
    # the I/O stays proportional to the set); a resumed run takes the finished prefix.
    store = checkpoint.batch_store() if checkpoint is not None else None
    first = 0
    while store is not None and first < len(batches):
        got = store.load(f"batch{first:06d}")
        if got is None or len(got) != len(batches[first]) + len(names):
            break
        levels.extend(got[:len(batches[first])])
        for key, state in zip(names, got[len(batches[first]):]):
            gens[key].set_state(torch.from_numpy(state))
        first += 1
    if first:
        checkpoint.resumed = True
    if tick is not None:
        tick.done += first  # done before an interruption
    for k, batch in enumerate(batches[first:], start=first):
        idx = torch.as_tensor(batch, device=prob.device)
        b = PaddedResize([images[i] for i in batch], hw, prob.device, cache)
        lo, hi = b.bounds(budget.eps)
        xw = b.down(b.x)  # R(x): the resize of the exact native pixels
        best, best_loss = None, math.inf
        for _ in range(max(1, int(restarts))):
            d = torch.minimum(torch.maximum(start(torch.zeros_like(b.x), idx), lo), hi)
            loss = math.inf
            for _ in range(int(steps)):
                r = grad_fn(xw + b.down(d), idx)
                g, loss = (r[0], float(r[1])) if isinstance(r, tuple) else (r, loss)
                d = torch.minimum(torch.maximum(d - alpha * b.up(g).sign(), lo), hi)
            if best is None or loss < best_loss:
                best, best_loss = d, loss
        if post is not None:
            best = post(best, lo, hi)
        done = [grey_levels(b.crop(best, j)) for j in range(len(batch))]
        levels.extend(done)
        if store is not None:
            store.save(f"batch{k:06d}", done + [gens[key].get_state().cpu().numpy() for key in names])
        if tick is not None:
            tick()
    # The levels are in batch order; each image's δ goes back to its input position.
    out: list = [None] * prob.n
    for i, lv in zip((i for batch in batches for i in batch), levels):
        out[int(prob.order[i])] = lv
    return as_deltas(prob.data, out)


def upsampled_start(prob: Problem, delta: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """A :func:`through_resize` start: the working-size δ (canonical order) upsampled bilinearly."""

    def start(d0: Tensor, idx: Tensor) -> Tensor:
        for j, i in enumerate(idx.tolist()):
            H, W = prob.data.shape_of(int(prob.order[i]))
            d0[j, :, :H, :W] = F.interpolate(delta[i:i + 1].float(), size=(H, W), mode="bilinear",
                                             align_corners=False)[0]
        return d0

    return start


def native_batches(prob: Problem, batch_size: int) -> int:
    """How many batches :func:`through_resize` will take (for progress totals)."""
    return len(size_batches([prob.data.shape_of(int(i)) for i in prob.order], max(1, int(batch_size))))


# -- checkpoint / resume ---------------------------------------------------------------------
def run_signature(method: "Method", budget: Budget, seed: int, data_fingerprint: str,
                  ignore: Sequence[str] = ("checkpoint_every_s",)) -> str:
    """What a checkpoint must match to be resumed: method, hyperparameters, budget, seed, data
    (``data_fingerprint``, e.g. :meth:`Problem.fingerprint`)."""
    hp = {k: v for k, v in dataclasses.asdict(method).items() if k not in ignore}
    blob = json.dumps({"method": method.registry_name, "hp": hp, "budget": [budget.norm, budget.eps],
                       "seed": int(seed), "data": data_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpoint:
    """Atomic save/resume of a generation run in ``workdir`` (no-op when ``workdir`` is None).

    ``maybe_save(build)`` saves ``build()`` when ``every_s`` seconds have passed since the last
    save (``every_s=0``: at every opportunity); ``build`` is only called then, so copying δ off
    the device costs nothing in between. Files are written to a temporary name and renamed
    into place, so an interruption never leaves a half-written checkpoint. A checkpoint whose
    signature differs from the run's is ignored (and overwritten at the next save).
    """

    def __init__(self, workdir: Optional[str], name: str, signature: str, every_s: float = 300.0):
        self.workdir, self.name = workdir, name
        self.path = None if not workdir else os.path.join(workdir, f"{name}.ckpt.pt")
        self.signature = signature
        self.every_s = float(every_s)
        self.last = time.monotonic()
        self.resumed = False

    def batch_store(self) -> Optional["BatchStore"]:
        """Write-once per-batch files under this checkpoint's name and signature (None without a
        folder): what a pass that finishes images batch by batch keeps instead of a whole state."""
        return BatchStore(os.path.join(self.workdir, self.name), self.signature) if self.workdir else None

    def sibling(self, part: str, every_s: Optional[float] = None) -> "Checkpoint":
        """A checkpoint for another part of the same run (same folder and signature)."""
        return Checkpoint(self.workdir, f"{self.name}-{part}", self.signature,
                          self.every_s if every_s is None else every_s)

    def load(self) -> Optional[Dict[str, Any]]:
        if self.path is None or not os.path.isfile(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt or foreign file: start afresh
            return None
        if not isinstance(state, dict) or state.get("signature") != self.signature:
            return None
        self.resumed = True
        return state

    def restore(self, tensors: Optional[Dict[str, Tensor]] = None, modules: Optional[Dict[str, Any]] = None,
                generators: Optional[Dict[str, torch.Generator]] = None) -> Optional[Dict[str, Any]]:
        """Load a matching checkpoint into the run's live objects (tensors copied in place on their
        device, ``load_state_dict`` for surrogates, ``set_state`` for generators) and return its
        loop state; None when there is nothing to resume."""
        st = self.load()
        if st is None:
            return None
        for key, t in (tensors or {}).items():
            t.copy_(st[key].to(t.device))
        for key, mod in (modules or {}).items():
            mod.load_state_dict(st[key])
        for key, g in (generators or {}).items():
            g.set_state(st[key])
        return st["loop"]

    def save(self, state: Dict[str, Any]) -> None:
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        torch.save({**state, "signature": self.signature}, tmp)
        os.replace(tmp, self.path)
        self.last = time.monotonic()

    def maybe_save(self, build: Callable[[], Dict[str, Any]], force: bool = False) -> None:
        if self.path is None:
            return
        if force or time.monotonic() - self.last >= self.every_s:
            self.save(build())


class BatchStore:
    """Write-once files for the finished batches of a long per-image pass (no-op without a folder).

    :class:`Checkpoint` rewrites a whole loop state every few minutes, which suits optimisation
    loops whose state is the perturbation of the whole set. A pass that finishes images batch by
    batch (PIL on a folder of large photos) instead saves each batch once, atomically, in its
    own ``.npz`` (no pickles): the I/O stays proportional to the set, and an interrupted run
    resumes at the first batch without a file. Files whose signature differs from the run's
    are ignored (and replaced).
    """

    def __init__(self, folder: Optional[str], signature: str):
        self.folder, self.signature = folder, signature
        self.resumed = 0  # batches taken from earlier files
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _path(self, key: str) -> Optional[str]:
        return None if not self.folder else os.path.join(self.folder, f"{key}.npz")

    def load(self, key: str) -> Optional[List[np.ndarray]]:
        """The arrays saved under ``key`` by this same run, or None."""
        path = self._path(key)
        if path is None or not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["signature"]) != self.signature:
                    return None
                arrays = [z[f"a{i}"] for i in range(int(z["count"]))]
        except Exception:  # a foreign or damaged file: do the batch again
            return None
        self.resumed += 1
        return arrays

    def save(self, key: str, arrays: Sequence[np.ndarray]) -> None:
        path = self._path(key)
        if path is None:
            return
        from ..data.save import atomic_write

        named = {f"a{i}": np.asarray(a) for i, a in enumerate(arrays)}
        atomic_write(path, lambda f: np.savez(f, signature=np.array(self.signature), count=np.array(len(named)),
                                              **named))


def gen_state(g: torch.Generator) -> Tensor:
    return g.get_state()


def make_generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    """A generator on ``device`` for one named stream of a seed (streams never share numbers)."""
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(stream) * 7919) & 0x7FFFFFFFFFFFFFFF)


def to_cpu(obj: Any) -> Any:
    """A deep copy of a (nested) state with every tensor on the CPU (for checkpoints)."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class Ticker:
    """``progress(done, total)`` in a method's own units; ``total`` may be an upper bound
    (EM stops early: its total assumes ``max_rounds``)."""

    def __init__(self, progress: Progress, total: int, done: int = 0):
        self.progress = progress
        self.total = max(1, int(total))
        self.done = int(done)

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def finish(self) -> None:
        self.done = self.total
        if self.progress is not None:
            self.progress(self.total, self.total)


# -- a base class for the optimising methods -------------------------------------------------
@dataclass
class OptimMethod(Method):
    """Common fields of the optimising baselines (subclasses add their paper's hyperparameters).

    Fields shared by all: ``surrogate`` (model registry name; ``small-cnn`` for CPU tests),
    ``working_size`` (side of the working resolution for mixed-size or large images),
    ``resize`` (for such sets, how δ reaches each image's own pixels: ``through``, the method's
    δ-objective optimised on the native pixels with the surrogate seeing the trainer's resize,
    :func:`through_resize`, or for class patterns the δ whose resize correlates most with the
    pattern; or ``bilinear`` upsampling of the working δ, which that resize blurs: measured, PIL's
    protection vanishes and EM's weakens) and ``checkpoint_every_s`` (seconds between checkpoints
    in ``workdir``; not part of the resume signature since it does not change the result).
    """

    resize: str = "through"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resize not in RESIZE_MODES:  # at creation: before any data is read
            raise UnlearnableError(f"{self.registry_name}: resize must be one of {', '.join(RESIZE_MODES)}, "
                                   f"got {self.resize!r}")

    @property
    def mixed_size_caveat(self) -> str:  # type: ignore[override]
        if self.resize == "through":
            return ""
        side = int(getattr(self, "working_size", 32))
        return (f"optimises δ at {side}x{side} and upsamples it to these images' sizes; a trainer's resize blurs "
                "an upsampled δ, which can undo the protection; resize=through avoids this")

    def _start(self, data: ImageSet, budget: Budget, seed: int, device: str, workdir: Optional[str],
               name: Optional[str] = None) -> Tuple[Problem, Checkpoint]:
        if budget.norm != "linf":
            raise UnlearnableError(f"{self.registry_name}: only ℓ∞ budgets are implemented")
        prob = prepare(data, device, int(getattr(self, "working_size", 32)), self.registry_name, self.resize)
        sig = run_signature(self, budget, seed, prob.fingerprint(), ignore=("checkpoint_every_s",))
        ck = Checkpoint(workdir, name or self.registry_name, sig, float(getattr(self, "checkpoint_every_s", 300.0)))
        return prob, ck
