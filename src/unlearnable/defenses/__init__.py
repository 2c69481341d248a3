"""Defenses: what an unauthorised trainer does to learn from protected data anyway.

See :mod:`unlearnable.defenses.base` for the interface (three hooks: ``transform_dataset``,
``augment``, ``adversary``) and the spec syntax of :func:`create_defense`.
"""

from .base import DEFENSES, Compose, Defense, create_defense, list_defenses, parse_spec, register_defense
from . import standard as _standard  # noqa: F401  (registers "none" and "standard")
from .standard import NoDefense, Standard
from . import squeeze as _squeeze  # noqa: F401  (registers "gray", "jpeg", "bdr", "median", "gaussian" and short forms)
from . import mixing as _mixing  # noqa: F401  (registers "cutout", "mixup", "cutmix")
from . import coin as _coin  # noqa: F401  (registers "coin")
from . import ueraser as _ueraser  # noqa: F401  (registers "ueraser-lite", "ueraser", "ueraser-max"; kornia imported lazily)
from . import adversarial as _adversarial  # noqa: F401  (registers "at", "at-l2" and short forms at8, at4, ...)
from . import projection as _projection  # noqa: F401  (registers "op")
from . import strong as _strong  # noqa: F401  (registers "strong-aug"; kornia imported lazily)
from . import data_mix as _data_mix  # noqa: F401  (registers "clean-mix", "early-stop")
from .adversarial import AdversarialTraining, AdversarialTrainingL2
from .data_mix import CleanMix, EarlyStop
from .projection import OrthogonalProjection
from .coin import COIN
from .mixing import Cutout, CutMix, MixUp
from .squeeze import JPEG, BitDepthReduction, GaussianBlur, Grayscale, MedianFilter
from .strong import StrongAugment
from .ueraser import UEraser, UEraserLite, UEraserMax

__all__ = [
    "AdversarialTraining",
    "AdversarialTrainingL2",
    "CleanMix",
    "EarlyStop",
    "OrthogonalProjection",
    "StrongAugment",
    "BitDepthReduction",
    "COIN",
    "Compose",
    "CutMix",
    "Cutout",
    "DEFENSES",
    "Defense",
    "GaussianBlur",
    "Grayscale",
    "JPEG",
    "MedianFilter",
    "MixUp",
    "NoDefense",
    "Standard",
    "UEraser",
    "UEraserLite",
    "UEraserMax",
    "create_defense",
    "list_defenses",
    "parse_spec",
    "register_defense",
]
