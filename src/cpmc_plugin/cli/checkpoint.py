"""``cpmc-prune`` checkpoints: weights, pruning history and metadata, ``weights_only``-safe.

A checkpoint names its architecture (a :mod:`cpmc_plugin.models` name and its
keyword arguments) and dataset, holds the state dict and torch-pruning's pruning
history (empty for an unpruned model), the metrics measured so far, and, while
training, the optimizer/scheduler state and the next epoch so that training
resumes where it stopped. Files are written atomically: a failed run leaves the
previous file as it was.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ..io import _plain_history
from ..models import create_model

__all__ = ["FORMAT", "Checkpoint", "example_inputs_for"]

FORMAT = "cpmc-prune/checkpoint/v1"


def example_inputs_for(in_channels: int, image_size: int) -> torch.Tensor:
    """The one-image input that traces and counts a model of this data set."""
    return torch.zeros(1, in_channels, image_size, image_size)


@dataclass
class Checkpoint:
    """What ``cpmc-prune`` passes from one command to the next."""

    model_name: str
    model_kwargs: dict[str, int]
    dataset: str
    image_size: int
    state_dict: dict[str, torch.Tensor]
    pruning_history: list[list[Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None  # optimizer, scheduler, next epoch, total epochs

    @property
    def example_inputs(self) -> torch.Tensor:
        return example_inputs_for(self.model_kwargs["in_channels"], self.image_size)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        *,
        like: Checkpoint,
        history: list[Any] | None = None,
        metrics: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """A checkpoint of ``model`` with ``like``'s architecture and data set."""
        return cls(
            model_name=like.model_name,
            model_kwargs=dict(like.model_kwargs),
            dataset=like.dataset,
            image_size=like.image_size,
            state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            pruning_history=_plain_history(like.pruning_history if history is None else history),
            metrics={**like.metrics, **(metrics or {})},
            training=training,
        )

    def build(self) -> nn.Module:
        """The model: the architecture, pruned as recorded, with the saved weights."""
        model = create_model(self.model_name, **self.model_kwargs)
        if self.pruning_history:
            graph = tp.DependencyGraph().build_dependency(model, self.example_inputs)
            graph.load_pruning_history(copy.deepcopy(self.pruning_history))
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                f"the checkpoint's weights do not fit a {self.model_name}: {first}"
            ) from None
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: the old file stays until the new one is complete."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "dataset": self.dataset,
            "image_size": self.image_size,
            "state_dict": self.state_dict,
            "pruning_history": self.pruning_history,
            "metrics": self.metrics,
            "training": self.training,
        }
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
        os.close(handle)
        try:
            torch.save(data, temporary)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read a checkpoint with ``torch.load(weights_only=True)``; clear errors otherwise."""
        source = Path(path)
        if not source.is_file():
            raise ValueError(f"checkpoint {source} does not exist")
        try:
            data = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise ValueError(f"checkpoint {source} is corrupt or unreadable ({first})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a cpmc-prune checkpoint (format {FORMAT!r})")
        return cls(**{k: v for k, v in data.items() if k != "format"})
