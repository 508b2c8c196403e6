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


# --- Security and validation of the CIFAR reader -------------------------------------------------


class _TouchMarker:
    """Unpickling an instance with the plain pickle module would create ``path`` (runs code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _good_batch(n=4, label_key=b"labels", classes=10):
    rng = np.random.default_rng(1)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist()}


def _write_folder(root, batches, protocol=pickle.DEFAULT_PROTOCOL):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump(batches.get(name, _good_batch()), fh, protocol=protocol)
    return folder


def _to_archive(root, folder):
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return root / "cifar-10-python.tar.gz"


@pytest.mark.parametrize("as_archive", [False, True])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_crafted_cifar_pickle_runs_no_code_and_the_error_names_the_file(tmp_path, as_archive, where):
    marker = tmp_path / "marker"
    payload = _TouchMarker(marker)
    if where == "nested":  # the object hides inside the expected dict
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]}
    folder = _write_folder(tmp_path, {"data_batch_1": payload})
    if as_archive:
        _to_archive(tmp_path, folder)
    with pytest.raises(data.DataFormatError) as err:
        data.load_cifar(10, root=tmp_path)
    assert not marker.exists()
    assert "data_batch_1" in str(err.value) and "refused to construct" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_the_marker_payload_would_run_under_plain_pickle(tmp_path):
    # Guards the test above: the payload really executes when read without restriction.
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_TouchMarker(marker)))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_are_read(tmp_path, protocol):
    batch = _good_batch()
    _write_folder(tmp_path, {"test_batch": batch}, protocol=protocol)
    d = data.load_cifar(10, root=tmp_path)
    assert d.y_test.tolist() == batch[b"labels"] and d.x_train.shape == (20, 3, 32, 32)


def test_cifar_batch_with_str_keys_is_read(tmp_path):
    batch = _good_batch()
    _write_folder(tmp_path, {"test_batch": {"data": batch[b"data"], "labels": batch[b"labels"]}})
    assert data.load_cifar(10, root=tmp_path).y_test.tolist() == batch[b"labels"]


_MALFORMED = {
    "counts differ": ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]},
                      "4 images but 3 labels"),
    "float pixels": ({b"data": np.full((2, 3072), 0.5), b"labels": [0, 1]}, "uint8"),
    "wide ints": ({b"data": np.full((2, 3072), 300, np.int64), b"labels": [0, 1]}, "uint8"),
    "label too large": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "[0, 10)"),
    "negative label": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "[0, 10)"),
    "float labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 1.0]}, "list of ints"),
    "bool labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}, "list of ints"),
    "short rows": ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "(N, 3072)"),
    "1-D data": ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, "(N, 3072)"),
    "missing labels": ({b"data": np.zeros((2, 3072), np.uint8)}, "missing the key 'labels'"),
    "missing data": ({b"labels": [0]}, "missing the key 'data'"),
    "not a dict": ([1, 2, 3], "expected a dict"),
    "list pixels": ({b"data": [[0] * 3072], b"labels": [0]}, "uint8 array"),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
@pytest.mark.parametrize("as_archive", [False, True])
def test_malformed_cifar_batch_is_refused_naming_file_and_fault(tmp_path, case, as_archive):
    batch, fault = _MALFORMED[case]
    folder = _write_folder(tmp_path, {"data_batch_3": batch})
    if as_archive:
        _to_archive(tmp_path, folder)
    with pytest.raises(data.DataFormatError) as err:
        data.load_cifar(10, root=tmp_path)
    assert "data_batch_3" in str(err.value) and fault in str(err.value)


@pytest.mark.parametrize("cut", [0, 10, 1000, 6000])
def test_truncated_cifar_file_or_archive_is_a_clear_error(tmp_path, cut):
    folder = _write_folder(tmp_path, {})
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(data.DataFormatError, match="data_batch_2.*(truncated|corrupt|not a CIFAR)"):
        data.load_cifar(10, root=tmp_path)



@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.9])
def test_truncated_cifar_archive_is_a_clear_error_naming_it(tmp_path, keep):
    archive = _to_archive(tmp_path, _write_folder(tmp_path, {}))
    blob = archive.read_bytes()
    archive.write_bytes(blob[: int(keep * len(blob))])
    with pytest.raises(data.DataFormatError) as err:
        data.load_cifar(10, root=tmp_path)
    assert str(archive) in str(err.value)


def test_archive_missing_a_batch_names_it(tmp_path):
    folder = _write_folder(tmp_path, {})
    (folder / "data_batch_4").unlink()
    _to_archive(tmp_path, folder)
    with pytest.raises(data.DataFormatError, match="no batch file 'data_batch_4'"):
        data.load_cifar(10, root=tmp_path)


def test_folder_missing_a_batch_names_it(tmp_path):
    folder = _write_folder(tmp_path, {})
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load_cifar(10, root=tmp_path)


@pytest.mark.parametrize("bad", [10.0, 100.0, True, "10", 20, None])
def test_cifar_class_count_must_be_the_int_10_or_100(bad):
    with pytest.raises(ValueError, match="int 10 or 100"):
        data.load_cifar(bad)
