"""PIL: Perturbation-Induced Linearization (Liu, Chen, Zhang, ICLR 2026).

PIL protects a data set with a *linear* surrogate only: no deep network is trained. A
bias-free two-layer linear classifier ``f(z) = W2 · W1 · vec(z)`` (``W1: d → K``,
``W2: K → K``) is fitted with cross-entropy on the shuffled clean set; then every image gets a
perturbation δ that (a) is itself a linear shortcut for its label and (b) erases the linear
evidence of the image::

    L(δ) = λ · CE(f(δ), y) + (1 − λ) · KL(u ‖ softmax f(x − δ)),   λ = 0.9, u uniform

minimised by 30 signed descent steps of α = ε/10 from δ ~ U(−ε, ε), δ clipped to [−ε, ε] (and
``x − δ`` kept in [0, 1]) after each step. The published image is ``x' = clip(x − δ)``, so
:meth:`PIL.perturb` returns ``−δ``.

Budget: ℓ∞, 8/255 by default. The base class rounds to nearest and clips, so every published
uint8 image is within ε in grey levels (the official code truncates ``x − δ`` and reaches 9/255
at ε = 8/255).

Resolution policy: a set whose images all share one size of at most 64 px runs at that native
size. Other sets (mixed sizes, large photos) are resized (bilinear, antialiased when shrinking)
to ``working_size``² to fit the surrogate. The attack then runs on each image's native pixels,
with the surrogate seeing them through that same resize (``resize="through"``, the default): δ is
a shortcut for a trainer who resizes to the working size. Measured with
``benchmarks/bench_resolution.py`` (5,000 CIFAR-10 images upscaled to mixed sizes of 40-72 px,
small CNN without augmentation, clean test accuracy): at 32 px, clean 59.4 %, δ upsampled from
32² 58.4 %, through the resize 34.1 %; at 64 px, 55.6 / 53.6 / 13.2 %. The trainer's antialiased
downsampling blurs an upsampled δ away. The base class projects, quantises and verifies the
budget at native size.

Why it is fast (our implementation, written from the spec):

* ``f`` is linear, so ``f`` collapses to ``M = W2 · W1`` (K × d) for the attack and the
  gradient of L is in closed form: ``∇δ L = Mᵀ [λ (softmax(Mδ) − e_y) − (1 − λ)(softmax(Mx − Mδ) − u)] / B``.
  One step is two skinny matmuls (B×d·d×K and B×K·K×d) plus three in-place element-wise
  passes; no autograd graph. ``Mx`` is computed once per batch.
* The surrogate is trained with hand-written gradients of the two-layer linear network
  (same SGD-momentum dynamics as autograd + ``torch.optim.SGD``, no per-step graph).
* All data lives on the device once, as uint8; batches are gathered and converted there.
  Every batch is attacked once (the attack is per-sample: the batch only sets the 1/B scale,
  which the sign removes).

Order independence: the set is put in a canonical order (sorted by ``ids``) before the
shuffle, the surrogate fit and the random start, so permuting the input permutes the output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, Method, Progress, as_deltas, at_own_size, check_fields, deltas_to_native, grey_levels
from .base import working_size as _working_size
from .resolution import RESIZE_MODES, PaddedResize, batch_pass, size_batches

__all__ = ["PIL", "fit_surrogate", "pil_attack", "surrogate_accuracy", "SURROGATE_FITS"]

#: Surrogate fitting recipes. ``paper``: the official one (30 epochs, batch 512, SGD lr 0.003,
#: momentum 0.9, cosine per epoch). ``fast``: the same optimiser with fewer, larger steps
#: (10 epochs, batch 2048, lr scaled linearly with the batch to 0.012).
SURROGATE_FITS = ("paper", "fast")
_FAST = dict(epochs=10, batch=2048, lr_scale=4.0)


def _torch():
    import torch

    return torch


def fit_surrogate(x, y, num_classes: int, *, epochs: int = 30, lr: float = 0.003, momentum: float = 0.9,
                  batch_size: int = 512, seed: int = 0, device: str = "cpu"):
    """Fit PIL's bias-free two-layer linear surrogate with SGD (momentum, cosine per epoch, no decay).

    Args:
        x: ``(N, d)`` uint8 (grey levels) or float ([0, 1]) tensor of flattened images, on ``device``.
        y: ``(N,)`` int64 labels on ``device``.
        num_classes: K.
        epochs: passes over the (re-shuffled each epoch) data.
        lr: peak learning rate, annealed per epoch as ``lr · (1 + cos(π e / epochs)) / 2``.
        momentum: SGD momentum (PyTorch semantics, no dampening).
        batch_size: samples per step (the last, smaller batch is kept).
        seed: seeds the initialisation (``nn.Linear``'s U(±1/√fan_in)) and the shuffles.
        device: where ``x`` lives.

    Returns:
        ``(W1, W2)``: ``(K, d)`` and ``(K, K)`` float32 tensors; logits are ``x @ W1.T @ W2.T``.
    """
    torch = _torch()
    n, d = x.shape
    k = int(num_classes)
    g = torch.Generator(device="cpu").manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    # nn.Linear's default init (kaiming_uniform with a=√5) is U(−1/√fan_in, 1/√fan_in).
    w1 = ((torch.rand(k, d, generator=g) * 2 - 1) / math.sqrt(d)).to(device)
    w2 = ((torch.rand(k, k, generator=g) * 2 - 1) / math.sqrt(k)).to(device)
    b1, b2 = torch.zeros_like(w1), torch.zeros_like(w2)  # momentum buffers
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    bs = max(1, min(int(batch_size), n))
    eye = torch.eye(k, device=device)
    first = True
    for epoch in range(int(epochs)):
        lr_e = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))  # CosineAnnealingLR(T_max=epochs), per epoch
        perm = torch.randperm(n, generator=g).to(device)  # drawn on the CPU: the same order on every device
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb = x[idx].float().mul_(scale)
            h = xb @ w1.T  # (B, K)
            p = torch.softmax(h @ w2.T, dim=1)
            gl = (p - eye[y[idx]]).div_(idx.numel())  # dCE/dlogits, batch mean
            gw2 = gl.T @ h
            gw1 = (gl @ w2).T @ xb
            if first:  # torch.optim.SGD: the first step's buffer is the gradient itself
                b1.copy_(gw1), b2.copy_(gw2)
                first = False
            else:
                b1.mul_(momentum).add_(gw1)
                b2.mul_(momentum).add_(gw2)
            w1.sub_(b1, alpha=lr_e)
            w2.sub_(b2, alpha=lr_e)
    return w1, w2


def surrogate_accuracy(w1, w2, x, y, batch_size: int = 8192) -> float:
    """Accuracy of the surrogate ``x @ W1.T @ W2.T`` on ``(N, d)`` uint8/float images ``x``, labels ``y``."""
    torch = _torch()
    m = w2 @ w1
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        logits = (x[s:s + batch_size].float() * scale) @ m.T
        correct += int((logits.argmax(1) == y[s:s + batch_size]).sum())
    return correct / max(1, x.shape[0])


def _logit_grad(ld, lx, onehot, lam: float):
    """∂L/∂(mδ) for logits ``ld = mδ`` and ``lx = mx`` (up to the 1/B of the batch mean): the
    shortcut term's ``λ (softmax(mδ) − e_y)`` minus the erasing term's ``(1 − λ)(softmax(mx − mδ) − u)``."""
    torch = _torch()
    c = (torch.softmax(ld, 1) - onehot).mul_(lam)
    return c.sub_((torch.softmax(lx - ld, 1) - 1.0 / onehot.shape[1]).mul_(1.0 - lam))


def pil_attack(x, y, m, eps: float, *, lam: float = 0.9, steps: int = 30, step_size: Optional[float] = None,
               batch_size: int = 4096, seed: int = 0, progress: Progress = None):
    """PIL's per-sample attack against a frozen linear map ``m`` (K × d).

    Minimises ``λ·CE(mδ, y) + (1−λ)·KL(u ‖ softmax m(x − δ))`` by ``steps`` signed descent steps
    of ``step_size`` (default ε/10) from δ ~ U(−ε, ε), projecting δ onto
    ``[max(−ε, x − 1), min(ε, x)]`` (the ℓ∞ ball and ``x − δ ∈ [0, 1]``) after each step.

    Args:
        x: ``(N, d)`` uint8 or [0, 1] float tensor, on the device the attack runs on.
        y: ``(N,)`` int64 labels, same device.
        m: ``(K, d)`` float32 surrogate map, same device.
        eps: ℓ∞ radius in the [0, 1] scale.
        lam: weight λ of the shortcut term.
        steps: number of signed steps.
        step_size: α; ``None`` → ε/10.
        batch_size: samples per batch (each batch is attacked once, start to finish).
        seed: seeds the uniform start (drawn on the CPU, batch by batch, in the order of ``x``).
        progress: ``progress(done, total)`` after each batch.

    Returns:
        δ as an ``(N, d)`` float32 CPU tensor; the published image is ``clip(x − δ)``.
    """
    torch = _torch()
    n, d = x.shape
    k = m.shape[0]
    alpha = eps / 10.0 if step_size is None else float(step_size)
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    g = torch.Generator(device="cpu").manual_seed((int(seed) + 0x5EED) & 0x7FFFFFFFFFFFFFFF)
    out = torch.empty((n, d), dtype=torch.float32)
    eye = torch.eye(k, device=m.device)
    mt = m.T.contiguous()
    bs = max(1, int(batch_size))
    if progress is not None:
        progress(0, n)  # the attack starts now: its ETA should not count the surrogate fit
    for s in range(0, n, bs):
        e = min(n, s + bs)
        xb = x[s:e].float().mul_(scale)
        lo = (xb - 1.0).clamp_(min=-eps)  # x − δ ≤ 1 and δ ≥ −ε
        hi = xb.clamp(max=eps)  # x − δ ≥ 0 and δ ≤ ε
        lx = xb @ mt  # logits of x, once: m(x − δ) = mx − mδ
        del xb
        delta = (torch.rand((e - s, d), generator=g) * (2 * eps) - eps).to(m.device)
        delta.clamp_(lo, hi)
        onehot = eye[y[s:e]]
        grad = torch.empty_like(delta)
        for _ in range(int(steps)):
            ld = delta @ mt
            c = _logit_grad(ld, lx, onehot, lam)
            # ∇δ L up to the positive 1/B of the batch mean, which the sign ignores.
            torch.matmul(c, m, out=grad)
            delta.sub_(grad.sign_(), alpha=alpha)
            delta.clamp_(lo, hi)  # project: ℓ∞ ball and x − δ ∈ [0, 1], one pass
        out[s:e] = delta.cpu()
        if progress is not None:
            progress(e, n)
    return out


def pil_attack_native(images, y, m, eps: float, hw, *, lam: float = 0.9, steps: int = 30,
                      step_size: Optional[float] = None, batch_size: int = 1024, seed: int = 0,
                      device: str = "cpu", progress: Progress = None, store=None,
                      shapes: Optional[Sequence[Tuple[int, int]]] = None,
                      sink: Optional[Callable[[List[int], List[np.ndarray]], None]] = None,
                      skip: Optional[Callable[[List[int]], bool]] = None):
    """PIL's attack with δ at each image's native size, seen by the surrogate through the resize.

    The surrogate ``m`` works at ``hw``; it sees ``R(x − δ) = R(x) − R(δ)`` with ``R`` the
    antialiased bilinear resize (:func:`~unlearnable.methods.resolution.resize_matrix`), and the signed steps are taken on the
    native δ with the gradient pulled back through ``R`` (``Rᵀ g``). A δ optimised at ``hw``
    and then upsampled is blurred by the trainer's own downsampling back to ``hw`` (measured:
    the protection vanishes); this one is a shortcut *after* that resize, by construction.

    Images of different sizes share a batch: each is padded to the batch's largest size, where
    its resize matrices are zero and its δ is held at 0.

    Args:
        images: ``N`` uint8 HWC arrays (any sizes).
        y: ``(N,)`` int64 label tensor on ``device``.
        m: ``(K, 3·h·w)`` float32 surrogate map on ``device``.
        eps, lam, steps, step_size: as :func:`pil_attack`.
        hw: the working size ``(h, w)``.
        batch_size: at most this many images per batch (and at most ``NATIVE_PIXELS`` padded pixels).
        seed: seeds the uniform starts, one generator per image index.
        progress: ``progress(done, total)`` after each batch.
        store: a :class:`~unlearnable.methods.optim.BatchStore`: each finished batch is saved
            once, and batches it already holds are taken from it (resume). Every image's result
            depends only on its own pixels, label and start, so a resumed pass gives the same
            bytes as an uninterrupted one.
        shapes: the images' ``(H, W)``, when ``images`` decodes on access (a folder streamed
            from disk): the batches are planned without touching the pixels.
        sink: called with each finished batch's indices and additive δs (``−δ``, the convention of
            :meth:`~unlearnable.methods.base.Method.apply`) instead of keeping them, so a pass
            over photos that do not fit in memory holds one batch at a time.
        skip: with ``sink``, a batch for whose indices ``skip`` is true is not attacked (its
            results are already written: a resumed stream).

    Returns:
        A list of ``N`` HWC arrays: δ at native size in whole grey levels (int8,
        :func:`~unlearnable.methods.base.grey_levels`); the published image is ``clip(x − δ)``.
        With ``sink``, an empty list.
    """
    torch = _torch()
    n, k = len(images), m.shape[0]
    h, w = hw
    alpha = eps / 10.0 if step_size is None else float(step_size)
    eye = torch.eye(k, device=m.device)
    cache: Dict[tuple, Any] = {}
    out: list = [None] * n if sink is None else []
    plan = size_batches(list(shapes) if shapes is not None else [im.shape[:2] for im in images], batch_size)
    for k, idx in batch_pass(plan, images, skip, progress):
        B = len(idx)
        saved = store.load(f"batch{k:06d}") if store is not None else None
        if saved is not None and len(saved) == B:
            if sink is None:
                for j, i in enumerate(idx):
                    out[i] = saved[j]
            else:
                sink(idx, [np.negative(d) for d in saved])
            continue
        b = PaddedResize([images[i] for i in idx], (h, w), device, cache)
        lo, hi = b.bounds(eps, sign=-1)  # x − δ ∈ [0, 1] and |δ| ≤ ε
        delta = torch.zeros_like(b.x)
        for j, i in enumerate(idx):
            H, W = b.shapes[j]
            g = torch.Generator(device="cpu").manual_seed((int(seed) * 1_000_003 + i + 0x5EED) & 0x7FFFFFFFFFFFFFFF)
            delta[j, :, :H, :W] = (torch.rand((3, H, W), generator=g) * (2 * eps) - eps).to(device)
        delta.clamp_(lo, hi)
        lx = b.down(b.x).flatten(1) @ m.T  # logits of R(x), once
        onehot = eye[y[idx]]
        for _ in range(int(steps)):
            ld = b.down(delta).flatten(1) @ m.T
            c = _logit_grad(ld, lx, onehot, lam)
            grad = b.up((c @ m).view(B, 3, h, w))  # Rᵀ ∂L/∂R(δ), up to the positive 1/B
            delta.sub_(grad.sign_(), alpha=alpha).clamp_(lo, hi)
        result = [grey_levels(b.crop(delta, j)) for j in range(B)]  # 1 byte a pixel: large photos' δ add up
        del b, delta, lo, hi
        if store is not None:
            store.save(f"batch{k:06d}", result)
        if sink is None:
            for j, i in enumerate(idx):
                out[i] = result[j]
        else:
            sink(idx, [np.negative(d) for d in result])  # the additive δ of Method.apply
    return out


def _default_attack_batch(device: str) -> int:
    # GPU: big batches keep the device busy (8192 × 3072 floats = 100 MB per tensor).
    # CPU: a batch whose δ, gradient and bounds stay near the caches is faster than a big one.
    return 8192 if str(device).startswith("cuda") else 512


@dataclass
class NativeFit:
    """PIL after its surrogate fit (:meth:`PIL.fit_native`): what the attack needs.

    Attributes:
        hw: the working size.
        order: the canonical order: position ``p`` holds input image ``order[p]``.
        shapes: native ``(H, W)`` per input image (None when the set is worked at its own size).
        x, y: working-size pixels (uint8, flattened) and labels, canonical order, on the device.
        w1, w2, m: the surrogate's two layers and their product ``M = W2 · W1``.
        store: the run's batch store in the work folder (None without one).
        resumed_fit: whether the surrogate came from the store (a resumed run).
        fit_seconds: wall time of the fit.
    """

    hw: Tuple[int, int]
    order: np.ndarray
    shapes: Optional[List[Tuple[int, int]]]
    x: Any
    y: Any
    w1: Any
    w2: Any
    m: Any
    store: Any
    resumed_fit: bool
    fit_seconds: float


@register_method("pil")
@dataclass
class PIL(Method):
    """PIL — Perturbation-Induced Linearization (sample-wise, ℓ∞, needs labels).

    Reference: Liu, Chen, Zhang, "Perturbation-Induced Linearization", ICLR 2026. Details in the
    module docstring (objective, resolution policy, speed). Without labels the base class
    protects against k-means pseudo-labels (``pseudo_classes`` clusters).

    Args:
        lam: λ, weight of the shortcut term CE(f(δ), y); 1 − λ weighs KL(u ‖ softmax f(x − δ)).
        steps: signed descent steps of the attack.
        step_size: α in the [0, 1] scale; ``None`` → ε/10.
        surrogate_fit: ``"paper"`` (the official recipe, the fields below) or ``"fast"``
            (10 epochs, batch 2048, lr × 4; see ``benchmarks/RESULTS.md``).
        surrogate_epochs: epochs of surrogate training (``paper`` fit).
        surrogate_lr: peak SGD learning rate, cosine-annealed per epoch (``paper`` fit).
        surrogate_momentum: SGD momentum; no weight decay, no augmentation.
        surrogate_batch: surrogate batch size (``paper`` fit).
        attack_batch: images per attack batch; ``None`` → 8192 on CUDA, 512 on CPU.
        working_size: side of the working resolution for sets of mixed image sizes.
        resize: for images worked at another size than their own, how δ reaches native size
            (:mod:`unlearnable.methods.resolution`): ``through`` optimises δ at native size
            through the resize to ``working_size`` (:func:`pil_attack_native`); ``bilinear``
            optimises at ``working_size`` and upsamples δ, which a trainer's resize blurs away.
        pseudo_classes: k of the k-means pseudo-labels used for unlabelled input.
    """

    lam: float = 0.9
    steps: int = 30
    step_size: Optional[float] = None
    surrogate_fit: str = "paper"
    surrogate_epochs: int = 30
    surrogate_lr: float = 0.003
    surrogate_momentum: float = 0.9
    surrogate_batch: int = 512
    attack_batch: Optional[int] = None
    working_size: int = 32
    resize: str = "through"
    pseudo_classes: int = 10

    paper = "Liu, Chen, Zhang, Perturbation-Induced Linearization, ICLR 2026"

    def __post_init__(self) -> None:
        self._check()  # a bad hyperparameter fails at creation, before any data is read

    def _check(self) -> None:
        check_fields(self)  # the numeric ranges (lam in [0, 1], steps >= 0, ...), as for every method
        if self.surrogate_fit not in SURROGATE_FITS:
            raise UnlearnableError(f"pil: surrogate_fit must be one of {', '.join(SURROGATE_FITS)}, got {self.surrogate_fit!r}")
        if self.resize not in RESIZE_MODES:
            raise UnlearnableError(f"pil: resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    def surrogate_recipe(self) -> Dict[str, Any]:
        """The surrogate's (epochs, lr, momentum, batch_size) for the chosen ``surrogate_fit``."""
        if self.surrogate_fit == "fast":
            return dict(epochs=_FAST["epochs"], lr=self.surrogate_lr * _FAST["lr_scale"],
                        momentum=self.surrogate_momentum, batch_size=_FAST["batch"])
        return dict(epochs=self.surrogate_epochs, lr=self.surrogate_lr, momentum=self.surrogate_momentum,
                    batch_size=self.surrogate_batch)

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        torch = _torch()
        data.require_labels("method 'pil'")
        h, w = _working_size(data, self.working_size)
        native = self.resize == "through" and not at_own_size(data, (h, w))
        shapes = [data.shape_of(i) for i in range(len(data))] if native else None
        f = self._fit(data, data.stacked_at((h, w)), budget, seed=seed, device=device,
                      workdir=workdir if native else None, shapes=shapes)
        n = len(data)
        # Published image x' = clip(x − δ): the additive perturbation is −δ, back in input order.
        inv = np.empty_like(f.order)
        inv[f.order] = np.arange(n)
        t1 = time.perf_counter()
        if native:
            # Canonical order in, canonical order out: the starts are seeded by that position.
            done = self.attack_native(f, [data.image(int(i)) for i in f.order], budget, seed=seed, device=device,
                                      progress=progress)
            out = as_deltas(data, [np.negative(done[j]) for j in inv])
        else:
            with torch.no_grad():
                delta = pil_attack(f.x, f.y, f.m, budget.eps, lam=self.lam, steps=self.steps,
                                   step_size=self.step_size, seed=seed, progress=progress,
                                   batch_size=self.attack_batch or _default_attack_batch(device))
            out = deltas_to_native(data, delta.neg_().numpy().reshape(n, h, w, 3)[inv], "bilinear")
        self.finish_run(f, time.perf_counter() - t1)
        return out

    # -- the native-size pass in two parts, for folders streamed from disk (protect_folder) ---
    @property
    def streams(self) -> bool:
        return self.resize == "through"

    def fit_native(self, small: ImageSet, shapes: Sequence[Tuple[int, int]], budget: Budget, *, seed: int,
                   device: str, workdir: Optional[str] = None) -> "NativeFit":
        """Part one of PIL on images that do not all fit in memory: fit the surrogate.

        Gives the same surrogate and, with :meth:`attack_native`, the same bytes as
        :meth:`perturb` on the whole set in memory.

        Args:
            small: the set at the working size, resized as :meth:`ImageSet.resized` does
                (``working_size``² for photos), with the labels and ids of the full set.
            shapes: each image's native ``(H, W)``, in the set's order.
            budget, seed, device: as :meth:`perturb`.
            workdir: where the surrogate is kept, so that a resumed run attacks with it.
        """
        small.require_labels("method 'pil'")
        hw = (int(self.working_size),) * 2
        if tuple(small.shape_of(0)) != hw or not small.uniform:
            raise ValueError(f"pil: fit_native needs the set at its working size {hw}")
        return self._fit(small, small.stacked(), budget, seed=seed, device=device, workdir=workdir,
                         shapes=list(shapes))

    def attack_native(self, f: "NativeFit", images: Sequence[np.ndarray], budget: Budget, *, seed: int,
                      device: str, progress: Progress = None, sink=None, skip=None) -> List[np.ndarray]:
        """Part two: PIL's attack at native size (:func:`pil_attack_native`) on ``images`` in
        the canonical order ``f.order`` (a sequence may decode each image on access). With
        ``sink``, each finished batch goes there instead of being kept (no batch files are
        written then: the caller's output is the record that a resumed run ``skip``s)."""
        return pil_attack_native(images, f.y, f.m, budget.eps, f.hw, lam=self.lam, steps=self.steps,
                                 step_size=self.step_size, seed=seed, batch_size=self.attack_batch or 1024,
                                 device=device, progress=progress, store=f.store if sink is None else None,
                                 shapes=[f.shapes[int(i)] for i in f.order] if f.shapes is not None else None,
                                 sink=sink, skip=skip)

    def finish_run(self, f: "NativeFit", attack_seconds: float) -> None:
        """Record the run in ``last_run`` (fit and attack seconds, the surrogate and its accuracy)."""
        self.last_run = {"fit_seconds": f.fit_seconds, "attack_seconds": attack_seconds, "working_size": f.hw,
                         "surrogate_epochs": self.surrogate_recipe()["epochs"],
                         "surrogate_train_acc": surrogate_accuracy(f.w1, f.w2, f.x, f.y),
                         "surrogate": (f.w1.cpu(), f.w2.cpu()),
                         "resumed_batches": f.store.resumed - f.resumed_fit if f.store is not None else 0}

    def _fit(self, data: ImageSet, x_np: np.ndarray, budget: Budget, *, seed: int, device: str,
             workdir: Optional[str], shapes: Optional[List[Tuple[int, int]]]) -> "NativeFit":
        """Fit the surrogate on ``x_np`` (``data`` at the working size, in input order)."""
        torch = _torch()
        self._check()
        labels = data.require_labels("method 'pil'")
        n = len(x_np)
        order = np.argsort(np.asarray(data.ids, dtype=object), kind="stable")  # canonical: by id, not file order
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(x_np[order]).reshape(n, -1)).to(device)  # uint8, once
        y = torch.from_numpy(labels[order]).to(device)
        k = max(data.num_classes, int(labels.max()) + 1 if n else 1)
        store = self._store(workdir, budget, seed, x, y, shapes) if shapes is not None else None
        saved = store.load("surrogate") if store is not None else None
        if saved is not None:  # a resumed run attacks with the very surrogate it started with
            w1, w2 = (torch.from_numpy(a).to(device) for a in saved)
        else:
            w1, w2 = fit_surrogate(x, y, k, seed=seed, device=device, **self.surrogate_recipe())
            if store is not None:
                store.save("surrogate", [w1.cpu().numpy(), w2.cpu().numpy()])
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        with torch.no_grad():
            m = w2 @ w1
        return NativeFit(hw=tuple(x_np.shape[1:3]), order=order, shapes=shapes, x=x, y=y, w1=w1, w2=w2, m=m,
                         store=store, resumed_fit=saved is not None, fit_seconds=time.perf_counter() - t0)

    def _store(self, workdir: Optional[str], budget: Budget, seed: int, x, y, shapes: List[Tuple[int, int]]):
        """Where the native-size pass of a large-photo folder keeps its surrogate and finished batches."""
        import hashlib

        from .optim import Checkpoint, run_signature

        if not workdir:
            return None
        h = hashlib.blake2b(digest_size=16)  # the data: working-size pixels, labels, native sizes
        h.update(x.cpu().numpy().tobytes())
        h.update(y.cpu().numpy().astype(np.int64).tobytes())
        h.update(str([tuple(int(v) for v in s) for s in shapes]).encode())
        return Checkpoint(workdir, "pil-native", run_signature(self, budget, seed, h.hexdigest())).batch_store()
