"""Sample-quality metrics in the feature space of a small classifier trained on the same data.

The paper ranks its samplers by the diversity of their samples and notes colour shifts between
them; these functions measure both, on any data set that has class labels:

* :class:`FeatureClassifier`, a small CNN trained for a few epochs on the data set and cached
  as safetensors (:func:`load_or_train_classifier`). Its penultimate layer is the feature space;
  its softmax gives the confidence and the predicted class of each image.
* :func:`mean_pairwise_distance` (diversity), :func:`frechet_distance` between the Gaussian
  fits of two feature sets, :func:`colour_statistics` and :func:`prediction_statistics`.

All images are float tensors (N, C, H, W) in the data range [0, 1]; clamp samples to it first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..training.checkpoint import atomic_write

#: Bump when the classifier's architecture or training changes, so stale cache files are retrained.
CLASSIFIER_VERSION = "1"
CLASSIFIER_EPOCHS, CLASSIFIER_BATCH_SIZE = 20, 64


class FeatureClassifier(nn.Module):
    """Two conv-ReLU-max-pool stages, a ``feature_dim`` ReLU layer (the feature space) and a
    linear classifier. Any image side of at least 4 works: the conv maps are pooled to 2x2.

    Args:
        in_channels: image channels C.
        num_classes: number of labels K.
        width: channels of the first conv stage (the second has twice as many).
        feature_dim: size F of the feature vector.

    ``forward(x)``: (N, C, H, W) in [0, 1] -> logits (N, K); :meth:`features` gives (N, F).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, F) features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Classifier:
    """A trained :class:`FeatureClassifier`, the indices of the images kept out of its training,
    and its accuracy on them (in [0, 1])."""

    net: FeatureClassifier
    heldout: torch.Tensor
    heldout_accuracy: float
    path: Path | None = None


