"""What several ``cpmc-prune`` commands share: output checks, data loaders, counts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..data import make_loaders
from ..torch_pruning.cost.counting import count_ops_and_params
from ..training import Distributed
from .checkpoint import Checkpoint

__all__ = [
    "CLI_OPTION_NAMES",
    "DEFAULT_FLOPS_REDUCTION",
    "counts",
    "fresh_directory",
    "fresh_output",
    "loaders",
]

#: the budget of ``prune`` when neither --flops-reduction nor --params-reduction is given
DEFAULT_FLOPS_REDUCTION = 0.5
#: how data-set errors name the data options: the CLI's flags, not Python's arguments
CLI_OPTION_NAMES = {"root": "--data-root DIR", "download": "--download"}


def fresh_output(path: Path, force: bool, resume: bool = False) -> None:
    """``ValueError`` unless ``path`` may be written: not a directory, new (or forced/resumed)."""
    if path.is_dir():
        raise ValueError(
            f"--out {path} is a directory; expected the path of a checkpoint file "
            f"(such as {path / 'model.pt'})"
        )
    if path.exists() and not (force or resume):
        raise ValueError(f"{path} exists; pass --force to overwrite it")


def fresh_directory(path: Path, force: bool) -> None:
    """``ValueError`` unless ``path`` is a new or empty directory (or ``force``)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out-dir {path} is a file; expected a directory")
    if path.exists() and any(path.iterdir()) and not force:
        raise ValueError(f"{path} is not empty; pass --force to write into it")


def loaders(ckpt: Checkpoint, args: argparse.Namespace, env: Distributed) -> tuple[Any, Any]:
    """The training and test loaders of ``ckpt``'s data set, as the data options say."""
    train, test, _ = make_loaders(
        ckpt.dataset,
        args.data_root,
        batch_size=args.batch_size,
        download=args.download,
        train_subset=args.train_subset,
        seed=args.seed,
        distributed=env.world_size > 1,
        option_names=CLI_OPTION_NAMES,
    )
    return train, test


def counts(model: nn.Module, ckpt: Checkpoint) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` on ``ckpt``'s example input."""
    macs, params = count_ops_and_params(model, ckpt.example_inputs)
    return int(macs), int(params)
