"""One small registry shared by models, methods, defenses and recipes (timm style).

Usage::

    MODELS = Registry("model")

    @MODELS.register("resnet18")
    def resnet18(num_classes: int = 10, **kw): ...

    MODELS.create("resnet18", num_classes=10)
    MODELS.list("resnet*")
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import UnlearnableError


class Registry:
    """A name -> factory mapping with decorator registration and glob listing."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a class or factory under ``name`` (default: its ``__name__``)."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            try:
                obj.registry_name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """The registered object, or a one-line error listing what exists."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnlearnableError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.list())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Instantiate ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def defaults(self, name: str) -> Dict[str, Any]:
        """The keyword parameters of ``name``'s constructor and their defaults (in order).

        What ``--param NAME=VALUE`` and ``name:key=value`` specs can set; parameters without
        a default map to ``inspect.Parameter.empty``.
        """
        import inspect

        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        try:
            sig = inspect.signature(self.get(name))
        except (TypeError, ValueError):  # builtins without a signature
            return {}
        return {p.name: p.default for p in sig.parameters.values() if p.kind in kinds}

    def list(self, pattern: str = "*") -> List[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(k for k in self._entries if fnmatch.fnmatchcase(k, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)


def parse_value(text: str) -> Any:
    """Parse the value of a ``key=value`` option (``--param``, defense specs).

    ``true/yes/on`` and ``false/no/off`` are booleans, ``none``/``null`` is None, then int,
    then float; anything else stays a string.
    """
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def annotation_name(annotation: Any) -> str:
    """A parameter's or field's annotation as the string :func:`typed_value` reads.

    ``"int"`` stays ``"int"`` (``from __future__ import annotations``), the class ``int``
    becomes ``"int"``, ``typing.Optional[int]`` becomes ``"Optional[int]"``; ``""`` for none.
    """
    import inspect

    if annotation is inspect.Parameter.empty or annotation is None:
        return ""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def typed_value(owner: str, key: str, annotation: Any, value: Any) -> Any:
    """``value`` as a field annotated ``annotation`` takes it, or a one-line error.

    The one conversion of ``--param`` values (methods), ``name:key=value`` specs (defenses,
    recipes) and recipe fields. Values come as :func:`parse_value` gives them (or as the raw
    text; both work):

    * ``int``: an integral, finite number (``3`` or ``3.0``; not ``3.5``, ``inf``, ``nan``);
    * ``float``: a finite number, or a fraction such as ``2/255`` (step sizes are written that
      way in the papers); an int is a valid float;
    * ``bool``: ``true``/``false``, ``yes``/``no``, ``1``/``0`` (and ``on``/``off``);
    * ``str``: a string as is (a number given for a string field is taken as written);
    * ``Optional[...]``: also ``none``/``null`` (None).

    Other annotations (``Tuple[...]``, unions such as ``Number``) are not checked.

    Args:
        owner: how the error names what the field belongs to (``"method 'pil'"``).
        key: the field's name.
        annotation: the field's annotation, as a string (``"Optional[float]"``) or a type.
        value: the given value.

    Raises:
        UnlearnableError: ``"<owner>: <key> must be <type>, got <value>"`` (plus why, for
            non-finite numbers and unknown booleans).
    """
    annotation = annotation_name(annotation).strip()
    kind, optional = annotation, False
    if kind.startswith("Optional[") and kind.endswith("]"):
        kind, optional = kind[len("Optional["):-1].strip(), True
    elif "|" in kind:
        parts = [t.strip() for t in kind.split("|")]
        if len(parts) == 2 and "None" in parts:
            kind, optional = [t for t in parts if t != "None"][0], True
    if kind not in ("bool", "int", "float", "str"):
        return value
    if value is None and optional:
        return None
    given = value

    def bad(why: str = "") -> UnlearnableError:
        return UnlearnableError(f"{owner}: {key} must be {annotation}, got {given!r}{why}")

    if isinstance(value, str) and kind != "str":
        text = value.strip()
        low = text.lower()
        if optional and low in ("none", "null"):
            return None
        if kind == "bool":
            if low in _TRUE_WORDS or low in _FALSE_WORDS:
                return low in _TRUE_WORDS
            raise bad(" (use true/false, yes/no or 1/0)")
        num, slash, den = text.partition("/")
        try:
            if slash and kind == "float":
                value = float(num) / float(den)
            elif not slash:
                value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except (ValueError, ZeroDivisionError):
            pass
    if getattr(getattr(value, "dtype", None), "kind", "") == "b" and getattr(value, "ndim", 1) == 0:
        value = bool(value)  # numpy bools
    elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        value = int(value)  # numpy integers
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return format_value(value)
        raise bad()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad(" (use true/false, yes/no or 1/0)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad()
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(" (not a finite number)")
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise bad()
            value = int(value)
        return value
    return float(value)


def format_value(v: Any) -> str:
    """A value as written in a spec, read back by :func:`parse_value` (``true``/``false`` for bools)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_named_spec(part: str, what: str, spec: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """Split ``"name"`` or ``"name:key=value,key=value"`` into the name and parsed keyword values.

    The one syntax of defense specs (each ``+`` part) and recipe specs (``paper:epochs=30``).

    Args:
        part: the text to parse.
        what: what it names, for error messages (``"defense"``, ``"recipe"``).
        spec: the whole spec ``part`` came from, quoted in error messages (default: ``part``).

    Raises:
        UnlearnableError: a missing name, an item that is not ``key=value``, a key given twice.
    """
    spec = part if spec is None else spec
    name, colon, arglist = part.strip().partition(":")
    name = name.strip()
    if not name:
        raise UnlearnableError(f"bad {what} spec {spec!r}: missing name before ':'")
    kwargs: Dict[str, Any] = {}
    if colon and not arglist.strip():
        raise UnlearnableError(f"bad {what} spec {spec!r}: nothing after '{name}:'")
    for item in arglist.split(",") if arglist.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UnlearnableError(f"bad {what} spec {spec!r}: expected key=value after '{name}:', got {item.strip()!r}")
        if key in kwargs:
            raise UnlearnableError(f"bad {what} spec {spec!r}: {key!r} given twice")
        kwargs[key] = parse_value(value.strip())
    return name, kwargs


def split_spec_list(text: str) -> List[str]:
    """Split a comma-separated list of specs whose parts may themselves hold commas.

    ``"none,early-stop:source=clean,val_fraction=0.2,jpeg10"`` →
    ``["none", "early-stop:source=clean,val_fraction=0.2", "jpeg10"]``: an item that starts
    with ``key=`` cannot start a spec (names hold no ``=``), so it continues the one before.

    Raises:
        UnlearnableError: a list that starts with ``key=value``.
    """
    out: List[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, _ = item.partition("=")
        if eq and key.strip().isidentifier():
            if not out:
                raise UnlearnableError(f"bad list {text!r}: {item!r} has no spec before it to belong to")
            out[-1] += "," + item
        else:
            out.append(item)
    return out
