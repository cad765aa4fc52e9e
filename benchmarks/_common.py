"""What the benchmark scripts share: run provenance, result files, their training loop.

The scripts import the installed ``cpmc_plugin`` and this module as ``from _common import
...`` (running ``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``).

Where ``cpmc_plugin.training`` does what a benchmark needs (``fit``, ``accuracy``,
``recalibrate_bn``), the benchmark calls it. :func:`train_sgd` and :func:`percent_correct`
stay here because the published figures were made with them and the package's versions
give other numbers: ``fit`` sets a hand-written cosine rate per step and has a fixed
weight decay, while these figures used torch's ``OneCycleLR``/``CosineAnnealingLR``
objects; ``accuracy`` returns ``correct / total`` (``100 * (c / t)`` is not always
``100.0 * c / t`` to the last bit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CACHE_DIR",
    "PACKAGES",
    "RESULTS",
    "ROOT",
    "Batch",
    "cached_baseline",
    "git_output",
    "git_state",
    "log",
    "percent_correct",
    "provenance",
    "relative",
    "save_atomic",
    "shuffled",
    "train_sgd",
    "with_digits_fallback",
    "write_json",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE_DIR = RESULTS / "cache"
PACKAGES = (
    "cpmc-plugin",
    "torch",
    "torchvision",
    "torch-pruning",
    "nni",
    "scikit-learn",
    "numpy",
)
SCHEDULES = ("one-cycle", "cosine")

Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


def log(message: str) -> None:
    """Print ``message`` to stderr at once (stdout carries the tables)."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- provenance
def git_output(*args: str) -> str:
    """Stdout of ``git ARGS`` in the repository, or ``""`` without git or a checkout."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """The commit, whether ``src`` differs from it, and the SHA-1 of that difference."""
    src_diff = git_output("diff", "HEAD", "--", "src")  # the code that ran: HEAD plus this
    return {
        "git_commit": git_output("rev-parse", "HEAD") or None,
        "src_dirty": bool(src_diff),
        "src_diff_sha1": hashlib.sha1(src_diff.encode()).hexdigest() if src_diff else None,
    }


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Command line, machine, thread count, package versions, git state and UTC date."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "loadavg": os.getloadavg(),
        "versions": {name: _version(name) for name in PACKAGES},
        **git_state(),
    }


# ---------------------------------------------------------------------------- result files
def relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_json(path: Path, data: Any, *, indent: int = 2, default: Any = None) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file (no half-written result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=indent, default=default) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file (a cache a killed run cannot spoil)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    torch.save(obj, tmp)
    tmp.replace(path)


def cached_baseline(
    model: nn.Module, path: Path, train: Callable[[], dict[str, Any]], *, no_cache: bool = False
) -> tuple[bool, dict[str, Any]]:
    """Load ``model``'s trained weights from ``path``, or ``train()`` it and save them there.

    ``train()`` trains ``model`` in place and returns what to keep beside its weights
    (``{"state_dict": ..., **train()}`` is saved). Returns whether the weights came from
    the file, and the kept entries.
    """
    if path.exists() and not no_cache:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        log(f"baseline loaded from {relative(path)}")
        return True, {k: v for k, v in saved.items() if k != "state_dict"}
    extra = train()
    save_atomic({"state_dict": model.state_dict(), **extra}, path)
    return False, extra


# ---------------------------------------------------------------------------- data
def with_digits_fallback(load: Callable[[str], T], name: str) -> tuple[T, str, str | None]:
    """``load(name)``; when that data set is not installed, ``load("digits")`` instead.

    Returns what ``load`` returned, the data set's name and why it fell back (or None).
    """
    try:
        return load(name), name, None
    except ValueError as error:
        if name == "digits":
            raise
        log(f"WARNING: data set {name!r} unavailable ({error}); falling back to digits")
        return load("digits"), "digits", str(error)


def shuffled(
    dataset: Dataset[Any], seed: int, *, batch_size: int = 128, workers: int = 0
) -> DataLoader[Any]:
    """A loader that shuffles ``dataset`` with its own generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers
    )


# ---------------------------------------------------------------------------- training
def train_sgd(
    model: nn.Module,
    epoch_batches: Callable[[], Iterable[Batch]],
    *,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    weight_decay: float,
    schedule: str,
    seed: int,
    log_loss: bool = False,
) -> list[float]:
    """SGD (momentum 0.9) with torch's one-cycle or cosine schedule, stepped every batch.

    Kept apart from ``cpmc_plugin.training.fit``: the published figures were trained with
    these ``torch.optim.lr_scheduler`` objects, which ``fit`` does not use.

    Args:
        model: trained in place, left in eval mode.
        epoch_batches: called once per epoch; yields that epoch's ``(images, labels)``.
        epochs: passes over the data.
        steps_per_epoch: batches per epoch (the schedule's length is ``epochs`` times it).
        lr: peak (one-cycle) or starting (cosine) learning rate.
        weight_decay: SGD weight decay.
        schedule: ``"one-cycle"`` or ``"cosine"``.
        seed: ``torch.manual_seed`` first (augmentation draws from the global RNG).
        log_loss: log each epoch's mean training loss.

    Returns:
        The mean training loss of each epoch.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * steps_per_epoch
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    losses = []
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in epoch_batches():
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * len(y), count + len(y)
        losses.append(total / max(count, 1))
        if log_loss:
            log(f"    epoch {epoch + 1}/{epochs}: train loss {losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def percent_correct(model: nn.Module, batches: Iterable[Batch]) -> float:
    """``100.0 * correct / total`` over ``batches`` (model in eval mode, on the CPU)."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total
