"""Data sets: tiny MNIST / Fashion-MNIST / CIFAR-10 files written in torchvision's on-disk format
and read through the real loader, the embedded digits, an image folder, and missing data."""
import hashlib
import pickle
import re
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

from scoreops.training.data import DATASETS, load_images


def _write_idx(path, array):
    """An uncompressed IDX file (the MNIST format): magic 0x08 (ubyte) + ndim, big-endian sizes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root, folder, images):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    labels = np.arange(len(images)) % 10
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_files_load_through_torchvision(tmp_path, name, folder):
    images = np.random.randint(0, 256, size=(7, 28, 28), dtype=np.uint8)
    _write_mnist(tmp_path, folder, images)
    got = load_images(name, tmp_path)
    assert got.shape == (7, 1, 28, 28) and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.from_numpy(images).float().unsqueeze(1) / 255)
    small = load_images(name, tmp_path, image_size=16)
    assert small.shape == (7, 1, 16, 16) and 0 <= small.min() and small.max() <= 1


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_files_load_through_torchvision(tmp_path, monkeypatch):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = [np.random.randint(0, 256, size=(3, 3 * 32 * 32), dtype=np.uint8) for _ in range(6)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for file, data in zip(names, batches):
        (base / file).write_bytes(pickle.dumps({"data": data, "labels": [0, 1, 2]}))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    # torchvision checks every file against the real CIFAR-10's MD5; point it at the tiny files'.
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[n, _md5(base / n)] for n in names[:5]])
    monkeypatch.setattr(cifar, "test_list", [[names[5], _md5(base / names[5])]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": _md5(base / "batches.meta")})

    got = load_images("cifar10", tmp_path)
    want = torch.from_numpy(np.concatenate(batches[:5]).reshape(15, 3, 32, 32)).float() / 255
    assert got.shape == (15, 3, 32, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_digits_are_sklearn_digits_in_unit_range():
    native = load_images("digits", image_size=8)
    want = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16
    torch.testing.assert_close(native, want)
    for size in (16, 5):
        resized = load_images("digits", image_size=size)
        assert resized.shape == (1797, 1, size, size) and resized.dtype == torch.float32
        assert resized.min() >= 0 and resized.max() <= 1
        # Reference: Pillow's bilinear resize (antialiased when shrinking) of the float images.
        pick = torch.randint(0, 1797, (20,))
        ref = [np.asarray(Image.fromarray(want[i, 0].numpy()).resize((size, size), Image.BILINEAR)) for i in pick]
        torch.testing.assert_close(resized[pick, 0], torch.from_numpy(np.stack(ref)), rtol=0, atol=1e-6)


def test_folder_of_images(tmp_path):
    sizes = [(40, 30), (32, 32), (20, 50)]
    arrays = []
    for i, (w, h) in enumerate(sizes):
        array = np.random.randint(0, 256, size=(h, w, 3), dtype=np.uint8)
        arrays.append(array)
        sub = tmp_path / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(sub / f"img{i}.png")
    Image.fromarray(arrays[0][..., 0]).save(tmp_path / "gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = load_images("folder", tmp_path, image_size=32)
    assert got.shape == (4, 3, 32, 32) and got.min() >= 0 and got.max() <= 1
    # Sorted paths: a/img1.png (32x32, unchanged), b/c/img0.png, b/c/img2.png, gray.png.
    torch.testing.assert_close(got[0], torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 255)
    assert torch.equal(got[3][0], got[3][1]) and torch.equal(got[3][1], got[3][2])


def test_missing_or_unknown_data_set_says_where_and_how(tmp_path):
    for name, layout in [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("cifar10", "cifar-10-batches-py")]:
        with pytest.raises(FileNotFoundError, match="--download") as info:
            load_images(name, tmp_path)
        assert str(tmp_path) in str(info.value) and layout in str(info.value)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_images("imagenet", tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        load_images("folder")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_images("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images("folder", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="image_size"):
        load_images("digits", image_size=0)
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "folder"}


@pytest.mark.parametrize("name,cls,error", [
    ("cifar10", "CIFAR10", urllib.error.URLError("[Errno -2] Name or service not known")),
    ("mnist", "MNIST", RuntimeError("Error downloading train-images-idx3-ubyte.gz")),
])
def test_a_failed_download_says_what_it_was_downloading(tmp_path, monkeypatch, name, cls, error):
    def fail(self):
        raise error

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", fail)
    expected = f"downloading {name} into {re.escape(str(tmp_path))} failed: .*{re.escape(error.args[0])}"
    with pytest.raises(OSError, match=expected):
        load_images(name, tmp_path, download=True)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png"):
        load_images("folder", tmp_path)


def test_folder_skips_hidden_files_and_reads_16_bit_and_exif_orientation(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)  # mean 0.5 of full scale
    Image.fromarray(ramp).save(tmp_path / "a_16bit.png")
    halves = np.zeros((32, 32, 3), dtype=np.uint8)
    halves[:, 16:] = 255  # left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise
    Image.fromarray(halves).save(tmp_path / "b_rotated.jpg", exif=exif, quality=100)
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(halves).save(tmp_path / ".hidden" / "c.png")
    (tmp_path / "._d.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata, not a PNG")
    got = load_images("folder", tmp_path, image_size=32)
    assert got.shape == (2, 3, 32, 32)
    assert got[0].mean().item() == pytest.approx(0.5, abs=1e-3) and torch.equal(got[0][0], got[0][2])
    upright = got[1].mean(0)
    # Rotated clockwise, the white right half is the bottom half.
    assert upright[:12].max() < 0.1 and upright[-12:].min() > 0.9
