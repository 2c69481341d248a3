"""REM — robust error-minimizing noise (Fu, He, Liu, Shen, Tao, "Robust Unlearnable Examples:
Protecting Data Against Adversarial Learning", ICLR 2022) and SEM — stable error-minimizing
noise (Liu et al., "Stable Unlearnable Example: Enhancing the Robustness of Unlearnable Examples
via Stable Error-Minimizing Noise", AAAI 2024). Written from ``specs/BASELINES.md`` §2–§3.

REM: ``min_θ Σ_i min_{‖δ_i‖∞ ≤ ρ_u} E_t max_{‖ρ‖∞ ≤ ρ_a} CE(f_θ(t(x_i + δ_i) + ρ), y_i)`` with a
surrogate adversarially trained (PGD at ρ_a) on the perturbed data inside the loop. SEM replaces
the inner max over ρ by one uniform draw ρ ~ U(±ρ_a) (the surrogate is still trained with PGD).

One generator step (batch of ``batch_size``, shuffled, drop_last):

1. defender (eval mode): δ from a **fresh** uniform start in ±ε (not warm-started: spec §2 (a)),
   ``pgd_steps`` signed descent steps of ``step_size``; each step's gradient is summed over
   ``eot`` draws of t = crop(pad 4, zero fill) + flip, each with its own ρ (REM: PGD-``rho_steps``
   ascent at ``rho``; SEM: uniform), ρ held constant (Danskin);
2. store ``round(255·δ)`` (whole grey levels, as REM's int8 noise);
3. surrogate: fresh t on ``x + noise``, PGD at ``rho`` in eval mode, one SGD step in train mode;
   lr = ``lr · lr_gamma^⌊step / lr_decay_every⌋``.

After ``steps`` steps a final pass regenerates the noise of **every** image with the final
surrogate (the official pass drops the last partial batch: §2 (b); we visit all images).

Differences: models take [0, 1] inputs (REM feeds x − 0.5; a constant shift before a BatchNorm'd
convolution), crop and flip are applied in the opposite order (same distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

import torch

from ..budget import Budget
from ..data.imageset import ImageSet
from . import register_method
from .base import Deltas, Progress
from .optim import (OptimMethod, Surrogate, Ticker, crop_flip, input_grad, make_generator, native_batches, pgd_rho,
                    project_, round_to_levels, signed_step_, through_resize, to_cpu, uniform_rho)

__all__ = ["REM", "SEM"]


@register_method("rem")
@dataclass
class REM(OptimMethod):
    """REM (Fu et al., ICLR 2022): robust error-minimizing noise, ℓ∞ 8/255 (ρ_u), ρ_a = 4/255.

    Args:
        surrogate: model name (paper: CIFAR ResNet-18).
        steps: generator steps (5000).
        batch_size: images per step (128).
        lr, lr_decay_every, lr_gamma: surrogate SGD lr 0.1, ×0.1 every 2000 steps.
        momentum, weight_decay: 0.9, 5e-4.
        pgd_steps: δ descent steps per visit (10).
        step_size: δ step in [0, 1] units; None → ε/5 (1.6/255).
        rho: ρ_a, the adversarial radius of the inner max and of the surrogate's AT (4/255).
        rho_steps: PGD steps for ρ (10), both in the defender and in the surrogate's AT.
        rho_step_size: None → ρ_a/5 (0.8/255).
        eot: augmentation draws per δ step (5).
        final_pass: regenerate every image's noise with the final surrogate (True).
        working_size: working side for mixed-size or large images.
        resize: for those, ``through`` (default): the final pass runs on each image's own
            pixels, the surrogate seeing them through the resize (always, even without
            ``final_pass``); ``bilinear``: the working δ is upsampled.
        checkpoint_every_s: seconds between checkpoints in ``workdir``.
    """

    surrogate: str = "resnet18"
    steps: int = 5000
    batch_size: int = 128
    lr: float = 0.1
    lr_decay_every: int = 2000
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pgd_steps: int = 10
    step_size: Optional[float] = None
    rho: float = 4.0 / 255.0
    rho_steps: int = 10
    rho_step_size: Optional[float] = None
    eot: int = 5
    final_pass: bool = True
    working_size: int = 32
    checkpoint_every_s: float = 300.0

    paper = ("Fu, He, Liu, Shen, Tao, Robust Unlearnable Examples: Protecting Data Against Adversarial "
             "Learning, ICLR 2022")
    inner_mode: ClassVar[str] = "pgd"  # how ρ is chosen in the defender: "pgd" (REM) or "uniform" (SEM)
    smoke_kwargs = dict(surrogate="small-cnn", steps=2, batch_size=16, pgd_steps=2, rho_steps=1, eot=1)

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        prob, ck = self._start(data, budget, seed, device, workdir)
        n, dev = prob.n, prob.device
        eps = budget.eps
        alpha = eps / 5.0 if self.step_size is None else float(self.step_size)
        rho = float(self.rho)
        rho_alpha = rho / 5.0 if self.rho_step_size is None else float(self.rho_step_size)
        bs = max(2, min(int(self.batch_size), n))
        nb_final = native_batches(prob, bs) if prob.through else math.ceil(n / bs) if self.final_pass else 0
        sur = Surrogate(self.surrogate, prob, seed=seed, lr=self.lr, momentum=self.momentum,
                        weight_decay=self.weight_decay)
        g_data, g_aug, g_noise = (make_generator(dev, seed, i) for i in (11, 12, 13))
        aug = crop_flip(4)
        lim = budget.levels / 255.0
        delta = torch.zeros((n,) + prob.shape, device=dev)
        s: Dict[str, Any] = dict(step=0, perm=None, pos=0, sweep=0)
        s = ck.restore({"delta": delta}, {"sur": sur}, {"g_data": g_data, "g_aug": g_aug, "g_noise": g_noise}) or s
        if s["perm"] is not None:
            s["perm"] = s["perm"].to(dev)
        tick = Ticker(progress, self.steps + nb_final, s["step"] + s["sweep"])

        def build():
            return to_cpu({"delta": delta, "sur": sur.state_dict(), "g_data": g_data.get_state(),
                           "g_aug": g_aug.get_state(), "g_noise": g_noise.get_state(), "loop": dict(s)})

        model = sur.model
        if self.inner_mode == "pgd":
            def inner(v, t):
                return pgd_rho(model, v, t, rho, self.rho_steps, rho_alpha, g_aug)
        else:
            def inner(v, t):
                return uniform_rho(v, rho, g_aug)

        def grad_fn(a, yb):
            return input_grad(model, a, yb, eot=self.eot, augment=aug, generator=g_aug, inner=inner)

        def defend(x01, yb):
            """The defender: fresh uniform start, PGD descent with EOT and inner ρ; grey levels."""
            model.eval()
            d = torch.empty_like(x01).uniform_(-eps, eps, generator=g_noise)
            project_(d, x01, budget)
            for _ in range(int(self.pgd_steps)):
                signed_step_(d, grad_fn(x01 + d, yb), alpha, x01, budget)
            d = round_to_levels(d).clamp_(-lim, lim)  # REM stores round(255·δ) as int8
            return project_(d, x01, budget)  # exact on the grey-level grid: x is k/255

        while s["step"] < self.steps:
            step = s["step"]
            sur.set_lr(self.lr * self.lr_gamma ** (step // max(1, int(self.lr_decay_every))))
            if s["perm"] is None or s["pos"] + bs > n:  # shuffled, drop_last loader
                s["perm"] = torch.randperm(n, device=dev, generator=g_data)
                s["pos"] = 0
            idx = s["perm"][s["pos"]:s["pos"] + bs]
            s["pos"] += bs
            x01, yb = prob.images(idx), prob.y[idx]
            delta[idx] = defend(x01, yb)
            v = aug((x01 + delta[idx]).clamp_(0, 1), g_aug)  # stored (rounded) noise, fresh t
            sur.adversarial_step(v, yb, rho, self.rho_steps, rho_alpha, g_aug)
            s["step"] = step + 1
            tick()
            ck.maybe_save(build, force=s["step"] == self.steps)
        if prob.through:  # the final pass on each image's own pixels, through the resize
            model.eval()
            out = through_resize(
                prob, lambda a, idx: grad_fn(a, prob.y[idx]), steps=self.pgd_steps, alpha=alpha, budget=budget,
                start=lambda d0, idx: d0.uniform_(-eps, eps, generator=g_noise), batch_size=bs, tick=tick,
                checkpoint=ck.sibling("native"), generators={"g_aug": g_aug, "g_noise": g_noise},
                post=lambda d, lo, hi: torch.minimum(torch.maximum(round_to_levels(d).clamp_(-lim, lim), lo), hi))
        while not prob.through and s["sweep"] < nb_final:  # final pass: every image, in order, final surrogate
            sl = slice(s["sweep"] * bs, min(n, (s["sweep"] + 1) * bs))
            delta[sl] = defend(prob.images(sl), prob.y[sl])
            s["sweep"] += 1
            tick()
            ck.maybe_save(build, force=s["sweep"] == nb_final)
        tick.finish()
        self.last_run = {"steps": s["step"], "final_pass_batches": nb_final, "resumed": ck.resumed,
                         "surrogate": model,
                         "epoch_equivalents": (s["step"] * bs + n * bool(nb_final)) / n
                         * (self.pgd_steps * self.eot * ((self.rho_steps if self.inner_mode == "pgd" else 0) + 1))
                         + s["step"] * bs / n * (self.rho_steps + 1)}
        return out if prob.through else prob.deltas_out(delta)


@register_method("sem")
@dataclass
class SEM(REM):
    """SEM (Liu et al., AAAI 2024): REM with the defender's inner max over ρ replaced by one
    uniform draw ρ ~ U(±ρ_a) per EOT sample; the surrogate is still adversarially trained with
    PGD-``rho_steps`` at ρ_a. Same hyperparameters and defaults as :class:`REM` (ℓ∞ 8/255)."""

    paper = ("Liu et al., Stable Unlearnable Example: Enhancing the Robustness of Unlearnable Examples via "
             "Stable Error-Minimizing Noise, AAAI 2024")
    inner_mode: ClassVar[str] = "uniform"
