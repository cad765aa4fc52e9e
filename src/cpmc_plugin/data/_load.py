"""In-memory image data sets with light augmentation, and their train/test loaders."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..core.validate import flag, integer, optional_integer
from ._idx import fashion_mnist_arrays
from ._info import (
    DatasetInfo,
    dataset_info,
    default_root,
    import_torchvision_datasets,
    option_spelling,
)

__all__ = ["load_dataset", "make_loaders", "seed_worker"]

# training augmentation: (random-crop padding in pixels, random horizontal flip)
_AUGMENT: dict[str, tuple[int, bool]] = {
    "digits": (1, False),  # a light random shift of up to 1 pixel; digits are not mirror-safe
    "fashion-mnist": (2, True),
    "cifar10": (4, True),
    "cifar100": (4, True),
    "svhn": (4, False),  # house numbers are not mirror-safe either
}

# the folder (or files) torchvision expects under root
_TV_LAYOUT = {
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "svhn": "train_32x32.mat / test_32x32.mat",
}

_Item = tuple[Tensor, int]


class _ImageTensorDataset(Dataset[_Item]):
    """uint8 images ``[N, C, H, W]`` held in memory; each item is augmented (random crop
    after zero padding, random horizontal flip), scaled to ``[0, 1]`` and normalized.

    Augmentation draws from torch's global RNG (seeded per worker by the DataLoader).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        scale: float,
        info: DatasetInfo,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        self.images, self.labels, self.scale = images, labels, scale
        self.pad, self.flip = pad, flip
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> _Item:
        image = self.images[index]
        if self.pad:
            p = self.pad
            h, w = image.shape[-2:]
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            image = F.pad(image, (p, p, p, p))[:, top : top + h, left : left + w]
        if self.flip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
        x = image.to(torch.float32).div_(self.scale).sub_(self.mean).div_(self.std)
        return x, int(self.labels[index])


def _digits_arrays(train: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ValueError(
            f"the 'digits' dataset needs scikit-learn: pip install scikit-learn ({e})"
        ) from None
    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=360, random_state=0, stratify=labels
    )
    idx = train_idx if train else test_idx
    return bunch.images[idx, None].astype(np.uint8), labels[idx]  # pixels 0..16


def _torchvision_arrays(
    name: str,
    root: str | os.PathLike[str] | None,
    train: bool,
    download: bool,
    spell: Mapping[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    tvd = import_torchvision_datasets(f"dataset {name!r}")
    base = Path(root).expanduser() if root is not None else default_root()
    try:
        if name == "svhn":
            svhn = tvd.SVHN(str(base), split="train" if train else "test", download=download)
            return np.asarray(svhn.data), np.asarray(svhn.labels, dtype=np.int64)
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        cifar = cls(str(base), train=train, download=download)
        # NHWC -> NCHW
        return np.asarray(cifar.data).transpose(0, 3, 1, 2), np.asarray(cifar.targets, np.int64)
    except ImportError as e:  # SVHN reads .mat files with scipy
        raise ValueError(
            f"dataset {name!r} needs {e.name or 'scipy'}: pip install {e.name or 'scipy'}"
        ) from e
    except (OSError, RuntimeError) as e:
        if download:
            raise ValueError(f"could not download {name!r} into {base}: {e}") from e
        # torchvision's RuntimeError only says "not found or corrupted" and names its own
        # Python argument; an OSError (permissions, a bad file) says something new
        detail = f" ({type(e).__name__}: {e})" if isinstance(e, OSError) else ""
        raise ValueError(
            f"dataset {name!r} not found (or corrupt) in {base}: torchvision looked for "
            f"{_TV_LAYOUT[name]} there. Pass {spell['download']} on a machine with network "
            f"access, or {spell['root']} pointing to an existing torchvision {name} "
            f"directory{detail}"
        ) from e


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool,
    download: bool = False,
    augment: bool | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Dataset[_Item]:
    """One split of a data set: items are ``(float32 image [C, H, W] normalized, int label)``.

    Args:
        name: one of :func:`list_datasets`.
        root: where the files are. ``digits`` ships with scikit-learn and ignores it.
            ``fashion-mnist``: a directory holding the four idx ``.gz`` files (or a
            torchvision ``FashionMNIST`` root); default: Debian's
            ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
            ``cifar10``/``cifar100``/``svhn``: a torchvision root; default
            ``~/.cache/cpmc_plugin/datasets``.
        train: the training split if True, else the test split.
        download: let torchvision download missing files (needs network).
        augment: random crop after zero padding (digits 1 px, fashion-mnist 2 px,
            cifar/svhn 4 px) plus a horizontal flip (fashion-mnist, cifar). Default: ``train``.
        option_names: how error messages tell the user to set ``root`` and ``download``
            (keys ``"root"``, ``"download"``); default
            :data:`~cpmc_plugin.data.PYTHON_OPTION_NAMES`, the
            ``cpmc-prune`` command passes its ``--data-root``/``--download`` flags.

    The whole split is kept in memory as uint8 (47 MB for Fashion-MNIST's training split).
    """
    info = dataset_info(name)
    flag("train", train)
    flag("download", download)
    spell = option_spelling(option_names)
    augment = train if augment is None else flag("augment", augment)

    if name == "digits":
        images, labels, scale = *_digits_arrays(train), 16.0
    elif name == "fashion-mnist":
        images, labels = fashion_mnist_arrays(root, train, download, default_root(), spell)
        images, scale = images[:, None], 255.0
    else:
        images, labels, scale = *_torchvision_arrays(name, root, train, download, spell), 255.0
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {info.num_classes}), "
            f"found {labels.min()}..{labels.max()}"
        )
    pad, flip = _AUGMENT[name] if augment else (0, False)
    return _ImageTensorDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.from_numpy(labels),
        scale=scale,
        info=info,
        pad=pad,
        flip=flip,
    )


