"""The Defense interface: what an unauthorised trainer does to learn from protected data anyway.

One base class, three hooks at three depths, all identity by default, so a new defense
(JPEG, grayscale, UEraser, adversarial training, orthogonal projection, ...) is one small
class and the training engine never changes:

====================  =====================================================  ==============
hook                  signature                                              runs
====================  =====================================================  ==============
transform_dataset     ``(x uint8 (N,3,H,W), y int64 (N,), generator)``        once, before
                      ``-> (x, y)``                                          training
augment               ``(x float (B,3,H,W) in [0,1], y (B,) int64 or (B,K)``  every batch,
                      ``float soft labels, generator) -> (x, y)``             on the device
adversary             ``(model, x, y) -> x``                                 every batch,
                                                                             model in train
                                                                             mode
====================  =====================================================  ==============

Contracts:

* ``transform_dataset`` gets the whole training set as one uint8 tensor on the training
  device and returns uint8 images of the same layout (it may change ``N``, e.g. mixing in
  clean data, but not the channel count). ``generator`` is on ``x``'s device.
* ``augment`` keeps the batch shape and the range [0, 1]; it may turn hard labels into
  ``(B, K)`` probability rows (mixup, cutmix), which the engine's loss accepts.
* ``adversary`` returns a batch of ``x``'s shape in [0, 1]; it may run forward/backward
  passes through ``model`` (it must leave the model's gradients cleared, ``set_to_none``).
* A defense never looks at which method produced the data: it sees pixels and labels only.

Defenses are registered by short names (timm style) and built from a spec string::

    create_defense("standard")                 # one defense, paper defaults
    create_defense("standard:pad=2,flip=0")    # keyword arguments, converted to the declared types
    create_defense("jpeg:quality=10+standard") # composition, applied left to right

Hyperparameters are typed constructor keyword arguments with the paper's defaults; the
class docstring names the paper. ``describe()`` returns what a results row records.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch

from ..errors import UnlearnableError
from ..registry import Registry, format_value, parse_named_spec, typed_value

__all__ = [
    "Defense",
    "Compose",
    "DEFENSES",
    "register_defense",
    "create_defense",
    "list_defenses",
    "parse_spec",
]

DEFENSES = Registry("defense")

Labels = torch.Tensor


class Defense:
    """Base class: every hook is the identity; subclasses override the ones they need.

    Subclasses take their hyperparameters as keyword arguments of ``__init__`` and store
    each under the same attribute name, so :meth:`params` and :attr:`spec` can report
    them without extra code.
    """

    #: short registry name; set by :func:`register_defense` (class name otherwise).
    registry_name: str

    # -- the three hooks -----------------------------------------------------------------
    def transform_dataset(
        self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Transform the whole training set once, before training (identity here).

        Args:
            x: ``(N, 3, H, W)`` uint8 images on the training device.
            y: ``(N,)`` int64 labels.
            generator: random stream on ``x``'s device.

        Returns:
            ``(x, y)``, uint8 images and int64 labels.
        """
        return x, y

    def augment(
        self, x: torch.Tensor, y: Labels, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, Labels]:
        """Augment one batch on the device (identity here).

        Args:
            x: ``(B, 3, H, W)`` float images in [0, 1].
            y: ``(B,)`` int64 labels or ``(B, K)`` float label distributions.
            generator: random stream on ``x``'s device.

        Returns:
            ``(x, y)`` with ``x`` of the same shape in [0, 1]; ``y`` hard or soft.
        """
        return x, y

    def adversary(self, model: torch.nn.Module, x: torch.Tensor, y: Labels) -> torch.Tensor:
        """Change the batch the model trains on, using the model (identity here).

        Called after :meth:`augment`, with the model in train mode, outside autocast.
        """
        return x

    # -- lifecycle -----------------------------------------------------------------------
    def prepare(self, context: Dict[str, Any]) -> None:
        """Receive what the trainer has besides the training set, before training (no-op here).

        ``context`` may hold ``clean_x``/``clean_y`` (uint8 NHWC numpy, the clean counterparts
        of the training images in the same order, when the audit has them: clean-ratio
        mixing needs them), ``num_classes``, ``epochs`` and ``device``. A defense must not
        rely on a key being present unless it says so in its docstring.
        """

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch (``epoch`` is 1-based); no-op here.

        For schedules inside a defense (UEraser's max-loss phase for the first epochs).
        """

    # -- description ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The registry name (the class name when not registered)."""
        # Look in the class itself: a subclass must not report its registered parent's name.
        return type(self).__dict__.get("registry_name") or type(self).__name__

    def params(self) -> Dict[str, Any]:
        """Constructor keyword arguments and their current values."""
        out: Dict[str, Any] = {}
        for p in _init_params(type(self)):
            if hasattr(self, p.name):
                out[p.name] = getattr(self, p.name)
        return out

    @property
    def spec(self) -> str:
        """A spec string that :func:`create_defense` turns back into this defense.

        Only parameters that differ from their defaults are written (``standard``, not
        ``standard:pad=4,flip=0.5``).
        """
        defaults = {p.name: p.default for p in _init_params(type(self))}
        items = [
            f"{k}={format_value(v)}"
            for k, v in self.params().items()
            if not (k in defaults and defaults[k] is not inspect.Parameter.empty and defaults[k] == v)
        ]
        return self.name + (":" + ",".join(items) if items else "")

    def hooks(self) -> List[str]:
        """Names of the hooks this defense overrides (the others are identity)."""
        return [h for h in ("transform_dataset", "augment", "adversary") if getattr(type(self), h) is not getattr(Defense, h)]

    def describe(self) -> Dict[str, Any]:
        """JSON-serialisable record: name, spec, parameters and active hooks."""
        return {"name": self.name, "spec": self.spec, "params": _jsonable(self.params()), "hooks": self.hooks()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Compose(Defense):
    """Several defenses applied in order, left to right, at every depth.

    ``Compose([a, b])`` transforms the dataset with ``a`` then ``b``, augments each batch
    with ``a`` then ``b``, and runs ``a``'s adversary then ``b``'s. Built by
    ``create_defense("a+b")``; nested compositions are flattened.
    """

    def __init__(self, defenses: Sequence[Defense]):
        flat: List[Defense] = []
        for d in defenses:
            flat.extend(d.defenses if isinstance(d, Compose) else [d])
        self.defenses = flat

    def transform_dataset(self, x, y, generator=None):
        for d in self.defenses:
            x, y = d.transform_dataset(x, y, generator)
        return x, y

    def augment(self, x, y, generator=None):
        for d in self.defenses:
            x, y = d.augment(x, y, generator)
        return x, y

    def adversary(self, model, x, y):
        for d in self.defenses:
            x = d.adversary(model, x, y)
        return x

    def prepare(self, context):
        for d in self.defenses:
            d.prepare(context)

    def start_epoch(self, epoch, epochs):
        for d in self.defenses:
            d.start_epoch(epoch, epochs)

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.defenses)

    @property
    def spec(self) -> str:
        return "+".join(d.spec for d in self.defenses)

    def params(self) -> Dict[str, Any]:
        return {"defenses": [d.describe() for d in self.defenses]}

    def hooks(self) -> List[str]:
        found = {h for d in self.defenses for h in d.hooks()}
        return [h for h in ("transform_dataset", "augment", "adversary") if h in found]

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "params": self.params(), "hooks": self.hooks()}

    def __repr__(self) -> str:
        return f"Compose({self.defenses!r})"


