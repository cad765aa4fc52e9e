"""cpmc_plugin.data: shapes, normalization, determinism, augmentation, idx parsing, errors."""

from __future__ import annotations

import gzip
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from cpmc_plugin.data import (
    DatasetInfo,
    dataset_info,
    list_datasets,
    load_dataset,
    make_loaders,
    read_idx,
)
from tests.helpers import needs_fashion_mnist

NAMES = ["digits", "fashion-mnist", "cifar10", "cifar100", "svhn"]
Item = tuple[torch.Tensor, int]


def stack(dataset: Dataset[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of ``dataset``, through a DataLoader as a user would."""
    batches = list(DataLoader(dataset, batch_size=10_000))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def shifts(x: torch.Tensor, info: DatasetInfo, pad: int, flip: bool) -> list[torch.Tensor]:
    """Every image the augmentation may make of ``x``: zero-padded crops (and their mirrors)."""
    c, h, w = x.shape
    fill = (-torch.tensor(info.mean) / torch.tensor(info.std)).view(c, 1, 1)
    padded = fill.expand(c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, pad : pad + h, pad : pad + w] = x
    crops = [
        padded[:, t : t + h, s : s + w] for t in range(2 * pad + 1) for s in range(2 * pad + 1)
    ]
    return crops + [crop.flip(-1) for crop in crops] if flip else crops


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def known_images(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 images with distinct, known pixels, and their labels."""
    k, i, j = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    return ((i * 28 + j + 37 * k) % 256).astype(np.uint8), np.array([3, 1, 4, 1, 5][:n], np.uint8)


# --- names and info ----------------------------------------------------------------------


def test_list_and_info() -> None:
    assert list_datasets() == NAMES
    for name in NAMES:
        info = dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.in_channels
        assert all(0 < s < 1 for s in info.std)
    assert dataset_info("cifar100").num_classes == 100
    assert (dataset_info("digits").image_size, dataset_info("fashion-mnist").image_size) == (8, 28)
    with pytest.raises(AttributeError):
        dataset_info("digits").num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize("call", ["info", "load", "loaders"])
def test_unknown_name(call: str) -> None:
    with pytest.raises(
        ValueError, match=r"unknown dataset 'mnist'; known datasets: digits, .*, svhn$"
    ):
        if call == "info":
            dataset_info("mnist")
        elif call == "load":
            load_dataset("mnist", train=True)
        else:
            make_loaders("mnist")


# --- digits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
    return {
        train: stack(load_dataset("digits", train=train, augment=False)) for train in (True, False)
    }


def test_digits_shapes_and_split(digits: dict[bool, tuple[torch.Tensor, torch.Tensor]]) -> None:
    (xtr, ytr), (xte, yte) = digits[True], digits[False]
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    image, label = load_dataset("digits", train=False)[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and type(label) is int
    for y in (ytr, yte):
        assert y.min() >= 0 and y.max() <= 9
    # stratified: every class has 35..37 test images, all 1797 images used once
    assert torch.bincount(yte, minlength=10).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert len(ytr) + len(yte) == 1797
    # deterministic
    again = stack(load_dataset("digits", train=True, augment=False))
    assert torch.equal(again[0], xtr) and torch.equal(again[1], ytr)


def test_digits_normalized(digits: dict[bool, tuple[torch.Tensor, torch.Tensor]]) -> None:
    x = digits[True][0]
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1) < 1e-3


def test_digits_augmentation() -> None:
    torch.manual_seed(0)
    info = dataset_info("digits")
    plain = load_dataset("digits", train=True, augment=False)
    augmented = load_dataset("digits", train=True)  # default: augment the train split
    test = load_dataset("digits", train=False)  # default: not the test split
    assert torch.equal(test[5][0], test[5][0])
    x, label = plain[7]
    candidates = shifts(x, info, pad=1, flip=False)
    draws = [augmented[7] for _ in range(30)]
    assert all(y == label for _, y in draws)
    assert all(any(torch.allclose(a, c) for c in candidates) for a, _ in draws)
    assert sum(not torch.equal(a, x) for a, _ in draws) > 15  # 8 of 9 shifts move the image


# --- loaders -----------------------------------------------------------------------------


def test_loaders_digits() -> None:
    train, test, info = make_loaders("digits", batch_size=100)
    assert info == dataset_info("digits")
    images, labels = next(iter(train))
    assert images.shape == (100, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (100,) and labels.dtype == torch.int64
    assert len(train.dataset) == 1437 and len(test.dataset) == 360  # type: ignore[arg-type]
    assert [len(b[1]) for b in test] == [100, 100, 100, 60]
    # the test loader is neither shuffled nor augmented
    first = next(iter(test))[0]
    assert torch.equal(first, next(iter(test))[0])
    assert torch.equal(first[0], load_dataset("digits", train=False)[0][0])
    # the shuffle order depends on the seed only
    order = [next(iter(make_loaders("digits", seed=s, batch_size=50)[0]))[1] for s in (1, 1, 2)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])


def test_subsets_deterministic() -> None:
    def subset_labels(seed: int) -> list[torch.Tensor]:
        train, test, _ = make_loaders(
            "digits", train_subset=200, test_subset=50, seed=seed, augment=False, batch_size=1000
        )
        assert len(train.dataset) == 200 and len(test.dataset) == 50  # type: ignore[arg-type]
        return [next(iter(test))[0], next(iter(test))[1]]

    a, b, c = subset_labels(3), subset_labels(3), subset_labels(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an integer >= 1, got 2.5"),
        ({"batch_size": True}, TypeError, "batch_size must be an integer >= 1, got True"),
        ({"num_workers": -1}, ValueError, "num_workers must be an integer >= 0"),
        ({"train_subset": 0}, ValueError, "train_subset must be None or an integer >= 1, got 0"),
        (
            {"test_subset": 361},
            ValueError,
            r"test_subset=361 is larger than the split \(360 items\)",
        ),
        ({"download": "yes"}, TypeError, "download must be True or False"),
        ({"distributed": True}, ValueError, "distributed=True needs an initialized process group"),
    ],
)
def test_bad_loader_arguments(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    if kwargs.get("distributed") and dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(error, match=match):
        make_loaders("digits", **kwargs)  # type: ignore[arg-type]


def test_bad_augment_argument() -> None:
    with pytest.raises(TypeError, match="augment must be True or False, got 1"):
        load_dataset("digits", train=True, augment=1)  # type: ignore[arg-type]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_distributed_train_loader(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        train, test, _ = make_loaders("digits", distributed=True, seed=5, batch_size=2000)
        assert isinstance(train.sampler, DistributedSampler)
        assert isinstance(test.sampler, SequentialSampler)
        train.sampler.set_epoch(0)
        epoch0 = next(iter(train))[1]
        train.sampler.set_epoch(1)
        epoch1 = next(iter(train))[1]
        assert len(epoch0) == 1437 and not torch.equal(epoch0, epoch1)
        assert torch.equal(epoch0.sort().values, epoch1.sort().values)
    finally:
        dist.destroy_process_group()


# --- idx files (known answers) ------------------------------------------------------------


def test_read_idx_known_answer(tmp_path: Path) -> None:
    images, labels = known_images()
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels", labels)
    got = read_idx(tmp_path / "images.gz")
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    assert np.array_equal(got, images)
    assert got[0, 0, 0] == 0 and got[0, 1, 2] == 30 and got[2, 27, 27] == (783 + 74) % 256
    assert read_idx(tmp_path / "labels").tolist() == [3, 1, 4, 1, 5]
    # big-endian int32 and float64 come back in native byte order
    ints = np.array([[1, -2, 70_000], [3, 4, -5]], np.int32)
    write_idx(tmp_path / "ints", ints, 0x0C)
    assert read_idx(tmp_path / "ints").tolist() == ints.tolist()
    floats = np.array([0.5, -1.25e10], np.float64)
    write_idx(tmp_path / "floats.gz", floats, 0x0E)
    assert read_idx(tmp_path / "floats.gz").tolist() == [0.5, -1.25e10]


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_from_root_known_answer(tmp_path: Path, layout: str) -> None:
    directory = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = known_images()
    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    write_idx(directory / "t10k-images-idx3-ubyte", images[:2])  # uncompressed works too
    write_idx(directory / "t10k-labels-idx1-ubyte", labels[:2])
    train = load_dataset("fashion-mnist", root=tmp_path, train=True, augment=False)
    x, y = stack(train)
    expected = (torch.from_numpy(images).float()[:, None] / 255 - 0.2860) / 0.3530
    assert x.shape == (5, 1, 28, 28) and torch.allclose(x, expected, atol=1e-6)
    assert y.tolist() == [3, 1, 4, 1, 5]
    assert len(load_dataset("fashion-mnist", root=tmp_path, train=False)) == 2  # type: ignore[arg-type]


def test_corrupt_idx_files(tmp_path: Path) -> None:
    images, labels = known_images()
    write_idx(tmp_path / "good", images)
    good = (tmp_path / "good").read_bytes()
    cases = {
        "magic": (b"\x08\x03\x00\x00" + good[4:], "bad magic number 0x08030000"),
        "dtype": (b"\x00\x00\x07\x03" + good[4:], "bad magic number 0x00000703"),
        "short": (good[:100], r"truncated, shape \(5, 28, 28\) needs 3920 bytes of data, found 84"),
        "header": (good[:9], "truncated in the header"),
        "tiny": (b"\x00\x00", "2 bytes, shorter than the header"),
        "long": (good + b"\x00\x00", "2 bytes after the data"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"corrupt idx file .*{name}: {match}"):
            read_idx(tmp_path / name)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-30])  # truncated gzip stream
    with pytest.raises(ValueError, match=r"cannot read idx file .*cut\.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "notgz.gz").write_bytes(good)
    with pytest.raises(ValueError, match=r"cannot read idx file .*notgz\.gz"):
        read_idx(tmp_path / "notgz.gz")
    # through load_dataset: the error names the file
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good[:500]))
    write_idx(tmp_path / "ds" / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=r"corrupt idx file .*train-images-idx3-ubyte\.gz: trunc"):
        load_dataset("fashion-mnist", root=tmp_path / "ds", train=True)


