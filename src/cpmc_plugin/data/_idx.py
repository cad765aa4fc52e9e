"""The idx file format (MNIST, Fashion-MNIST) and where Fashion-MNIST's files are looked for."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._info import import_torchvision_datasets, option_spelling

__all__ = ["DEBIAN_FASHION_MNIST", "fashion_mnist_arrays", "find_fashion_mnist", "read_idx"]

#: where Debian's ``dataset-fashion-mnist`` package puts the four ``.gz`` idx files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# idx type byte -> numpy dtype (multi-byte types are big-endian in the file)
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_FILES: dict[bool, tuple[str, str]] = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in the idx file ``path`` (gzip-compressed if its name ends in ``.gz``).

    Native byte order, a fresh writable array. ``ValueError`` naming the file if it cannot
    be read, its magic number is wrong, or its data is truncated or too long.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # missing, bad gzip header, truncated stream
        raise ValueError(f"cannot read idx file {path}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"corrupt idx file {path}: {len(raw)} bytes, shorter than the header")
    zero1, zero2, type_code, ndim = raw[:4]
    if zero1 or zero2 or type_code not in _DTYPES or ndim == 0:
        raise ValueError(
            f"corrupt idx file {path}: bad magic number 0x{raw[:4].hex()} (expected 0x0000TTDD "
            f"with type TT in {{{', '.join(f'{t:02x}' for t in _DTYPES)}}} and DD >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt idx file {path}: truncated in the header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(
            f"corrupt idx file {path}: truncated, shape {shape} needs {expected} bytes of data, "
            f"found {found}"
        )
    if found > expected:
        raise ValueError(f"corrupt idx file {path}: {found - expected} bytes after the data")
    array = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _find_file(directory: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        if (directory / name).is_file():
            return directory / name
    return None


def _search_dirs(root: Path) -> list[Path]:
    """``root`` itself, and the layouts torchvision's ``FashionMNIST(root)`` writes."""
    return [root, root / "FashionMNIST" / "raw", root / "raw"]


def find_fashion_mnist(dirs: list[Path], train: bool) -> tuple[Path, Path] | None:
    """(images, labels) files of the split in the first of ``dirs`` holding both, or None."""
    for directory in dirs:
        images, labels = (_find_file(directory, base) for base in _FILES[train])
        if images is not None and labels is not None:
            return images, labels
    return None


def fashion_mnist_arrays(
    root: str | os.PathLike[str] | None,
    train: bool,
    download: bool,
    default_root: Path,
    spell: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N, 28, 28]`` and int64 labels of one Fashion-MNIST split.

    Looks in ``root`` (and ``root/FashionMNIST/raw``) if given, else in
    :data:`DEBIAN_FASHION_MNIST` and ``default_root``. With ``download=True`` and no files
    found, torchvision downloads them into ``root`` (or ``default_root``). ``spell`` says
    how the error message names the ``root`` and ``download`` options.
    """
    names = option_spelling(spell)
    base = Path(root).expanduser() if root is not None else None
    if base is not None:
        dirs = _search_dirs(base)
    else:
        dirs = [DEBIAN_FASHION_MNIST, *_search_dirs(default_root)]
    files = find_fashion_mnist(dirs, train)
    if files is None and download:
        target = base if base is not None else default_root
        tvd = import_torchvision_datasets(f"fashion-mnist with {names['download']}")
        try:
            tvd.FashionMNIST(str(target), train=train, download=True)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"could not download fashion-mnist into {target}: {e}") from e
        files = find_fashion_mnist(_search_dirs(target), train)
    if files is None:
        files_wanted = ", ".join(f"{b}.gz" for b in (*_FILES[True], *_FILES[False]))
        looked = ", ".join(str(d) for d in dirs)
        raise ValueError(
            f"fashion-mnist files not found; looked in: {looked} (for {files_wanted}, or the same "
            "names without .gz). Install them with `apt-get install dataset-fashion-mnist` (into "
            f"{DEBIAN_FASHION_MNIST}), or pass {names['root']} with a directory holding the four "
            f"idx .gz files (or a torchvision FashionMNIST root), or {names['download']} with "
            "network access"
        )
    images_path, labels_path = files
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape [N, 28, 28], "
            f"got {images.dtype} {list(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: expected {len(images)} labels (one per image in {images_path}), "
            f"got shape {list(labels.shape)}"
        )
    return images, labels.astype(np.int64)
