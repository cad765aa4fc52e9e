"""``cpmc-prune`` checkpoints: weights, pruning history and metadata, ``weights_only``-safe.

A checkpoint names its architecture (a :mod:`cpmc_plugin.models` name and its
keyword arguments) and dataset, holds the state dict and torch-pruning's pruning
history (empty for an unpruned model), the metrics measured so far, and, while
training, the optimizer/scheduler state and the next epoch so that training
resumes where it stopped. Files are written atomically: a failed run leaves the
previous file as it was.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..models import create_model
from ..torch_pruning.history import plain_history, replay_history

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
            pruning_history=plain_history(like.pruning_history if history is None else history),
            metrics={**like.metrics, **(metrics or {})},
            training=training,
        )

    def build(self) -> nn.Module:
        """The model: the architecture, pruned as recorded, with the saved weights."""
        model = create_model(self.model_name, **self.model_kwargs)
        replay_history(model, self.pruning_history, self.example_inputs)
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
        """Read a checkpoint with ``torch.load(weights_only=True)``.

        Raises:
            ValueError: saying in words what is wrong: no such path, a directory, an
                empty or truncated file, a file that is not a ``torch.save`` archive, or
                one that ``torch.save`` wrote but not ``cpmc-prune``.
        """
        source = Path(path)
        _check_readable(source)
        try:
            data = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            detail = _weights_only_detail(error)
            raise ValueError(
                f"checkpoint {source} is not a checkpoint written by cpmc-prune: it holds "
                f"objects that safe loading (weights_only=True) refuses ({detail})"
            ) from None
        except Exception as error:  # torch.load's own reasons, named by their type
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"checkpoint {source} could not be read: {type(error).__name__}"
                + (f": {first}" if first else "")
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{source} is not a cpmc-prune checkpoint: torch.save wrote it, but it is not "
                f"format {FORMAT!r} (found {found!r})"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"checkpoint {source} is incomplete: it has no {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in fields})


_ZIP_MAGIC = b"PK\x03\x04"


def _check_readable(source: Path) -> None:
    """``ValueError`` in words when ``source`` cannot be a checkpoint file at all."""
    if source.is_dir():
        raise ValueError(
            f"checkpoint {source} is a directory; expected a checkpoint file written by "
            "cpmc-prune (such as base.pt)"
        )
    if not source.exists():
        raise ValueError(f"checkpoint {source} does not exist")
    if not source.is_file():
        raise ValueError(f"checkpoint {source} is not a regular file")
    size = source.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {source} is empty (0 bytes): not a checkpoint")
    with source.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise ValueError(
            f"checkpoint {source} is not a checkpoint written by cpmc-prune: it is not a "
            f"torch.save archive (a zip file), its first bytes are {head!r}"
        )
    try:
        with zipfile.ZipFile(source) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        raise ValueError(
            f"checkpoint {source} is truncated: a torch.save archive whose end (the zip "
            f"directory) is missing after {size:,} bytes, as an interrupted copy leaves it; "
            "copy or write it again"
        ) from None
    if damaged is not None:
        raise ValueError(
            f"checkpoint {source} is damaged: the checksum of {damaged!r} in the archive "
            "does not match; write it again"
        )


def _weights_only_detail(error: BaseException) -> str:
    """The reason torch's safe unpickler gives, without its advice to load unsafely."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()
        if reason:
            return reason[0].strip().split(". Please use", 1)[0]
    return type(error).__name__
