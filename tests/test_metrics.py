"""Metrics against independent references: the textbook Frechet formula (scipy.linalg.sqrtm of
C1 C2), its closed form for commuting covariances, brute-force pair distances, plain means."""
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from sklearn.datasets import load_digits

from scoreops.evaluation import metrics
from scoreops.training.data import load_images


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed & 0xFFFFFFFF)


def random_spd(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def sqrtm_frechet(m1, c1, m2, c2):
    """The textbook formula, with the general matrix square root of the non-symmetric C1 C2."""
    return np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)


def test_frechet_distance_matches_the_sqrtm_formula(rng):
    dim = 7
    m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
    c1, c2 = random_spd(rng, dim), random_spd(rng, dim)
    assert metrics.frechet_distance(m1, c1, m2, c2) == pytest.approx(sqrtm_frechet(m1, c1, m2, c2), rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances(rng):
    # Commuting covariances: tr (C1 C2)^(1/2) = sum sqrt(a_i b_i), so FD = |dm|^2 + sum (sqrt a - sqrt b)^2.
    dim = 5
    m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2.
    assert metrics.frechet_distance([1.5], [[4.0]], [-0.5], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_of_samples_approaches_that_of_their_gaussians(rng):
    dim, n = 4, 200_000
    m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
    c1, c2 = random_spd(rng, dim), random_spd(rng, dim)
    x1 = torch.from_numpy(rng.multivariate_normal(m1, c1, n))
    x2 = torch.from_numpy(rng.multivariate_normal(m2, c2, n))
    expected = sqrtm_frechet(m1, c1, m2, c2)
    assert metrics.feature_frechet_distance(x1, x2) == pytest.approx(expected, rel=0.02, abs=0.01)


@pytest.mark.parametrize("n, dim", [(300, 16), (20, 64)], ids=["full-rank", "fewer-samples-than-features"])
def test_frechet_distance_of_a_set_with_itself_is_zero(rng, n, dim):
    features = torch.from_numpy(rng.standard_normal((n, dim)) * rng.uniform(0.5, 2.0, dim))
    scale = features.var(0).sum().item()
    assert 0.0 <= metrics.feature_frechet_distance(features, features) < 1e-6 * scale


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="cov2"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="features"):
        metrics.feature_frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_frechet_distance_refuses_what_is_not_a_covariance():
    zero, eye = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="cov1 must be positive semi-definite"):
        metrics.frechet_distance(zero, -eye, zero, eye)
    with pytest.raises(ValueError, match="cov2 must be a symmetric"):
        metrics.frechet_distance(zero, eye, zero, eye + np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="mean1 contains NaN"):
        metrics.frechet_distance(np.array([np.nan, 0.0]), eye, zero, eye)


def test_images_outside_the_unit_range_nan_or_none_are_refused():
    for bad in (torch.rand(2, 3, 4, 4) * 255, torch.full((2, 3, 4, 4), float("nan"))):
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            metrics.colour_statistics(bad)
    with pytest.raises(ValueError, match="N >= 1"):
        metrics.colour_statistics(torch.rand(0, 3, 4, 4))


def test_prediction_statistics_refuses_what_are_not_probabilities():
    for bad in (torch.randn(5, 10), torch.full((5, 10), float("nan"))):
        with pytest.raises(ValueError, match="probs must be probabilities"):
            metrics.prediction_statistics(bad)


