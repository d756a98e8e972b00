"""Training images as one float tensor of shape (N, C, S, S) with values in [0, 1].

Data sets (:data:`DATASETS`):
    ``digits``         scikit-learn's 1,797 8x8 handwritten digits, shipped with scikit-learn (no
                       download); bilinearly resized to ``image_size`` (default 16).
    ``mnist``, ``fashion-mnist``, ``cifar10``
                       the training splits, read by torchvision from ``data_dir`` in its own
                       layout (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``);
                       fetched only when ``download=True``.
    ``folder``         every image under ``data_dir`` (recursively; hidden files and folders
                       skipped), as RGB, turned upright by its EXIF orientation, resized on the
                       shorter side and centre-cropped to ``image_size`` (default 32); 16-bit
                       greyscale keeps its full range.

The whole set is held in memory: the largest bundled one, CIFAR-10, takes 0.6 GB as float32.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
DEFAULT_IMAGE_SIZE = {"digits": 16, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "folder": 32}
DEFAULT_DATA_DIR = "data"


def data_location(name: str, data_dir: str | os.PathLike | None) -> str | None:
    """The absolute folder :func:`load_images` reads data set ``name`` from (None for ``digits``,
    which ships with scikit-learn); stored with a run, so later commands find it from any folder."""
    if name == "digits" or (name == "folder" and data_dir is None):
        return None
    return str(Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).resolve())


def load_images(name: str, data_dir: str | os.PathLike | None = None, image_size: int | None = None,
                download: bool = False) -> torch.Tensor:
    """Load the training images of data set ``name``.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: where torchvision data sets live (default ``./data``) or, for ``folder``, the
            image folder itself (required).
        image_size: side S of the square images returned; default :data:`DEFAULT_IMAGE_SIZE`.
        download: let torchvision fetch a missing mnist / fashion-mnist / cifar10.

    Returns:
        float32 tensor (N, C, S, S) in [0, 1]; C is 1 for digits and the MNISTs, 3 otherwise.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if name == "digits":
        images = _digits()
    elif name == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' needs data_dir (--data-dir): the folder holding your images")
        return _folder(Path(data_dir), size)
    else:
        images = _torchvision(name, Path(DEFAULT_DATA_DIR if data_dir is None else data_dir), download)
    return _resize(images, size)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking (as torchvision's and Pillow's)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp_(0.0, 1.0)


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images).float()  # (1797, 8, 8), values 0..16
    return (pixels / 16.0).unsqueeze(1)


def _torchvision(name: str, root: Path, download: bool) -> torch.Tensor:
    from torchvision import datasets

    cls, layout = {"mnist": (datasets.MNIST, "MNIST/raw/*-ubyte"),
                   "fashion-mnist": (datasets.FashionMNIST, "FashionMNIST/raw/*-ubyte"),
                   "cifar10": (datasets.CIFAR10, "cifar-10-batches-py/")}[name]
    try:
        data = cls(root=str(root), train=True, download=download)
    except (RuntimeError, OSError) as e:  # a failed download raises either (URLError is an OSError)
        if download:
            raise OSError(f"downloading {name} into {root.resolve()} failed: {e}") from e
        if not isinstance(e, RuntimeError):
            raise
        raise FileNotFoundError(
            f"{name} not found (or incomplete) under {root.resolve()}: torchvision looked for {root / layout} "
            f"and said: {e}. Fetch it there with `scoreops train --dataset {name} --download` (download=True "
            f"in Python), or point --data-dir (data_dir) at the folder that holds it.") from e
    pixels = torch.as_tensor(data.data)
    if pixels.dim() == 3:  # MNIST: (N, H, W)
        pixels = pixels.unsqueeze(1)
    else:  # CIFAR-10: (N, H, W, C)
        pixels = pixels.permute(0, 3, 1, 2)
    return pixels.float() / 255


def _folder(root: Path, size: int) -> torch.Tensor:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.transforms.v2 import functional as TF

    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root.resolve()} does not exist (--data-dir)")
    # Hidden files and folders (macOS ._* sidecars, .git, ...) are not part of the data set.
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root.resolve()}")
    images = []
    for path in paths:
        try:
            image = _read_rgb(path)
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
        images.append(TF.to_dtype(image, torch.float32, scale=True).clamp(0.0, 1.0))
    return torch.stack(images)


def _read_rgb(path: Path) -> torch.Tensor:
    """An image file as (3, H, W): uint8, or float32 in [0, 1] for 16-bit greyscale (which
    Pillow's RGB conversion would saturate); upright as its EXIF orientation says."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode.startswith("I;16") or image.mode == "I":
            grey = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535.0).clamp_(0.0, 1.0)
            return grey.expand(3, *grey.shape).contiguous()
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