def _subset(dataset: Dataset[_Item], size: int | None, seed: int, arg: str) -> Dataset[_Item]:
    """``size`` items drawn without replacement (seeded), in their original order."""
    if size is None:
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    if size > n:
        raise ValueError(f"{arg}={size} is larger than the split ({n} items)")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the loaders: seed Python's and NumPy's generators per worker.

    The DataLoader seeds torch in each worker from its own ``generator`` (so the
    augmentation, which draws from torch, is reproducible); this gives the other two
    generators the same per-worker seed, for transforms that use them.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loaders(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    download: bool = False,
    augment: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    distributed: bool = False,
    option_names: Mapping[str, str] | None = None,
) -> tuple[DataLoader[_Item], DataLoader[_Item], DatasetInfo]:
    """``(train_loader, test_loader, info)`` of a data set (see :func:`load_dataset`).

    The train loader shuffles (seeded by ``seed``) and augments if ``augment``; the test
    loader neither. ``train_subset``/``test_subset`` keep that many items, a random
    (``seed``-determined, not stratified) subset, for quick runs. With
    ``distributed=True`` (``torch.distributed`` initialized) the train loader shards with a
    :class:`~torch.utils.data.DistributedSampler`: call
    ``train_loader.sampler.set_epoch(epoch)`` at the start of every epoch, or each epoch
    repeats the same order. The test loader is never sharded: every rank sees all of it.
    Both loaders draw their shuffling and their workers' seeds from generators seeded
    with ``seed`` (workers also run :func:`seed_worker`), never from the global one, so
    a run is reproducible and evaluating does not change what training draws next.
    ``option_names``: see :func:`load_dataset`.
    """
    info = dataset_info(name)
    integer("batch_size", batch_size, minimum=1)
    integer("num_workers", num_workers, minimum=0)
    integer("seed", seed, minimum=0)
    optional_integer("train_subset", train_subset, minimum=1)
    optional_integer("test_subset", test_subset, minimum=1)
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialized process group: call "
            "torch.distributed.init_process_group() first, or pass distributed=False"
        )
    train_set = load_dataset(
        name, root, train=True, download=download, augment=augment, option_names=option_names
    )
    test_set = load_dataset(
        name, root, train=False, download=download, augment=False, option_names=option_names
    )
    train_set = _subset(train_set, train_subset, seed, "train_subset")
    test_set = _subset(test_set, test_subset, seed, "test_subset")

    persistent = num_workers > 0
    sampler: DistributedSampler[_Item] | None = None
    if distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=not distributed,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=persistent,
        worker_init_fn=seed_worker,
    )
    test_loader = DataLoader(
        test_set,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=persistent,
        worker_init_fn=seed_worker,
    )
    return train_loader, test_loader, info
