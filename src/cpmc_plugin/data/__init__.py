"""Image classification data sets for training and pruning experiments, ready to use.

``digits`` (scikit-learn's 8x8 digits, a fixed stratified 1437/360 split) needs no files
and no network; ``fashion-mnist`` reads the idx files of Debian's
``dataset-fashion-mnist`` package (or any directory holding them); ``cifar10``,
``cifar100`` and ``svhn`` go through torchvision. Every item is a float32 image
``[C, H, W]`` normalized with :attr:`DatasetInfo.mean`/:attr:`DatasetInfo.std`, and an
int label. Every error says what was wrong and what is allowed: an argument of the wrong
type (``batch_size=2.5``, ``download="yes"``) raises ``TypeError``, anything else a
``ValueError``.

Example:
    >>> from cpmc_plugin.data import dataset_info, load_dataset, make_loaders
    >>> train = load_dataset("digits", train=True)
    >>> image, label = train[0]
    >>> len(train), image.shape, image.dtype, isinstance(label, int)
    (1437, torch.Size([1, 8, 8]), torch.float32, True)
    >>> train_loader, test_loader, info = make_loaders("digits", batch_size=64)
    >>> images, labels = next(iter(train_loader))
    >>> images.shape, labels.shape, info.num_classes, len(test_loader.dataset)
    (torch.Size([64, 1, 8, 8]), torch.Size([64]), 10, 360)
"""

from ._idx import DEBIAN_FASHION_MNIST, read_idx
from ._info import (
    DATASETS,
    PYTHON_OPTION_NAMES,
    DatasetInfo,
    dataset_info,
    default_root,
    list_datasets,
)
from ._load import load_dataset, make_loaders, seed_worker

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "PYTHON_OPTION_NAMES",
    "DatasetInfo",
    "dataset_info",
    "default_root",
    "list_datasets",
    "load_dataset",
    "make_loaders",
    "read_idx",
    "seed_worker",
]