def heldout_split(num_images: int, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's seeded random split of ``num_images``: (held-out indices, training indices)."""
    n_heldout = int(round(heldout_fraction * num_images))
    if not 0 < n_heldout < num_images:
        raise ValueError(f"heldout_fraction={heldout_fraction} leaves no training or no held-out images "
                         f"of {num_images}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[:n_heldout], order[n_heldout:]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/scoreops``, or ``~/.cache/scoreops`` when XDG_CACHE_HOME is unset."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scoreops"


def classifier_path(cache_dir: str | os.PathLike, dataset: str, images: torch.Tensor) -> Path:
    """The cache file of the classifier for ``dataset`` at the shape of ``images`` (N, C, H, W)."""
    _, c, h, w = images.shape
    return Path(cache_dir) / f"classifier-{dataset}-{c}x{h}x{w}.safetensors"


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = CLASSIFIER_EPOCHS,
                     batch_size: int = CLASSIFIER_BATCH_SIZE,
                     heldout_fraction: float = 0.2, seed: int = 0, device: torch.device | str = "cpu",
                     progress: bool = True) -> Classifier:
    """Train a :class:`FeatureClassifier` with Adam on a random split of ``images``.

    Args:
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) int64 class indices in [0, K).
        epochs: passes over the training part.
        batch_size: images per optimiser step.
        heldout_fraction: share of the images kept out of training to measure accuracy.
        seed: seeds the split, the initialisation and the batch order.
        device: where to train.
        progress: show a tqdm bar over epochs.

    Returns:
        The trained net (in eval mode, on ``device``), the held-out indices (see
        :func:`heldout_split`) and its accuracy on them.
    """
    _check_images("images", images)
    if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(labels.min())}")
    heldout, train = heldout_split(len(images), heldout_fraction, seed)
    batch_order = torch.Generator().manual_seed(seed + 1)  # a stream apart from the split's

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(images.shape[1], int(labels.max()) + 1).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    x_train, y_train = images[train].to(device), labels[train].to(device)
    for _ in tqdm(range(epochs), desc="feature classifier", unit="epoch", disable=not progress):
        net.train()
        for batch in torch.randperm(len(train), generator=batch_order).split(batch_size):
            loss = F.cross_entropy(net(x_train[batch]), y_train[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.eval()
    probs = predict_probs(net, images[heldout].to(device))
    accuracy = (probs.argmax(1).cpu() == labels[heldout]).double().mean().item()
    return Classifier(net, heldout, accuracy)


def load_or_train_classifier(dataset: str, images: torch.Tensor, labels: torch.Tensor, *,
                             cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                             heldout_fraction: float = 0.2, seed: int = 0, epochs: int = CLASSIFIER_EPOCHS,
                             batch_size: int = CLASSIFIER_BATCH_SIZE, progress: bool = True) -> Classifier:
    """The cached classifier of ``dataset`` at this image shape, trained and cached first if missing.

    The cache file (see :func:`classifier_path`) is keyed by data set name and image shape; it is
    retrained (and replaced) when it cannot be read or when its recorded version, class count,
    training-set size, split, epochs or batch size does not match.

    Args:
        dataset: data set name (the cache key).
        images, labels, heldout_fraction, seed, epochs, batch_size, progress: as for
            :func:`train_classifier`.
        cache_dir: folder of the cache files; default :func:`default_cache_dir`.
        device: where the returned net lives.
    """
    _check_images("images", images)
    path = classifier_path(default_cache_dir() if cache_dir is None else cache_dir, dataset, images)
    expected = {"version": CLASSIFIER_VERSION, "num_classes": str(int(labels.max()) + 1),
                "num_images": str(len(images)), "heldout_fraction": repr(float(heldout_fraction)),
                "seed": str(seed), "epochs": str(epochs), "batch_size": str(batch_size)}
    cached = _load_cached(path, expected, images.shape[1], device)
    if cached is not None:
        return cached
    classifier = train_classifier(images, labels, device=device, heldout_fraction=heldout_fraction, seed=seed,
                                  epochs=epochs, batch_size=batch_size, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in classifier.net.state_dict().items()}
    metadata = {**expected, "dataset": dataset, "heldout_accuracy": repr(classifier.heldout_accuracy)}
    # Written beside and renamed into place, so a concurrent reader never sees half a file.
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    classifier.path = path
    return classifier


def _load_cached(path: Path, expected: dict[str, str], in_channels: int, device) -> Classifier | None:
    """The classifier cached at ``path`` if it is readable and its metadata matches ``expected``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if any(metadata.get(k) != v for k, v in expected.items()):
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}
        net = FeatureClassifier(in_channels, int(expected["num_classes"])).to(device)
        net.load_state_dict(state)
        accuracy = float(metadata["heldout_accuracy"])
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError):
        return None  # unreadable or from another architecture: retrain
    heldout, _ = heldout_split(int(expected["num_images"]), float(expected["heldout_fraction"]), int(expected["seed"]))
    return Classifier(net.eval(), heldout, accuracy, path)


@torch.no_grad()
def predict_probs(net: FeatureClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Softmax class probabilities (N, K) of ``images`` (N, C, H, W), float32 on the net's device."""
    _check_images("images", images)
    device = next(net.parameters()).device
    return torch.cat([net(b.to(device)).softmax(1) for b in images.split(batch_size)])


@torch.no_grad()
def extract_features(net: FeatureClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Features (N, F) of ``images`` (N, C, H, W), float32 on the net's device."""
    _check_images("images", images)
    device = next(net.parameters()).device
    return torch.cat([net.features(b.to(device)) for b in images.split(batch_size)])


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Diversity: the mean Euclidean distance over all pairs of rows of ``features`` (N, F), N >= 2."""
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"features must have shape (N >= 2, F), got {tuple(features.shape)}")
    return torch.pdist(features.double()).mean().item()


def gaussian_fit(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F), float64, of ``features`` (N, F), N >= 2."""
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"features must have shape (N >= 2, F), got {tuple(features.shape)}")
    x = features.detach().double().cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mean1, cov1) and N(mean2, cov2):
    ``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))``.

    ``tr (C1 C2)^(1/2)`` is the sum of the square roots of the eigenvalues of the symmetric
    ``C1^(1/2) C2 C1^(1/2)``, which has the same spectrum; unlike ``sqrtm(C1 @ C2)`` this stays
    real and accurate when the covariances are singular (fewer samples than features).

    Args:
        mean1, mean2: (F,) means.
        cov1, cov2: (F, F) symmetric positive semi-definite covariances.
    """
    mean1, mean2 = np.atleast_1d(np.asarray(mean1, np.float64)), np.atleast_1d(np.asarray(mean2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    dim = mean1.shape[0]
    for name, value, shape in (("mean2", mean2, (dim,)), ("cov1", cov1, (dim, dim)), ("cov2", cov2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match mean1, got {value.shape}")
    for name, value in (("mean1", mean1), ("mean2", mean2), ("cov1", cov1), ("cov2", cov2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf")
    root1 = _psd_sqrt("cov1", cov1)
    _psd_sqrt("cov2", cov2)
    cross = np.sqrt(np.clip(scipy.linalg.eigvalsh(root1 @ cov2 @ root1), 0.0, None)).sum()
    # A distance is >= 0; with fewer samples than features round-off can leave it at -1e-5.
    return max(0.0, float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross))


def _psd_sqrt(name: str, cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues set to 0)."""
    scale = max(np.abs(cov).max(), np.finfo(np.float64).tiny)
    if not np.allclose(cov, cov.T, rtol=0.0, atol=1e-9 * scale):
        raise ValueError(f"{name} must be a symmetric covariance matrix")
    values, vectors = scipy.linalg.eigh(cov)
    if values.min() < -1e-9 * scale * len(values):
        raise ValueError(f"{name} must be positive semi-definite, has eigenvalue {values.min():.3g}")
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def feature_frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """:func:`frechet_distance` between the Gaussian fits of two feature sets (N1, F) and (N2, F)."""
    return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))


