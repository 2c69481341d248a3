"""Adversarial training: the trainer fits each batch's worst case inside a small ball.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (ICLR 2018): replace every training batch by a projected-gradient-descent
(PGD) attack on the current model, then take the usual SGD step on the attacked batch. Against
unlearnable examples it is the classic defense (Huang et al., ICLR 2021 §4; Fu et al., REM,
ICLR 2022): a perturbation smaller than the adversarial radius cannot be a reliable shortcut.

Two defenses, both ``adversary`` hooks (see :mod:`unlearnable.defenses.base`):

* ``at`` — ℓ∞ PGD. Defaults: ε = 8/255, 10 steps, step ε/4 (= 2/255 at ε = 8/255: the
  PGD-10 recipe of EM, APBench and MI-UE, specs/BASELINES.md §10.4), uniform random start in
  [−ε, ε] (Madry et al.; REM; torchattacks). ``at:steps=7`` is the PGD-7 / step ε/4 recipe;
  MI-UE's rows at ε ∈ {2, 4, 6}/255 keep the step at 2/255: ``at:eps=4,step=2``.
  Short forms ``at8`` = ``at:eps=8/255``, ``at4``, ``at2``, ...
* ``at-l2`` — ℓ2 PGD: ε = 0.5 (images in [0, 1]), 10 steps of 2.5·ε/steps along the
  ℓ2-normalised gradient, projection onto the ℓ2 ball, random start inside the ball.
  Short form ``at-l2-0.5`` = ``at-l2:eps=0.5``.

Design choices (all per batch, on the training device):

* BatchNorm: the attack runs with the model in **eval** mode (running statistics), then the
  model is put back in train mode for the update. This is what every recipe in BASELINES
  §10.4 does ("the attack run in eval mode and the update in train mode"); it also keeps the
  k attack forward passes from updating the running statistics k extra times per step, and is
  as fast as train mode. ``attack_mode="train"`` reproduces Madry et al.'s original setting
  (batch statistics during the attack); the running statistics are then saved and restored
  around the attack so that only the update's forward pass moves them.
* Gradients are taken only with respect to the perturbation
  (``torch.autograd.grad(loss, delta)``): no parameter ``.grad`` is touched or accumulated,
  and autograd skips the weight-gradient kernels.
* On CUDA the attack's forward/backward passes run under bf16 autocast like the training step
  (where the GPU supports bf16); the loop has no host synchronisation (no ``.item()``, no
  data-dependent Python branches).
* ``eps`` and ``step`` are read as :meth:`unlearnable.budget.Budget.parse` reads budgets:
  ``at:eps=8`` and ``at:eps=8/255`` are the same ℓ∞ ball (bare numbers ≥ 1 count grey levels);
  for ℓ2 a bare number is in the [0, 1] scale. Unlike a protection budget, a radius below one
  grey level is accepted (the attack works on float images).

Cost: a PGD-k epoch does k extra forward+backward passes per batch (input gradients only, so
each backward skips the weight-gradient kernels): at most (k + 1)× a clean epoch. Measured on
CPU (1 thread, ``small-cnn``, 1024 random 32×32 images, ``cpu-small`` recipe, training seconds
per epoch against ``standard``): PGD-7 5.7×, PGD-10 7.9×, ℓ2 PGD-10 7.3×.
"""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..budget import _ALIASES as _NORM_ALIASES
from ..errors import UnlearnableError
from .base import Defense, register_defense, register_short_form

__all__ = ["AdversarialTraining", "AdversarialTrainingL2", "pgd_linf", "pgd_l2"]

Number = Union[int, float, str]


# -- helpers --------------------------------------------------------------------------------
def _attack_autocast(x: torch.Tensor):
    """bf16 autocast on CUDA where supported (as the engine's training step), nothing on CPU."""
    if x.is_cuda and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_BN = torch.nn.modules.batchnorm._BatchNorm


