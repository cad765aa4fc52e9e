"""The training run of ``cpmc-prune train`` / ``finetune``: sparse setup, resumable checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..sparse.auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers
from ..sparse.factory import make_regularizer
from ..sparse.protocol import SparseRegularizer
from ..training import accuracy, distributed, fit
from ._common import counts, loaders
from .checkpoint import Checkpoint

__all__ = ["run_training"]


def _sparse_setup(
    model: nn.Module, ckpt: Checkpoint, args: argparse.Namespace
) -> tuple[nn.Module, SparseRegularizer | None]:
    """The module to train (with auxiliary classifiers when asked) and the regularizer."""
    wanted = args.sparse is not None or args.aux_at
    if wanted and args.resume:
        raise ValueError(
            "--resume does not restore the state of --sparse / --aux-at training; "
            "start the run again without --resume"
        )
    ssr = {"rho": args.rho, "keep": args.keep}
    if args.sparse is None:
        options = {"lam": args.lam, "fista-momentum": args.fista_momentum, **ssr}
        given = [f"--{k}" for k, v in options.items() if v is not None]
        if args.update_every != 1:
            given.append("--update-every")
        if given:
            raise ValueError(f"{', '.join(given)} need --sparse")
        regularizer = None
    else:
        classifier = getattr(model, "classifier", None)
        regularizer = make_regularizer(
            args.sparse,
            model,
            ckpt.example_inputs,
            strength=args.lam,
            update_every=args.update_every,
            momentum=args.fista_momentum,
            ignored_layers=[classifier] if isinstance(classifier, nn.Module) else None,
            **{k: v for k, v in ssr.items() if v is not None},
        )
    trained: nn.Module = model
    if args.aux_at:
        num_classes = ckpt.model_kwargs.get("num_classes")
        if not num_classes:
            raise ValueError("--aux-at needs a checkpoint that records num_classes")
        trained = attach_auxiliary_classifiers(
            model, args.aux_at, num_classes, example_inputs=ckpt.example_inputs
        )
    return trained, regularizer


def run_training(
    model: nn.Module, ckpt: Checkpoint, args: argparse.Namespace, kind: str, out: Path
) -> Checkpoint:
    """Train or fine-tune ``model``, saving a resumable checkpoint after every epoch."""
    env = distributed()
    train, test = loaders(ckpt, args, env)
    trained, regularizer = _sparse_setup(model, ckpt, args)
    start, state = 0, None
    if args.resume and out.exists():
        previous = Checkpoint.load(out)
        if previous.training and previous.training.get("kind") == kind:
            model = previous.build()
            start, state = previous.training["next_epoch"], previous.training["optimizer"]
            print(f"resuming {kind} at epoch {start + 1} of {args.epochs} from {out}")

    def save(epoch: int, optimizer_state: dict[str, Any]) -> None:
        done = epoch + 1 >= args.epochs
        training = (
            None
            if done
            else {
                "kind": kind,
                "next_epoch": epoch + 1,
                "epochs": args.epochs,
                "optimizer": optimizer_state,
            }
        )
        Checkpoint.of(model, like=ckpt, training=training).save(out)

    zeros = fit(
        trained,
        train,
        epochs=args.epochs,
        lr=args.lr,
        env=env,
        start_epoch=start,
        optimizer_state=state,
        on_epoch_end=save,
        desc=kind,
        sparsity=regularizer,
        aux_weight=args.aux_weight,
    )
    if isinstance(trained, AuxiliaryClassifiers):
        trained.detach()
    result = Checkpoint.of(model, like=ckpt)
    if args.sparse is not None:
        result.metrics["sparse"] = {"method": args.sparse, "zero_groups": zeros}
    if env.is_main:
        if args.sparse is not None:
            print(f"sparse training ({args.sparse}): {zeros} channel groups at exact zero")
        acc = accuracy(model, test, env.device if env.world_size == 1 else torch.device("cpu"))
        macs, params = counts(model, ckpt)
        key = "baseline" if kind == "train" else "finetuned"
        result.metrics[key] = {"accuracy": acc, "macs": macs, "params": params}
        result.save(out)
        print(f"{kind}: accuracy {acc:.2%}, {params:,} params, {macs:,} MACs -> {out}")
    return result
