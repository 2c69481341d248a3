"""Perturbation budgets: parsing, projection, quantisation and verification.

A :class:`Budget` is a norm and a size in the [0, 1] pixel scale. Parsing follows one rule:

* ``"a/b"`` is the fraction a/b in the [0, 1] scale (``"8/255"``).
* For ℓ∞, a bare number ≥ 1 counts grey levels and is divided by 255 (``"8"`` = 8/255); a bare
  number < 1 is already in the [0, 1] scale (``"0.0314"``).
* For ℓ2, a bare number is always in the [0, 1] scale (the field quotes ℓ2 budgets as 0.5, 1.0).
* For ℓ0, the size is a count of pixel positions (one pixel = all its channels).
* The norm may prefix the size: ``"linf:8/255"``, ``"l2:1.0"``, ``"l0:1"``, ``"none"``;
  without a prefix the method's declared norm is used.

After quantisation to uint8 the budget is checked in integer grey levels: ℓ∞ allows
``floor(eps·255)`` levels (so 0.0314 allows 8), ℓ2 compares ‖Δ‖₂/255 with eps, ℓ0 counts pixel
positions where any channel changed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterable, Union

import numpy as np

from .errors import UnlearnableError

NORMS = ("linf", "l2", "l0", "none")
_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "l2": "l2", "l0": "l0",
            "none": "none", "unbounded": "none"}
# Slack for float error when converting a [0,1] budget to grey levels (0.0314 * 255 = 8.007).
_LEVEL_SLACK = 1e-6


@dataclass(frozen=True)
class Budget:
    """A perturbation budget.

    Attributes:
        norm: ``"linf"``, ``"l2"``, ``"l0"`` or ``"none"`` (unbounded).
        eps: size in the [0, 1] pixel scale (ℓ∞, ℓ2) or a pixel count (ℓ0); ``inf`` for none.
        spec: the text it was parsed from, kept for the manifest.
    """

    norm: str
    eps: float
    spec: str = ""

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UnlearnableError(f"unknown budget norm {self.norm!r}; use one of {', '.join(NORMS)}")
        if self.norm == "none":
            return
        if not math.isfinite(self.eps) or self.eps <= 0:
            raise UnlearnableError(f"budget {self.spec or self.eps!r} makes no sense: the size must be a positive number")
        if self.norm == "linf":
            if self.eps > 1:
                raise UnlearnableError(f"budget {self.spec or self.eps!r} makes no sense: an ℓ∞ budget above 255/255 allows any image")
            if self.levels < 1:
                raise UnlearnableError(
                    f"budget {self.spec or self.eps!r} is below one grey level: after rounding to uint8 nothing would change")
        if self.norm == "l0" and (self.eps != int(self.eps)):
            raise UnlearnableError(f"ℓ0 budget {self.spec!r} must be a whole number of pixels")

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: Union[str, float, int, "Budget"], default_norm: str = "linf") -> "Budget":
        """Parse ``"8/255"``, ``"8"``, ``0.0314``, ``"l2:1.0"``, ``"none"`` (rule in the module doc)."""
        if isinstance(spec, Budget):
            return spec
        text = str(spec).strip()
        norm = default_norm
        m = re.fullmatch(r"\s*([A-Za-z_∞0-9]+)\s*:\s*(.*)", text)
        if m and m.group(1).lower() in _ALIASES:
            norm, text = _ALIASES[m.group(1).lower()], m.group(2).strip()
        elif text.lower() in ("none", "unbounded"):
            return cls("none", math.inf, str(spec))
        if norm == "none":
            return cls("none", math.inf, str(spec))
        value = _parse_number(text, str(spec))
        if norm == "linf" and "/" not in text and value >= 1:
            value = value / 255.0
        return cls(norm, float(value), str(spec))

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "Budget":
        """The budget a manifest recorded (:meth:`to_dict`)."""
        return cls.parse(str(d.get("spec") or d.get("eps")), default_norm=str(d.get("norm", "linf")))

    # -- derived -------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """The ℓ∞ budget in whole grey levels (floor, with float slack)."""
        if self.norm != "linf":
            raise ValueError("levels is defined for ℓ∞ budgets only")
        return int(math.floor(self.eps * 255 + _LEVEL_SLACK))

    def describe(self) -> str:
        if self.norm == "none":
            return "unbounded"
        if self.norm == "linf":
            return f"ℓ∞ ≤ {self.levels}/255"
        if self.norm == "l2":
            return f"ℓ2 ≤ {self.eps:g}"
        return f"ℓ0 ≤ {int(self.eps)} px"

    @property
    def label(self) -> str:
        """The short form results tables use: ``8/255``, ``l2:0.5``, ``l0:1``, ``none``."""
        if self.norm == "none":
            return "none"
        if self.norm == "linf":
            return f"{self.levels}/255"
        return f"{self.norm}:{self.eps:g}"

    def to_dict(self) -> Dict[str, object]:
        d: Dict[str, object] = {"norm": self.norm, "eps": None if self.norm == "none" else self.eps, "spec": self.spec}
        if self.norm == "linf":
            d["grey_levels"] = self.levels
        return d

    # -- float-domain projection (used by optimising methods) ---------------------------
    def project(self, delta, x=None):
        """Project a float perturbation (NHWC or NCHW, torch or numpy) onto the budget.

        ℓ∞ clips elementwise; ℓ2 rescales each sample to norm ≤ eps; ℓ0 keeps the ``eps``
        pixel positions with the largest change (channels are assumed last for numpy, second
        for torch). With ``x`` given, ``x + delta`` is also clipped to [0, 1].
        """
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a hard dependency
            torch = None
        is_torch = torch is not None and isinstance(delta, torch.Tensor)
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps) if is_torch else np.clip(delta, -self.eps, self.eps)
        elif self.norm == "l2":
            n = delta.shape[0]
            if is_torch:
                norms = delta.reshape(n, -1).norm(dim=1).clamp_min(1e-12)
                scale = (self.eps / norms).clamp(max=1.0)
                delta = delta * scale.view(-1, *([1] * (delta.dim() - 1)))
            else:
                norms = np.maximum(np.linalg.norm(delta.reshape(n, -1), axis=1), 1e-12)
                scale = np.minimum(self.eps / norms, 1.0)
                delta = delta * scale.reshape(-1, *([1] * (delta.ndim - 1)))
        elif self.norm == "l0":
            k = int(self.eps)
            if is_torch:
                mag = delta.abs().amax(dim=1)  # (N, H, W)
                flat = mag.reshape(mag.shape[0], -1)
                if k < flat.shape[1]:
                    thresh = flat.topk(k, dim=1).values[:, -1:]
                    keep = (flat >= thresh).reshape_as(mag).unsqueeze(1)
                    delta = delta * keep
            else:
                mag = np.abs(delta).max(axis=-1)
                flat = mag.reshape(mag.shape[0], -1)
                if k < flat.shape[1]:
                    thresh = -np.partition(-flat, k - 1, axis=1)[:, k - 1:k]
                    keep = (flat >= thresh).reshape(mag.shape)[..., None]
                    delta = delta * keep
        if x is not None:
            if is_torch:
                delta = (x + delta).clamp(0, 1) - x
            else:
                delta = np.clip(x + delta, 0, 1) - x
        return delta

    # -- uint8 domain --------------------------------------------------------------------
    def quantize(self, clean: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Apply ``delta`` ([0,1] scale, HWC float) to a uint8 image: add, round, clip — exactly in budget.

        This is the one application/quantisation step every additive method shares: the
        result is ``clip(round(x·255 + δ·255), 0, 255)`` and then, in integer grey levels,
        forced back inside the budget (ℓ∞ clamps the change; ℓ2 falls back to truncation
        toward zero, which never grows a coordinate; ℓ0 keeps the largest changes).
        """
        x = clean.astype(np.int16)
        d = np.rint(np.asarray(delta, dtype=np.float32) * 255.0).astype(np.int16)
        out = np.clip(x + d, 0, 255)
        if self.norm == "linf":
            e = self.levels
            out = np.clip(out, x - e, x + e)
        elif self.norm == "l2":
            diff = out - x
            if np.sqrt(float((diff.astype(np.int64) ** 2).sum())) / 255.0 > self.eps + 1e-9:
                # Truncation toward zero keeps each |coordinate| ≤ its float value, so the
                # norm stays within a float-feasible budget.
                df = np.clip(x + np.asarray(delta, np.float32) * 255.0, 0, 255) - x
                out = x + np.trunc(df).astype(np.int16)
        elif self.norm == "l0":
            diff = out - x
            changed = np.abs(diff).max(axis=-1)
            k = int(self.eps)
            if int((changed > 0).sum()) > k:
                flat = changed.reshape(-1)
                keep_idx = np.argsort(-flat, kind="stable")[:k]
                mask = np.zeros_like(flat, dtype=bool)
                mask[keep_idx] = True
                out = np.where(mask.reshape(changed.shape)[..., None], out, x)
        return out.astype(np.uint8)

    def measure(self, clean: np.ndarray, protected: np.ndarray) -> Dict[str, float]:
        """All norms of ``protected − clean`` for one image, in grey levels (ℓ2 in [0,1] scale too)."""
        return measure_change(clean, protected)

    def allows(self, norms: Dict[str, float]) -> bool:
        """Whether measured norms (from :func:`measure_change`) satisfy this budget."""
        if self.norm == "none":
            return True
        if self.norm == "linf":
            return norms["linf"] <= self.levels
        if self.norm == "l2":
            return norms["l2"] <= self.eps + 1e-6
        return norms["l0"] <= int(self.eps)