def test_fashion_mnist_wrong_contents(tmp_path: Path) -> None:
    images, labels = known_images()
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:, :27])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=r"images-idx3-ubyte\.gz: expected uint8 images of shape"):
        load_dataset("fashion-mnist", root=tmp_path, train=True)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:4])
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte\.gz: expected 5 labels"):
        load_dataset("fashion-mnist", root=tmp_path, train=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels + 7)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), found 8\.\.12"):
        load_dataset("fashion-mnist", root=tmp_path, train=True)


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(f"looked in: {missing}, {missing}")) as err:
        load_dataset("fashion-mnist", root=missing, train=True)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


# --- torchvision data sets: no files, no download, no network ------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize(
    ("name", "looked_for"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "32x32.mat")],
)
def test_torchvision_dataset_missing(
    tmp_path: Path, no_network: None, name: str, looked_for: str
) -> None:
    pytest.importorskip("torchvision")
    where = re.escape(str(tmp_path))
    with pytest.raises(ValueError, match=f"{name}' not found .*in {where}.*{looked_for}") as err:
        load_dataset(name, root=tmp_path, train=True)
    assert "download=True" in str(err.value) and "root=" in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        make_loaders(name, root=tmp_path)


class FakeTorchvision:
    """Stands in for a torchvision data set class: the arrays its ``data`` attribute holds."""

    calls: list[tuple[str, object, bool]] = []

    def __init__(self, root: str, train: bool = True, split: str = "", download: bool = False):
        FakeTorchvision.calls.append((root, split or train, download))
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # CIFAR: NHWC
        self.targets = [0, 9, 2, 3]
        if split:  # SVHN: NCHW, labels array
            self.data = np.ascontiguousarray(self.data.transpose(0, 3, 1, 2))
            self.labels = np.array(self.targets)