# -- registry ------------------------------------------------------------------------------
def draw_seeds(n: int, generator: Optional[torch.Generator], device: torch.device) -> List[int]:
    """``n`` seeds from the engine's generator (one host sync), for code that draws from
    torch's global RNG (kornia)."""
    dev = generator.device if generator is not None else device
    return torch.randint(2**62, (n,), device=dev, generator=generator).tolist()


@contextmanager
def seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """A context in which torch's global RNG (and the CUDA one of ``device``) is seeded with
    ``seed``; the caller's global streams are restored afterwards. kornia draws from them, so
    a defense built on kornia is as reproducible as the engine's own generator."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def register_defense(name: Optional[str] = None):
    """Class decorator registering a :class:`Defense` subclass under ``name``."""
    inner = DEFENSES.register(name)

    def deco(cls: Type[Defense]) -> Type[Defense]:
        if not (isinstance(cls, type) and issubclass(cls, Defense)):
            raise TypeError(f"register_defense expects a Defense subclass, got {cls!r}")
        return inner(cls)

    return deco


def list_defenses(pattern: str = "*") -> List[str]:
    """Sorted names of registered defenses matching a shell-style ``pattern``."""
    return DEFENSES.list(pattern)


#: Short forms of the field (``jpeg10``, ``bdr2``, ``at8``): regex → function(match) → spec part.
SHORT_FORMS: List[Tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]] = []


def register_short_form(pattern: str, expand: Callable[["re.Match[str]"], str]) -> None:
    """Register a short form, e.g. ``register_short_form(r"jpeg(\\d+)", lambda m: f"jpeg:quality={m[1]}")``.

    A spec part that fully matches ``pattern`` (and is not itself a registered name) is
    replaced by ``expand(match)`` before parsing.
    """
    SHORT_FORMS.append((re.compile(pattern), expand))


def _expand_short_form(part: str, spec: Optional[str] = None) -> str:
    name, colon, args = part.partition(":")
    name = name.strip()
    if name in DEFENSES:
        return part
    for rx, expand in SHORT_FORMS:
        m = rx.fullmatch(name)
        if m and not colon:
            return expand(m)
        if m:  # "at8:eps=2": a short form stands for parameters already; say what to write instead
            long_name, _, long_args = expand(m).partition(":")
            items = {}
            for item in (long_args + "," + args).split(","):
                key, eq, value = item.partition("=")
                if eq:
                    items[key.strip()] = value.strip()
            fixed = long_name + ":" + ",".join(f"{k}={v}" for k, v in items.items())
            raise UnlearnableError(f"bad defense spec {spec or part!r}: the short form {name!r} takes no "
                                   f"parameters (it stands for {expand(m)!r}); write {fixed!r} instead")
    return part


def parse_spec(spec: str) -> List[Tuple[str, Dict[str, Any]]]:
    """Split a spec into ``[(name, kwargs), ...]``, one entry per ``+``-separated part.

    Values are parsed as bool (``true``/``false``), then int, then float, else kept as str
    (:func:`~unlearnable.registry.parse_value`); :func:`create_defense` then converts each to
    its parameter's declared type.

    Raises:
        UnlearnableError: for an empty part or a ``key=value`` list that does not parse.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UnlearnableError(f"empty defense spec {spec!r}; expected e.g. 'standard' or 'standard:pad=2'")
    out: List[Tuple[str, Dict[str, Any]]] = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise UnlearnableError(f"bad defense spec {spec!r}: empty part around '+'")
        out.append(parse_named_spec(_expand_short_form(part, spec), "defense", spec))
    return out