def colour_statistics(images: torch.Tensor) -> dict:
    """Per-channel means and the warm/cool index of ``images`` (N, C, H, W) in [0, 1].

    The warm/cool index is ``mean(R - B)`` over all pixels of RGB images (C = 3): positive is
    warmer (redder), negative cooler (bluer), in units of the [0, 1] intensity scale. It is
    None for other channel counts, where red and blue are not defined.

    Returns:
        ``{"channel_means": [C floats], "warm_cool": float | None}``.
    """
    _check_images("images", images)
    means = images.double().mean(dim=(0, 2, 3))
    warm_cool = (means[0] - means[2]).item() if images.shape[1] == 3 else None
    return {"channel_means": means.tolist(), "warm_cool": warm_cool}


def prediction_statistics(probs: torch.Tensor) -> dict:
    """What the classifier says about a set of images, from their softmax outputs ``probs`` (N, K).

    Returns:
        ``mean_confidence``: the mean of the per-image maximum probability, in [1/K, 1];
        ``class_entropy_bits``: entropy of the histogram of predicted classes, in bits
        (log2 K when every class is predicted equally often, 0 when only one is);
        ``classes_covered``: how many of the K classes are predicted for at least one image.
    """
    if probs.dim() != 2 or len(probs) == 0:
        raise ValueError(f"probs must have shape (N >= 1, K), got {tuple(probs.shape)}")
    if not (torch.isfinite(probs).all() and probs.min() >= 0 and torch.allclose(probs.sum(1), probs.new_ones(()),
                                                                                  atol=1e-3)):
        raise ValueError("probs must be probabilities: finite, non-negative, each row summing to 1")
    confidence, predicted = probs.max(1)
    counts = torch.bincount(predicted.cpu(), minlength=probs.shape[1]).double()
    share = counts[counts > 0] / counts.sum()
    return {"mean_confidence": confidence.double().mean().item(),
            "class_entropy_bits": (share * share.reciprocal().log2()).sum().item(),
            "classes_covered": int((counts > 0).sum())}


def _check_images(name: str, images) -> None:
    """(N >= 1, C, H, W) float images with values in [0, 1] (the classifier's training range)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4 or not len(images):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor of shape (N >= 1, C, H, W), got {got}")
    low, high = images.aminmax()
    if not (0 <= low and high <= 1):  # also false for NaN
        raise ValueError(f"{name} must have values in [0, 1] (clamp samples first), got [{low:.4g}, {high:.4g}]")
