"""``cpmc-prune``: train, prune to a FLOPs budget, fine-tune, evaluate, report; or the demo.

Every command reads and writes :class:`~cpmc_plugin.cli.checkpoint.Checkpoint` files.
A bad argument, a missing or corrupt checkpoint, or an output that exists already
gives a one-line error and exit code 2; no file is written then.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers
from ..criteria import CRITERIA, make_importance, needs_gradients
from ..data import list_datasets, make_loaders
from ..models import create_model, list_models
from ..presets import list_presets
from ..pruner import CPMCPruner
from ..sparse import SPARSE_METHODS, SparseRegularizer, make_regularizer
from . import report as reporting
from .checkpoint import Checkpoint
from .training import Distributed, accuracy, distributed, fit

__all__ = ["main"]


# ---------------------------------------------------------------------- argument types
def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


# ---------------------------------------------------------------------- helpers
def family_of(model_name: str) -> str | None:
    """The CPMC preset family of a model name ("resnet", "vgg", "densenet"), if it has one."""
    name = model_name.lower().removeprefix("tv:")
    return next((family for family in list_presets() if name.startswith(family)), None)


def _fresh_output(path: Path, force: bool, resume: bool = False) -> None:
    if path.exists() and not (force or resume):
        raise ValueError(f"{path} exists; pass --force to overwrite it")


def _loaders(ckpt: Checkpoint, args: argparse.Namespace, env: Distributed) -> tuple[Any, Any]:
    train, test, _ = make_loaders(
        ckpt.dataset,
        args.data_root,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        seed=args.seed,
        distributed=env.world_size > 1,
    )
    return train, test


def _counts(model: nn.Module, ckpt: Checkpoint) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, ckpt.example_inputs)
    return int(macs), int(params)


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


def _train_run(
    model: nn.Module, ckpt: Checkpoint, args: argparse.Namespace, kind: str, out: Path
) -> Checkpoint:
    """Train or fine-tune ``model``, saving a resumable checkpoint after every epoch."""
    env = distributed()
    torch.manual_seed(args.seed)
    train, test = _loaders(ckpt, args, env)
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
        macs, params = _counts(model, ckpt)
        key = "baseline" if kind == "train" else "finetuned"
        result.metrics[key] = {"accuracy": acc, "macs": macs, "params": params}
        result.save(out)
        print(f"{kind}: accuracy {acc:.2%}, {params:,} params, {macs:,} MACs -> {out}")
    return result


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _fresh_output(out, args.force, args.resume)
    _, _, info = make_loaders(args.dataset, args.data_root, batch_size=args.batch_size)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    model = create_model(args.model, **kwargs)
    ckpt = Checkpoint(args.model.lower(), kwargs, args.dataset, info.image_size, model.state_dict())
    _train_run(model, ckpt, args, "train", out)


def cmd_finetune(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _fresh_output(out, args.force, args.resume)
    ckpt = Checkpoint.load(args.checkpoint)
    _train_run(ckpt.build(), ckpt, args, "finetune", out)


def prune_model(
    model: nn.Module,
    ckpt: Checkpoint,
    criterion: str,
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    preset: str | None = None,
    steps: int = 1,
    grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> CPMCPruner:
    """Prune ``model`` in place with ``criterion`` to the budget; return the pruner."""
    options = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
    x = ckpt.example_inputs
    importance = make_importance(criterion, x, family=preset, **options)
    if needs_gradients(criterion) and grad_batch is None:
        raise ValueError(f"criterion {criterion!r} needs a batch to compute gradients")
    classifier = getattr(model, "classifier", None)
    pruner = CPMCPruner(
        model,
        x,
        importance=importance,
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        iterative_steps=steps,
        ignored_layers=[classifier] if isinstance(classifier, nn.Module) else None,
    )
    if needs_gradients(criterion):
        for _ in range(steps):  # gradients of the current shapes before every step
            model.zero_grad()
            assert grad_batch is not None
            F.cross_entropy(model(grad_batch[0]), grad_batch[1]).backward()
            pruner.step()
        model.zero_grad()
    else:
        pruner.prune()
    return pruner


def cmd_prune(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _fresh_output(out, args.force)
    if args.preset and not args.criterion.startswith("cpmc"):
        raise ValueError(f"--preset is for the cpmc criteria, not {args.criterion!r}")
    ckpt = Checkpoint.load(args.checkpoint)
    model = ckpt.build().eval()
    train, test = _loaders(ckpt, args, distributed())
    batch = next(iter(train)) if needs_gradients(args.criterion) else None
    pruner = prune_model(
        model,
        ckpt,
        args.criterion,
        flops_reduction=args.flops_reduction,
        params_reduction=args.params_reduction,
        alpha=args.alpha,
        beta=args.beta,
        preset=args.preset,
        steps=args.steps,
        grad_batch=batch,
    )
    report = pruner.report()
    acc = accuracy(model, test, torch.device("cpu"))
    result = Checkpoint.of(
        model,
        like=ckpt,
        history=[*ckpt.pruning_history, *pruner.pruning_history()],
        metrics={
            "pruned": {
                "accuracy": acc,
                "macs": report.macs_after,
                "params": report.params_after,
                "criterion": args.criterion,
            }
        },
    )
    result.save(out)
    print(
        f"pruned with {args.criterion}: MACs -{report.macs_reduction:.2%}, params "
        f"-{report.params_reduction:.2%}, accuracy without fine-tuning {acc:.2%} -> {out}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    ckpt = Checkpoint.load(args.checkpoint)
    model = ckpt.build()
    _, test = _loaders(ckpt, args, distributed())
    acc = accuracy(model, test, torch.device("cpu"))
    macs, params = _counts(model, ckpt)
    print(
        f"{ckpt.model_name} on {ckpt.dataset}: accuracy {acc:.2%}, {params:,} params, {macs:,} MACs"
    )


def cmd_report(args: argparse.Namespace) -> None:
    baseline, final = Checkpoint.load(args.baseline), Checkpoint.load(args.checkpoint)
    if (baseline.model_name, baseline.dataset) != (final.model_name, final.dataset):
        raise ValueError(
            f"--baseline is a {baseline.model_name} on {baseline.dataset}, the checkpoint a "
            f"{final.model_name} on {final.dataset}: report needs the same model and data"
        )
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} is not empty; pass --force to write into it")
    train, test = _loaders(baseline, args, distributed())
    files = reporting.write_report(
        baseline,
        final,
        out,
        train=train,
        test=test,
        criteria=args.criteria,
        rates=args.rates,
        prune=prune_model,
    )
    print(reporting.table(files["summary"]))
    print(f"report written to {out}: " + ", ".join(sorted(p.name for p in files["paths"])))


def cmd_demo(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} is not empty; pass --force to write into it")
    started = time.time()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    data = ["--batch-size", "64", "--seed", "0"]
    if args.train_subset:
        data += ["--train-subset", str(args.train_subset)]
    base, pruned, final = (str(out / f) for f in ("baseline.pt", "pruned.pt", "finetuned.pt"))
    family = family_of(args.model)
    preset = ["--preset", family] if family else []
    train = ["--model", args.model, "--dataset", args.dataset, "--epochs", str(args.epochs)]
    prune = ["--criterion", "cpmc", "--flops-reduction", "0.5", *preset]
    curve = ["--criteria", "cpmc", "l1", "random", "--rates", "0.3", "0.5", "0.7"]
    steps = [
        ["train", *train, "--lr", "0.1", "--out", base],
        ["prune", "--checkpoint", base, *prune, "--out", pruned],
        ["finetune", "--checkpoint", pruned, "--epochs", str(args.finetune_epochs),
         "--lr", "0.02", "--out", final],
        ["report", "--baseline", base, "--checkpoint", final, "--out-dir", str(out / "report"),
         *curve],
    ]  # fmt: skip
    parser = build_parser()
    for argv in steps:  # the same commands a user would type
        print(f"== cpmc-prune {argv[0]}")
        step = parser.parse_args([*argv, *data, "--force"])
        COMMANDS[step.command](step)
    print(f"demo finished in {time.time() - started:.0f} s; files in {out.resolve()}")


COMMANDS = {
    "train": cmd_train,
    "prune": cmd_prune,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "demo": cmd_demo,
}


# ---------------------------------------------------------------------- parser
def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="data set directory (see cpmc_plugin.data)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        help="train on this many images (a seeded subset)",
    )
    p.add_argument("--seed", type=int, default=0)


def unit_interval(text: str) -> float:
    value = non_negative(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _sparse_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sparse training (before pruning)")
    g.add_argument(
        "--sparse",
        choices=SPARSE_METHODS,
        type=str.lower,
        default=None,
        help="train with this sparsity regularizer (proximal steps, exact zeros)",
    )
    g.add_argument(
        "--lam",
        type=non_negative,
        default=None,
        help="strength of oicsr, bn-fista, ssr-l21 (default 1e-4)",
    )
    g.add_argument("--rho", type=non_negative, default=None, help="SSR's rho (default 1e-3)")
    g.add_argument(
        "--keep", type=unit_interval, default=None, help="ssr-l20: fraction of channel groups kept"
    )
    g.add_argument(
        "--update-every",
        type=positive_int,
        default=1,
        help="SSR: training steps between Z/U updates",
    )
    g.add_argument(
        "--fista-momentum",
        type=non_negative,
        default=None,
        help="bn-fista: fixed extrapolation in [0, 1) (default: FISTA's sequence)",
    )
    g.add_argument(
        "--aux-at",
        nargs="+",
        default=None,
        metavar="MODULE",
        help="auxiliary classifiers on these modules while training",
    )
    g.add_argument(
        "--aux-weight", type=non_negative, default=0.3, help="weight of each auxiliary loss"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpmc-prune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from scratch")
    p.add_argument("--model", required=True, choices=list_models(), type=str.lower)
    p.add_argument("--dataset", default="digits", choices=list_datasets())
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--lr", type=non_negative, default=0.1)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run at --out")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)
    _sparse_options(p)

    p = sub.add_parser("prune", help="prune a checkpoint to a FLOPs or parameter budget")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--criterion", default="cpmc", choices=CRITERIA, type=str.lower)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--flops-reduction", type=fraction, default=None)
    budget.add_argument("--params-reduction", type=fraction, default=None)
    p.add_argument("--alpha", type=non_negative, default=None)
    p.add_argument("--beta", type=non_negative, default=None)
    p.add_argument("--preset", choices=list_presets(), default=None)
    p.add_argument("--steps", type=positive_int, default=1, help="iterative steps")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")
    _data_options(p)

    p = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--epochs", type=positive_int, default=5)
    p.add_argument("--lr", type=non_negative, default=0.01)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true")
    _data_options(p)
    _sparse_options(p)

    p = sub.add_parser("evaluate", help="accuracy, parameters and MACs of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    _data_options(p)

    p = sub.add_parser("report", help="table, JSON and plots: baseline vs final checkpoint")
    p.add_argument("--baseline", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=["cpmc", "l1", "random"])
    p.add_argument("--rates", nargs="+", type=fraction, default=[0.3, 0.5, 0.7])
    p.add_argument("--force", action="store_true")
    _data_options(p)

    p = sub.add_parser("demo", help="the whole story offline: train, prune, fine-tune, report")
    p.add_argument("--out-dir", default="cpmc-demo")
    p.add_argument("--model", default="resnet20", choices=list_models())
    p.add_argument("--dataset", default="digits", choices=list_datasets())
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--finetune-epochs", type=positive_int, default=4)
    p.add_argument("--train-subset", type=positive_int, default=None)
    p.add_argument("--force", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cpmc-prune``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"cpmc-prune {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
