"""Static facts about the supported data sets: classes, channels, size, normalization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..core.registry import Registry

__all__ = [
    "DATASETS",
    "PYTHON_OPTION_NAMES",
    "DatasetInfo",
    "dataset_info",
    "default_root",
    "import_torchvision_datasets",
    "list_datasets",
    "option_spelling",
]


#: how error messages spell the ``root`` and ``download`` arguments; the CLI passes its flags
PYTHON_OPTION_NAMES: Mapping[str, str] = {"root": "root=DIR", "download": "download=True"}


def option_spelling(option_names: Mapping[str, str] | None) -> dict[str, str]:
    """:data:`PYTHON_OPTION_NAMES` updated with ``option_names`` (``TypeError``: no mapping)."""
    if option_names is None:
        return dict(PYTHON_OPTION_NAMES)
    if not isinstance(option_names, Mapping) or not all(
        isinstance(v, str) for v in option_names.values()
    ):
        raise TypeError(f"option_names must map 'root'/'download' to strings, got {option_names!r}")
    unknown = sorted(set(option_names) - set(PYTHON_OPTION_NAMES))
    if unknown:
        raise ValueError(f"option_names has unknown keys {unknown}; known: root, download")
    return {**PYTHON_OPTION_NAMES, **option_names}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training script need to know about one data set.

    ``mean`` and ``std`` are per channel, for pixels scaled to ``[0, 1]``; the loaders
    of this package already apply them. ``train_size``/``test_size`` are the sizes of
    the full splits.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


#: the supported data sets by exact name (``"CIFAR10"`` is unknown)
DATASETS: Registry[DatasetInfo] = Registry("dataset", fold_case=False)
for _info in (
    # mean/std of the 1437-image train split below, pixels divided by 16
    DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3761,), 1437, 360),
    DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), 60_000, 10_000),
    DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50_000, 10_000
    ),
    DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50_000, 10_000
    ),
    DatasetInfo(
        "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 73_257, 26_032
    ),
):
    DATASETS.register(_info.name, _info)
del _info


def list_datasets() -> list[str]:
    """Names accepted by :func:`dataset_info`, :func:`load_dataset` and :func:`make_loaders`."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no such data set; the message lists the known names.
    """
    return DATASETS.get(name)


def default_root() -> Path:
    """Where downloads go and torchvision data sets are looked for when ``root`` is None."""
    return Path("~/.cache/cpmc_plugin/datasets").expanduser()


def import_torchvision_datasets(what: str) -> ModuleType:
    """``torchvision.datasets``, imported only when needed; ``ValueError`` if missing."""
    try:
        import torchvision.datasets
    except ImportError as e:
        raise ValueError(f"{what} needs torchvision: pip install torchvision ({e})") from None
    return torchvision.datasets
