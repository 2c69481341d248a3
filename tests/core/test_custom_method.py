"""A user's own method, registered from a module without ``from __future__ import annotations``:
its fields' annotations are classes, not strings, and ``--param`` values are still typed."""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.methods import METHODS, create_method
from unlearnable.methods.base import Method


@pytest.fixture
def custom():
    @dataclass
    class Custom(Method):
        scale: float = 1.0
        steps: int = 3
        maybe: Optional[float] = None

        def perturb(self, data, budget, *, seed, device, workdir=None, progress=None):
            return np.zeros(data.images.shape, np.float32)

    METHODS.register("test-custom")(Custom)
    try:
        yield "test-custom"
    finally:
        del METHODS._entries["test-custom"]  # the registry is global: other tests list it


def test_a_custom_methods_params_are_typed(custom):
    for kw, says in [({"scale": "abc"}, "scale must be float"), ({"steps": "2.5"}, "steps must be int"),
                     ({"maybe": "x"}, r"maybe must be Optional\[float\]"), ({"steps": -1}, "steps must be >= 0")]:
        with pytest.raises(UnlearnableError, match=says):
            create_method(custom, **kw)
    m = create_method(custom, scale="2/255", steps="4", maybe="none")
    assert m.scale == pytest.approx(2 / 255) and m.steps == 4 and m.maybe is None
