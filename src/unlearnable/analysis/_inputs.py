"""Input conversion shared by the analysis tools (internal)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.imageset import label_array
from ..errors import UnlearnableError


def as_float_nchw(x, device=None):
    """uint8 NHWC numpy array / uint8 NCHW tensor / float NCHW tensor in [0, 1] → float NCHW tensor."""
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UnlearnableError(f"images must be uint8 (N, H, W, C) arrays with C = 1 or 3, got {x.dtype} {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    elif isinstance(x, torch.Tensor):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UnlearnableError(f"image tensors must be (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
        t = x
    else:
        raise UnlearnableError(f"images must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.dtype == torch.uint8:
        t = t.float().div(255.0)
    return t.to(device) if device is not None else t


def as_labels(y, n: int, num_classes: Optional[int] = None, device=None):
    """``(n,)`` int64 label tensor, checked as every label is (:func:`~unlearnable.data.imageset.label_array`)."""
    import torch

    t = torch.from_numpy(label_array(y, n, "labels", num_classes, flatten=True))
    return t.to(device) if device is not None else t


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameter-free model
        import torch

        return torch.device("cpu")