def create_defense(spec: Union[str, Defense, Iterable[Union[str, Defense]], None]) -> Defense:
    """Build a defense from a spec string (or pass a :class:`Defense` through).

    Args:
        spec: ``"name"``, ``"name:key=value,..."``, a ``+``-joined composition, a
            :class:`Defense`, a list of those (composed in order), or ``None`` (``none``).

    Returns:
        The defense; a :class:`Compose` when the spec has several parts.

    Raises:
        UnlearnableError: unknown name, malformed spec, or a parameter the defense lacks.
    """
    if spec is None:
        spec = "none"
    if isinstance(spec, Defense):
        return spec
    if not isinstance(spec, str):
        parts = [create_defense(s) for s in spec]
        if not parts:
            raise UnlearnableError("empty list of defenses")
        return parts[0] if len(parts) == 1 else Compose(parts)
    built: List[Defense] = []
    # parse_spec checked that every '+' part is non-empty: one (name, kwargs) per part.
    for part, (name, kwargs) in zip(spec.split("+"), parse_spec(spec)):
        part = part.strip()
        cls = DEFENSES.get(name)
        params = {p.name: p for p in _init_params(cls)}
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _signature_params(cls))
        unknown = sorted(set(kwargs) - set(params)) if not takes_var_kw else []
        if unknown:
            have = ", ".join(sorted(params)) or "none"
            raise UnlearnableError(f"defense {name!r} has no parameter {unknown[0]!r}; its parameters: {have}")
        # Each value converted to its parameter's declared type (int: integral and finite,
        # float: finite, bool: true/false/yes/no/1/0), as --param does for methods.
        kwargs = {k: typed_value(f"defense {part!r}", k, params[k].annotation, v) if k in params else v
                  for k, v in kwargs.items()}
        try:
            built.append(cls(**kwargs))
        except UnlearnableError as e:
            # Name the spec part the error is about (a composition may hold several defenses).
            msg = str(e)
            msg = msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg
            raise UnlearnableError(f"defense {part!r}: {msg}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise UnlearnableError(f"bad parameters for defense {name!r} in {spec!r}: {e}") from None
    return built[0] if len(built) == 1 else Compose(built)


# -- helpers -------------------------------------------------------------------------------
def _signature_params(cls: type) -> List[inspect.Parameter]:
    if cls.__init__ is object.__init__:
        return []
    return list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self


def _init_params(cls: type) -> List[inspect.Parameter]:
    """Named keyword-capable parameters of ``cls.__init__`` (no ``*args``/``**kwargs``)."""
    return [
        p
        for p in _signature_params(cls)
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Defense):
        return obj.describe()
    return repr(obj)
