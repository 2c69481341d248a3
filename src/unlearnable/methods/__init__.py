"""Protection methods: registry and factories.

``create_method("random-classwise")`` returns a configured :class:`Method`;
``list_methods("random*")`` lists registered names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List

from ..errors import UnlearnableError
from ..registry import Registry, annotation_name, typed_value
from .base import Method, ProtectedSet

METHODS = Registry("method")
register_method = METHODS.register


def create_method(name: str, **kwargs: Any) -> Method:
    """Instantiate a registered method with hyperparameters as keyword arguments.

    Values are checked against the fields' types first (:func:`~unlearnable.registry.typed_value`:
    ``steps=abc`` is a one-line error, ``step_size="2/255"`` a float), so what comes from
    ``--param`` fails by name.
    """
    cls = METHODS.get(name)
    fields = {f.name: annotation_name(f.type) for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        raise UnlearnableError(f"method {name!r} has no parameter {unknown[0]!r}; "
                               f"its parameters: {', '.join(fields) or 'none'}")
    typed = {k: typed_value(f"method {name!r}", k, fields[k], v) for k, v in kwargs.items()}
    return cls(**typed)  # Method.__post_init__ checks the ranges


def streaming_methods() -> List[str]:
    """The methods that read a folder of photos a batch at a time (:attr:`Method.streams` with
    their default hyperparameters)."""
    return [name for name in METHODS.list() if create_method(name).streams]


def list_methods(pattern: str = "*") -> List[str]:
    """Registered method names matching ``pattern``."""
    return METHODS.list(pattern)


# Registration happens on import.
from . import pil, random_noise, regions, lsp, ar, ops, cuda, optim, em, rem, tap, sep  # noqa: E402,F401

__all__ = ["METHODS", "Method", "ProtectedSet", "create_method", "list_methods", "register_method", "streaming_methods"]