@pytest.mark.parametrize(("name", "cls"), [("cifar10", "CIFAR10"), ("svhn", "SVHN")])
def test_torchvision_arrays_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cls: str
) -> None:
    tvd = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(tvd, cls, FakeTorchvision)
    FakeTorchvision.calls.clear()
    dataset = load_dataset(name, root=tmp_path, train=False, download=True)
    assert FakeTorchvision.calls == [(str(tmp_path), "test" if name == "svhn" else False, True)]
    x, y = stack(dataset)
    raw = FakeTorchvision(str(tmp_path), split="x").data  # NCHW
    info = dataset_info(name)
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    expected = (torch.from_numpy(raw).float() / 255 - mean) / std
    assert x.shape == (4, 3, 32, 32) and torch.allclose(x, expected, atol=1e-6)
    assert y.tolist() == [0, 9, 2, 3]


# --- the real Fashion-MNIST (Debian package) -----------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> dict[bool, Dataset[Item]]:
    return {
        train: load_dataset("fashion-mnist", train=train, augment=False) for train in (True, False)
    }


@needs_fashion_mnist
def test_fashion_mnist(fashion: dict[bool, Dataset[Item]]) -> None:
    x, y = stack(fashion[True])
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [6000] * 10
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    assert len(fashion[False]) == 10_000  # type: ignore[arg-type]
    image, label = fashion[False][0]
    assert image.shape == (1, 28, 28) and type(label) is int and 0 <= label <= 9
    assert label == 9  # the first test image is an ankle boot


@needs_fashion_mnist
def test_fashion_mnist_augmentation(fashion: dict[bool, Dataset[Item]]) -> None:
    torch.manual_seed(0)
    augmented = load_dataset("fashion-mnist", train=True)
    x, _ = fashion[True][11]
    candidates = shifts(x, dataset_info("fashion-mnist"), pad=2, flip=True)
    draws = [augmented[11][0] for _ in range(20)]
    assert all(any(torch.allclose(a, c) for c in candidates) for a in draws)
    assert sum(not torch.equal(a, x) for a in draws) > 10
    test = fashion[False]
    assert torch.equal(test[3][0], test[3][0])


@needs_fashion_mnist
def test_fashion_mnist_loaders() -> None:
    train, test, info = make_loaders("fashion-mnist", train_subset=1000, test_subset=300)
    assert info.image_size == 28
    images, labels = next(iter(train))
    assert images.shape == (128, 1, 28, 28) and labels.shape == (128,)
    assert sum(len(b[1]) for b in test) == 300