@contextlib.contextmanager
def _attack_mode(model: torch.nn.Module, mode: str):
    """Put ``model`` in the attack's mode; restore train/eval (and BN buffers) afterwards."""
    was_training = model.training
    saved: List[Tuple[torch.Tensor, torch.Tensor]] = []
    if mode == "eval":
        model.eval()
    else:  # train mode: keep batch statistics but do not let the attack move the running ones
        model.train()
        for m in model.modules():
            if isinstance(m, _BN) and m.track_running_stats and m.running_mean is not None:
                saved.append((m.running_mean, m.running_mean.clone()))
                saved.append((m.running_var, m.running_var.clone()))
                if m.num_batches_tracked is not None:
                    saved.append((m.num_batches_tracked, m.num_batches_tracked.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        model.train(was_training)


def _input_grad(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_δ CE(model(x + δ), y), summed over the batch, without touching parameter gradients."""
    delta = delta.detach().requires_grad_(True)
    with torch.enable_grad():  # also when called under no_grad (analyses, evaluation code)
        with _attack_autocast(x):
            logits = model(x + delta)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")  # sum: per-sample gradients keep their scale
        (grad,) = torch.autograd.grad(loss, delta)
    return grad


def pgd_linf(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, steps: int,
             random_start: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Untargeted ℓ∞ PGD (Madry et al., 2018) maximising cross-entropy; returns ``x + δ`` in [0, 1].

    Args:
        model: classifier on float NCHW images in [0, 1] (its mode is the caller's business).
        x: ``(B, C, H, W)`` float images in [0, 1].
        y: ``(B,)`` int64 labels or ``(B, K)`` label distributions (soft labels from mixup/cutmix).
        eps: ℓ∞ radius in the [0, 1] scale.
        step: size of each signed-gradient step.
        steps: number of steps.
        random_start: start from ``U(−ε, ε)`` (projected into the image box), else from ``x``.
        generator: random stream for the start.

    Returns:
        The adversarial batch (detached), with ``‖x_adv − x‖∞ ≤ ε`` and values in [0, 1].
    """
    x = x.detach()
    if random_start:
        delta = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator).mul_(2 * eps).sub_(eps)
        delta = (x + delta).clamp_(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        grad = _input_grad(model, x, delta, y)
        delta = (delta + step * grad.sign()).clamp_(-eps, eps)
        delta = (x + delta).clamp_(0, 1) - x  # stay a valid image
    return (x + delta).detach()


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def pgd_l2(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, steps: int,
           random_start: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Untargeted ℓ2 PGD: normalised-gradient ascent steps, projection onto the ℓ2 ball of radius ε.

    The random start draws a direction uniformly on the sphere and a radius ``ε·U(0, 1)``.
    Arguments as :func:`pgd_linf`; returns ``x + δ`` in [0, 1] with ``‖δ‖₂ ≤ ε`` per sample.
    """
    x = x.detach()
    tiny = 1e-12
    if random_start:
        d = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype, generator=generator)
        delta = d / (_l2_norm(d) + tiny) * r * eps
        delta = (x + delta).clamp_(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        grad = _input_grad(model, x, delta, y)
        delta = delta + step * grad / (_l2_norm(grad) + tiny)
        delta = delta * (eps / (_l2_norm(delta) + tiny)).clamp_(max=1.0)  # project onto the ball
        delta = (x + delta).clamp_(0, 1) - x  # clipping only shrinks the norm: still in the ball
    return (x + delta).detach()


def _parse_size(value: Number, norm: str, what: str) -> float:
    """An attack radius or step as :meth:`Budget.parse` reads it (``8/255``, ``8``, ``0.0314``,
    ``linf:8/255``), in the [0, 1] scale.

    Unlike a protection budget, it need not reach one grey level after rounding to uint8: the
    attack works on float images, so ``at:eps=0.001`` is a (weak) adversarial training.
    """
    text = (value if isinstance(value, str) else repr(value)).strip()
    head, colon, rest = text.partition(":")
    if colon and head.strip().lower() in _NORM_ALIASES:
        if _NORM_ALIASES[head.strip().lower()] != norm:
            raise UnlearnableError(f"{what}: expected an {norm} size, got {value!r}")
        text = rest.strip()
    num, slash, den = text.partition("/")
    try:
        size = float(Fraction(num.strip()) / Fraction(den.strip())) if slash else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        size = math.nan
    if isinstance(value, bool) or not math.isfinite(size) or size <= 0:
        raise UnlearnableError(f"{what} must be a positive finite size (8/255, 8 grey levels or 0.0314), got {value!r}")
    if norm == "linf" and not slash and size >= 1:
        size /= 255.0  # bare numbers >= 1 count grey levels, as for budgets
    if norm == "linf" and size > 1:
        raise UnlearnableError(f"{what} must be at most 255/255 (an ℓ∞ ball that large holds every image), got {value!r}")
    return size


# -- defenses -------------------------------------------------------------------------------
class _PGDDefense(Defense):
    norm = "linf"

    def __init__(self, eps: Number, step: Optional[Number], steps: int, random_start: bool, attack_mode: str,
                 seed: Optional[int]):
        name = type(self).__dict__.get("registry_name", type(self).__name__)
        self.eps = _parse_size(eps, self.norm, f"{name}: eps")
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not math.isfinite(steps) \
                or int(steps) != steps or steps < 1:
            raise UnlearnableError(f"{name}: steps must be a positive integer, got {steps!r}")
        self.steps = int(steps)
        self.step = None if step is None else _parse_size(step, self.norm, f"{name}: step")
        if attack_mode not in ("eval", "train"):
            raise UnlearnableError(f"{name}: attack_mode must be 'eval' or 'train', got {attack_mode!r}")
        if not (isinstance(random_start, bool) or random_start in (0, 1)):
            raise UnlearnableError(f"{name}: random_start must be true or false, got {random_start!r}")
        self.random_start = bool(random_start)
        self.attack_mode = attack_mode
        self.seed = None if seed is None else int(seed)
        self._gen: Optional[torch.Generator] = None
        self._seed_now: Optional[int] = None

    def step_size(self) -> float:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """As :attr:`Defense.spec`, with ℓ∞ sizes in whole grey levels written ``k/255`` (``at:eps=4/255``)."""
        s = super().spec
        if self.norm != "linf" or ":" not in s:
            return s
        name, _, args = s.partition(":")
        items = []
        for item in args.split(","):
            key, _, value = item.partition("=")
            v = getattr(self, key, None)
            if key in ("eps", "step") and isinstance(v, float) and round(v * 255) >= 1 and abs(v * 255 - round(v * 255)) < 1e-9:
                value = f"{round(v * 255)}/255"
            items.append(f"{key}={value}")
        return name + ":" + ",".join(items)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            if self._seed_now is None:
                self._seed_now = self.seed if self.seed is not None else torch.initial_seed()
            self._gen = torch.Generator(device=device).manual_seed(self._seed_now)
        return self._gen

    def prepare(self, context) -> None:
        # A new training run restarts the random-start stream. With seed=None it follows the
        # run's seed: train_victim calls torch.manual_seed(seed) before prepare, and
        # initial_seed() reads it without drawing from (and so shifting) the global stream.
        self._gen = None
        self._seed_now = None

    def _attack(self, model, x, y, generator):
        raise NotImplementedError

    def adversary(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device) if self.random_start else None
        with _attack_mode(model, self.attack_mode):
            return self._attack(model, x, y, gen)


@register_defense("at")
class AdversarialTraining(_PGDDefense):
    """Adversarial training with ℓ∞ PGD (Madry et al., ICLR 2018), the attack in eval mode.

    Args:
        eps: ℓ∞ radius: ``8/255``, ``8`` (grey levels) or ``0.0314``.
        step: step size (same units); ``None``: ε/4 (2/255 at ε = 8/255).
        steps: PGD steps per batch (10: EM / APBench / MI-UE; 7 with step ε/4: Madry et al.).
        random_start: start from ``U(−ε, ε)``.
        attack_mode: ``"eval"`` (BatchNorm running statistics during the attack; the papers'
            recipe) or ``"train"`` (batch statistics; running statistics left untouched).
        seed: seed of the random-start stream (restarted at every training run); ``None``:
            the global torch seed (``train_victim``'s ``seed``).
    """

    norm = "linf"

    def __init__(self, eps: Number = 8 / 255, step: Optional[Number] = None, steps: int = 10,
                 random_start: bool = True, attack_mode: str = "eval", seed: Optional[int] = None):
        super().__init__(eps, step, steps, random_start, attack_mode, seed)

    def step_size(self) -> float:
        return self.step if self.step is not None else self.eps / 4

    def _attack(self, model, x, y, generator):
        return pgd_linf(model, x, y, eps=self.eps, step=self.step_size(), steps=self.steps,
                        random_start=self.random_start, generator=generator)


@register_defense("at-l2")
class AdversarialTrainingL2(_PGDDefense):
    """Adversarial training with ℓ2 PGD (Madry et al., ICLR 2018), the attack in eval mode.

    Args:
        eps: ℓ2 radius in the [0, 1] pixel scale (0.5 is the usual CIFAR value).
        step: step size; ``None``: 2.5·ε/steps (Madry et al.'s rule of thumb).
        steps: PGD steps per batch.
        random_start: start from a random point of the ball.
        attack_mode: ``"eval"`` or ``"train"``, as for ``at``.
        seed: seed of the random-start stream (``None``: the global torch seed).
    """

    norm = "l2"

    def __init__(self, eps: Number = 0.5, step: Optional[Number] = None, steps: int = 10,
                 random_start: bool = True, attack_mode: str = "eval", seed: Optional[int] = None):
        super().__init__(eps, step, steps, random_start, attack_mode, seed)

    def step_size(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    def _attack(self, model, x, y, generator):
        return pgd_l2(model, x, y, eps=self.eps, step=self.step_size(), steps=self.steps,
                      random_start=self.random_start, generator=generator)


register_short_form(r"at(\d+(?:\.\d+)?)", lambda m: f"at:eps={m[1]}")  # at8 = at:eps=8 (= 8/255)
register_short_form(r"at-l2-(\d+(?:\.\d+)?)", lambda m: f"at-l2:eps={m[1]}")  # at-l2-0.5
