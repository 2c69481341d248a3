"""Linearity proxy: how easily small FGSM steps flip a trained model's correct predictions.

PIL (Liu, Chen, Zhang, ICLR 2026) argues that unlearnable examples work by making the victim
behave like a linear model; a more linear model is more vulnerable to one-step attacks, so the
FGSM success rate at a small ε (1/255, 2/255) is used as a proxy for linearity.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Sequence, Union

from ..errors import UnlearnableError
from ._inputs import as_float_nchw, as_labels, model_device

__all__ = ["fgsm_success_rate"]


def fgsm_success_rate(model, x, y, eps: Union[float, Sequence[float]] = (1 / 255, 2 / 255), *,
                      batch_size: int = 512) -> Dict[float, float]:
    """Fraction of correctly classified points that one FGSM step of size ε misclassifies.

    FGSM: ``x' = clip(x + ε · sign(∇x CE(model(x), y)), 0, 1)`` (Goodfellow et al., 2015), the
    model in eval mode. Points the model already gets wrong are excluded.

    Args:
        model: a classifier taking float NCHW images in [0, 1] and returning logits.
        x: clean test images: uint8 NHWC numpy array, or a uint8/float NCHW tensor.
        y: ``(N,)`` integer labels.
        eps: one ε or several, in the [0, 1] scale: finite and >= 0 (0 flips nothing).
        batch_size: images per forward/backward pass.

    Returns:
        ``{ε: success rate in [0, 1]}`` (0.0 when the model gets no point right).

    Raises:
        UnlearnableError: a negative, non-finite or non-numeric ε, or a batch size below 1.
    """
    import torch
    import torch.nn.functional as F

    eps_list = [eps] if isinstance(eps, numbers.Real) else list(eps)
    for e in eps_list:
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or not 0 <= e <= 1:
            raise UnlearnableError(f"fgsm_success_rate: eps must be a number in [0, 1] (the [0, 1] pixel scale: "
                                   f"8/255 = 0.0314), got {e!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise UnlearnableError(f"fgsm_success_rate: batch_size must be a positive integer, got {batch_size!r}")
    eps_list = [float(e) for e in eps_list]
    dev = model_device(model)
    was_training = model.training
    model.eval()
    flipped = {e: 0 for e in eps_list}
    correct_total = 0
    yy = as_labels(y, len(x))
    try:
        for s in range(0, len(yy), batch_size):
            xb = as_float_nchw(x[s:s + batch_size], dev).clone().requires_grad_(True)
            yb = yy[s:s + batch_size].to(dev)
            logits = model(xb)
            ok = logits.argmax(1) == yb
            grad, = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xb)
            step = grad.sign()
            correct_total += int(ok.sum())
            with torch.no_grad():
                for e in eps_list:
                    adv = (xb + e * step).clamp_(0, 1)
                    flipped[e] += int((ok & (model(adv).argmax(1) != yb)).sum())
    finally:
        model.train(was_training)
    return {e: (flipped[e] / correct_total if correct_total else 0.0) for e in eps_list}