def test_mean_pairwise_distance_matches_brute_force(rng):
    x = rng.standard_normal((13, 6))
    expected = np.mean([np.linalg.norm(x[i] - x[j]) for i in range(13) for j in range(i + 1, 13)])
    assert metrics.mean_pairwise_distance(torch.from_numpy(x).float()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.mean_pairwise_distance(torch.zeros(1, 6))


def test_colour_statistics_rgb_and_grey():
    images = torch.rand(6, 3, 5, 7)
    stats = metrics.colour_statistics(images)
    expected = [images[:, c].mean().item() for c in range(3)]
    assert stats["channel_means"] == pytest.approx(expected, rel=1e-6)
    assert stats["warm_cool"] == pytest.approx((images[:, 0] - images[:, 2]).mean().item(), abs=1e-6)
    grey = metrics.colour_statistics(images[:, :1])
    assert grey["channel_means"] == pytest.approx(expected[:1], rel=1e-6) and grey["warm_cool"] is None
    with pytest.raises(ValueError, match="images"):
        metrics.colour_statistics(images[0])


def test_prediction_statistics(rng):
    labels = rng.integers(0, 6, 50)  # classes 6..9 never predicted
    confidence = rng.uniform(0.5, 0.9, 50)
    probs = np.full((50, 10), 0.0)
    probs[np.arange(50), labels] = confidence
    probs[np.arange(50), (labels + 1) % 10] = 1 - confidence
    stats = metrics.prediction_statistics(torch.from_numpy(probs))
    assert stats["mean_confidence"] == pytest.approx(confidence.mean())
    assert stats["classes_covered"] == len(np.unique(labels))
    assert stats["class_entropy_bits"] == pytest.approx(scipy.stats.entropy(np.bincount(labels), base=2))
    one_class = metrics.prediction_statistics(torch.eye(10)[[3] * 5])
    assert one_class == {"mean_confidence": 1.0, "class_entropy_bits": 0.0, "classes_covered": 1}


@pytest.fixture(scope="module")
def digits8():
    return load_images("digits", image_size=8), torch.from_numpy(load_digits().target).long()


def test_classifier_never_trains_on_its_held_out_images(digits8, monkeypatch):
    images, labels = digits8
    images = images.clone()
    images[:, 0, 0, 0] = torch.arange(len(images)) / len(images)  # a pixel that names each image
    seen = []
    forward = metrics.FeatureClassifier.forward

    def spy(net, x):
        if net.training:
            seen.append(x[:, 0, 0, 0].clone())
        return forward(net, x)

    monkeypatch.setattr(metrics.FeatureClassifier, "forward", spy)
    classifier = metrics.train_classifier(images, labels, epochs=1, progress=False)
    trained_on = set(torch.cat(seen).tolist())
    assert len(trained_on) == len(images) - len(classifier.heldout)
    assert not trained_on & set(images[classifier.heldout, 0, 0, 0].tolist())


def test_classifier_learns_digits_and_is_cached(digits8, tmp_path, monkeypatch):
    images, labels = digits8
    first = metrics.load_or_train_classifier("digits", images, labels, cache_dir=tmp_path, epochs=8, progress=False)
    assert first.heldout_accuracy > 0.85  # chance is 0.1
    assert first.path == tmp_path / "classifier-digits-1x8x8.safetensors" and first.path.is_file()
    # The recorded accuracy is that of the held-out images.
    predicted = metrics.predict_probs(first.net, images[first.heldout]).argmax(1)
    assert predicted.eq(labels[first.heldout]).double().mean().item() == pytest.approx(first.heldout_accuracy)

    heldout, train = metrics.heldout_split(len(images))
    assert len(heldout) == round(0.2 * len(images)) and not set(heldout.tolist()) & set(train.tolist())
    assert torch.equal(first.heldout, heldout)

    with monkeypatch.context() as m:  # a cache hit trains nothing
        m.setattr(metrics, "train_classifier", lambda *a, **k: pytest.fail("trained instead of reading the cache"))
        again = metrics.load_or_train_classifier("digits", images, labels, cache_dir=tmp_path, epochs=8,
                                                 progress=False)
    assert again.heldout_accuracy == first.heldout_accuracy and torch.equal(again.heldout, heldout)
    probe = torch.rand(9, 1, 8, 8)
    torch.testing.assert_close(metrics.extract_features(again.net, probe), metrics.extract_features(first.net, probe))
    assert metrics.extract_features(first.net, probe).shape == (9, 64)

    # Other training options are not served the cached classifier: a 1-epoch one is trained.
    shorter = metrics.load_or_train_classifier("digits", images, labels, cache_dir=tmp_path, epochs=1, progress=False)
    assert not torch.allclose(metrics.extract_features(shorter.net, probe), metrics.extract_features(first.net, probe))

    # A corrupted cache file is replaced, not trusted.
    first.path.write_bytes(b"not a safetensors file")
    rebuilt = metrics.load_or_train_classifier("digits", images, labels, cache_dir=tmp_path, epochs=8,
                                               progress=False)
    assert rebuilt.heldout_accuracy == first.heldout_accuracy  # same seed, same training
    torch.testing.assert_close(metrics.extract_features(rebuilt.net, probe), metrics.extract_features(first.net, probe))

    # A different training set under the same key is not served from the stale cache.
    retrained = metrics.load_or_train_classifier("digits", images[:500], labels[:500], cache_dir=tmp_path,
                                                 epochs=1, progress=False)
    features = metrics.extract_features(first.net, probe)
    assert not torch.allclose(metrics.extract_features(retrained.net, probe), features)


def test_classifier_rejects_bad_labels(digits8):
    images, labels = digits8
    with pytest.raises(ValueError, match="labels"):
        metrics.train_classifier(images, labels[:-1], epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        metrics.train_classifier(images, labels.float(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="class indices >= 0"):
        metrics.train_classifier(images, torch.where(labels == 3, -1, labels), epochs=1, progress=False)