def _parse_number(text: str, spec: str) -> float:
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(Fraction(num.strip()) / Fraction(den.strip()))
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise UnlearnableError(
            f"cannot parse budget {spec!r}: use a fraction like 8/255, grey levels like 8, or a number like 0.0314"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UnlearnableError(f"budget {spec!r} makes no sense: the size must be a positive number")
    return value


def measure_change(clean: np.ndarray, protected: np.ndarray) -> Dict[str, float]:
    """ℓ∞ (grey levels), ℓ2 ([0,1] scale), ℓ0 (changed pixel positions) and mean |Δ| of one image."""
    if clean.shape != protected.shape:
        raise UnlearnableError(f"image sizes differ: {clean.shape[:2]} vs {protected.shape[:2]}")
    diff = protected.astype(np.int32) - clean.astype(np.int32)
    a = np.abs(diff)
    return {
        "linf": float(a.max()) if a.size else 0.0,
        "l2": float(np.sqrt(float((diff.astype(np.int64) ** 2).sum()))) / 255.0,
        "l0": float((a.max(axis=-1) > 0).sum()),
        "mean_abs": float(a.mean()) if a.size else 0.0,
    }


def summarize_changes(per_image: Iterable[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Max and mean of each norm over a set (the manifest's ``norms`` block)."""
    rows = list(per_image)
    out: Dict[str, Dict[str, float]] = {}
    for key in ("linf", "l2", "l0", "mean_abs"):
        vals = np.array([r[key] for r in rows], dtype=np.float64) if rows else np.zeros(1)
        out[key] = {"max": float(vals.max()), "mean": float(vals.mean())}
    return out


def parse_budget(spec: Union[str, float, Budget], default_norm: str = "linf") -> Budget:
    """Functional alias of :meth:`Budget.parse`."""
    return Budget.parse(spec, default_norm)


__all__ = ["Budget", "NORMS", "parse_budget", "measure_change", "summarize_changes"]
