"""normlib.data: embedded datasets and the CIFAR reader (on a tiny archive in the same format)."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from normlib import data


def test_digits_are_8x8_images_in_unit_range_with_disjoint_seeded_split():
    d = data.load_digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    assert torch.equal(data.load_digits().x_test, d.x_test)  # same seed -> same split
    assert not torch.equal(data.load_digits(seed=1).x_test, d.x_test)
    assert data.load_digits(flatten=True).x_train.shape[1:] == (64,)


def test_wine_keeps_feature_scales_three_orders_apart():
    d = data.load_wine()
    std = d.x_train.std(0)
    assert float(std.max() / std.min()) > 1000
    assert d.num_classes == 3


def test_mnist1d_is_generated_locally_with_requested_size():
    d = data.load_mnist1d(num_samples=200, seed=3)
    assert d.x_train.shape == (160, 1, 40) and d.x_test.shape == (40, 1, 40)
    assert set(d.y_train.tolist()) <= set(range(10))


def _write_cifar10(root, n_per_batch=4, as_archive=False):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        written[name] = batch
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    if as_archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return written


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_reader_restores_pixels_and_labels(tmp_path, as_archive):
    written = _write_cifar10(tmp_path, as_archive=as_archive)
    d = data.load_cifar(10, root=tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    mean = torch.tensor(data.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.CIFAR_STD).view(1, 3, 1, 1)
    pixels = ((d.x_test * std + mean) * 255).round().to(torch.uint8)
    expected = torch.from_numpy(written["test_batch"][b"data"]).view(-1, 3, 32, 32)
    assert torch.equal(pixels, expected)
    assert d.y_test.tolist() == written["test_batch"][b"labels"]


def test_cifar100_reader_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in [("train", 6), ("test", 3)]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": [99] * n,
                         b"coarse_labels": [1] * n}, fh)
    d = data.load_cifar(100, root=tmp_path)
    assert d.y_train.tolist() == [99] * 6 and d.num_classes == 100


def test_missing_cifar_raises_file_not_found_naming_path_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_cifar(100, root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python.tar.gz") in msg and "python version" in msg


def test_bad_cifar_class_count_raises():
    with pytest.raises(ValueError, match="10 or 100"):
        data.load_cifar(20)
