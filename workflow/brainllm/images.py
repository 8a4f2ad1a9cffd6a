"""Image stimuli: reading image files with clear errors, one common size, content hashes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import InputError, sha256_file


def read_image(path: str | os.PathLike, size: Sequence[int] | None = None, where: str | None = None) -> np.ndarray:
    """One image as ``(height, width, 3)`` uint8 RGB; resized to ``size`` = (height, width) when given.

    ``where`` names what refers to the file (e.g. the events file and row) in the error.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    ref = f" (named by {where})" if where else ""
    if not path.is_file():
        raise InputError(path, f"image file not found{ref}.", "Fix the stim_file entry or add the file under the dataset's stimuli folder.")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                height, width = (int(s) for s in size)
                img = img.resize((width, height), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(path, f"cannot read the image{ref}: {error}.", "Replace the file with a readable PNG/JPEG image.") from error


def load_images(paths: Sequence[str | os.PathLike], size: Sequence[int] | None = None,
                where: Sequence[str] | None = None) -> np.ndarray:
    """Images as ``(n_images, height, width, 3)`` uint8; all the same size unless ``size`` resizes them."""
    images = [read_image(path, size, None if where is None else where[i]) for i, path in enumerate(paths)]
    if not images:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    odd = next((i for i, image in enumerate(images) if image.shape != images[0].shape), None)
    if odd is not None:
        raise _mixed_sizes(paths[odd], images[odd].shape, paths[0], images[0].shape)
    return np.stack(images)


def _mixed_sizes(path, shape, first_path, first_shape) -> InputError:
    return InputError(path, f"image of size {shape[1]}x{shape[0]} while {first_path} is {first_shape[1]}x{first_shape[0]}: the stimuli have "
                      "mixed sizes.", "Set visual.image_size: [height, width] to resize every image, or give images of one size.")


def image_chunks(paths: Sequence[str | os.PathLike], size: Sequence[int] | None = None, chunk: int = 256):
    """:func:`load_images` over ``chunk`` images at a time (a large stimulus set never sits in memory at full
    resolution); without ``size`` every chunk must have the first one's image size."""
    first = None
    for start in range(0, len(paths), chunk):
        images = load_images(paths[start:start + chunk], size)
        if first is None:
            first = images.shape[1:]
        elif images.shape[1:] != first:
            raise _mixed_sizes(paths[start], images.shape[1:], paths[0], first)
        yield images


def image_sha256(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Content hash of each image file (the feature store's key ignores file names)."""
    return [sha256_file(path) for path in paths]


def grayscale(images: np.ndarray) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 → ``(n, h, w)`` float luminance in [0, 1] (ITU-R 601 weights)."""
    rgb = np.asarray(images, dtype=np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def downsample(gray: np.ndarray, size: int) -> np.ndarray:
    """``(n, h, w)`` → ``(n, size, size)`` by block averaging (h and w multiples of ``size``) or area resampling."""
    gray = np.asarray(gray, dtype=np.float64)
    n, h, w = gray.shape
    if h % size == 0 and w % size == 0:
        return gray.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4))
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BOX)) for g in gray]).astype(np.float64)
