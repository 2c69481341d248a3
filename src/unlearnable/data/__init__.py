"""Image data: the :class:`ImageSet` container and the loaders that fill it."""

from .imageset import ImageSet
from .load import check_split, find_splits, load_for_training, load_images, read_image

__all__ = ["ImageSet", "check_split", "find_splits", "load_for_training", "load_images", "read_image"]
