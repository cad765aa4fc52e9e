"""Training, fine-tuning and evaluation loops of ``cpmc-prune``; one device or ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the loops run as ``DistributedDataParallel``
(gloo on the CPU, nccl on GPUs), each rank reading its shard of the training set;
rank 0 evaluates and writes checkpoints. The learning rate follows a cosine curve
computed from the step number, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .core.batchnorm import recalibrate_bn
from .sparse.auxiliary import combined_loss
from .sparse.protocol import SparseRegularizer

__all__ = ["Distributed", "accuracy", "distributed", "fit", "recalibrate_bn"]


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed() -> Distributed:
    """Join the ``torchrun`` process group when there is one (else a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Distributed(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Distributed(rank, world, torch.device("cuda", local))
    return Distributed(rank, world, torch.device("cpu"))


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def fit(
    model: nn.Module,
    loader: DataLoader[Any],
    *,
    epochs: int,
    lr: float,
    env: Distributed,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    desc: str = "train",
    sparsity: SparseRegularizer | None = None,
    aux_weight: float = 0.3,
    after_backward: Callable[[], None] | None = None,
) -> int:
    """SGD (momentum 0.9, weight decay 5e-4) with a cosine learning rate, in place.

    ``on_epoch_end(epoch, optimizer_state)`` runs on rank 0 after every epoch (to save
    a resumable checkpoint); ``start_epoch``/``optimizer_state`` resume a run. With
    ``sparsity``, every step ends with ``sparsity.proximal_step(lr)`` and the last epoch
    with ``sparsity.finalize()``; a model wrapped by
    :func:`~cpmc_plugin.attach_auxiliary_classifiers` trains on :func:`combined_loss`.
    ``after_backward()`` runs between ``backward()`` and ``optimizer.step()`` (e.g. a
    torch-pruning pruner's ``regularize``).
    Returns the number of groups at zero after the last proximal step (0 without
    ``sparsity``).
    """
    model.to(env.device)
    wrapped: nn.Module = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    total = epochs * len(loader)
    zeros = 0
    for epoch in range(start_epoch, epochs):
        set_epoch = getattr(loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        wrapped.train()
        bar = tqdm(
            loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not env.is_main, leave=False
        )
        for i, (images, labels) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, epoch * len(loader) + i, total)
            optimizer.zero_grad()
            outputs = wrapped(images.to(env.device))
            loss = combined_loss(outputs, labels.to(env.device), aux_weight=aux_weight)
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            step_lr = optimizer.param_groups[0]["lr"]
            if sparsity is not None and step_lr > 0:
                zeros = sparsity.proximal_step(step_lr)
            bar.set_postfix(loss=f"{loss.item():.3f}", **({"zero": zeros} if sparsity else {}))
        if sparsity is not None and epoch == epochs - 1:
            sparsity.finalize()
        if env.is_main and on_epoch_end is not None:
            on_epoch_end(epoch, optimizer.state_dict())
    model.to("cpu")
    return zeros


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> float:
    """Top-1 accuracy on ``loader``."""
    model.to(device).eval()
    correct = total = 0
    for images, labels in tqdm(loader, desc="evaluate", leave=False, disable=len(loader) < 50):
        correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
        total += len(labels)
    model.to("cpu")
    return correct / max(total, 1)
