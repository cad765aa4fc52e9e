"""``cpmc-prune``: train, prune to a FLOPs budget, fine-tune, evaluate, report; or the demo.

Every command reads and writes :class:`~cpmc_plugin.cli.checkpoint.Checkpoint` files.
A bad argument, a missing or corrupt checkpoint, or an output that exists already
gives a one-line error and exit code 2; no file is written then. Every command first
sets its thread count and seeds every generator (before the model is built or any
data drawn), and prints both in its header: the same command with the same
``--seed`` and thread count gives the same numbers on the CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.presets import DEFAULT_ALPHA, DEFAULT_BETA, list_presets
from ..data import dataset_info, list_datasets, make_loaders
from ..models import create_model, list_models
from ..sparse.auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers
from ..sparse.factory import SPARSE_METHODS, make_regularizer
from ..sparse.protocol import SparseRegularizer
from ..torch_pruning.counting import count_ops_and_params
from ..torch_pruning.criteria import CRITERIA, needs_gradients
from ..torch_pruning.pruner import CPMCPruner
from ..training import Distributed, accuracy, distributed, fit
from . import report as reporting
from .checkpoint import Checkpoint
from .settings import (
    DEMO_MAX_THREADS,
    CriterionSettings,
    describe_threads,
    resolve_threads,
    seed_everything,
)

__all__ = ["DEFAULT_FLOPS_REDUCTION", "HelpFormatter", "build_parser", "main", "prune_model"]

#: the budget of ``prune`` when neither --flops-reduction nor --params-reduction is given
DEFAULT_FLOPS_REDUCTION = 0.5
#: how data-set errors name the data options: the CLI's flags, not Python's arguments
CLI_OPTION_NAMES = {"root": "--data-root DIR", "download": "--download"}


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


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
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
    if path.is_dir():
        raise ValueError(
            f"--out {path} is a directory; expected the path of a checkpoint file "
            f"(such as {path / 'model.pt'})"
        )
    if path.exists() and not (force or resume):
        raise ValueError(f"{path} exists; pass --force to overwrite it")


def _fresh_directory(path: Path, force: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out-dir {path} is a file; expected a directory")
    if path.exists() and any(path.iterdir()) and not force:
        raise ValueError(f"{path} is not empty; pass --force to write into it")


def _loaders(ckpt: Checkpoint, args: argparse.Namespace, env: Distributed) -> tuple[Any, Any]:
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


def _counts(model: nn.Module, ckpt: Checkpoint) -> tuple[int, int]:
    macs, params = count_ops_and_params(model, ckpt.example_inputs)
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
    info = dataset_info(args.dataset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    model = create_model(args.model, **kwargs)  # after seed_everything: the same weights
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
    settings: CriterionSettings,
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    steps: int = 1,
    grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> CPMCPruner:
    """Prune ``model`` in place with the criterion of ``settings`` to the budget."""
    x = ckpt.example_inputs
    importance = settings.importance(x)
    if needs_gradients(settings.criterion) and grad_batch is None:
        raise ValueError(f"criterion {settings.criterion!r} needs a batch to compute gradients")
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
    if needs_gradients(settings.criterion):
        for _ in range(steps):  # gradients of the current shapes before every step
            model.zero_grad()
            assert grad_batch is not None
            F.cross_entropy(model(grad_batch[0]), grad_batch[1]).backward()
            pruner.step()
        model.zero_grad()
    else:
        pruner.prune()
    return pruner


def _budget(args: argparse.Namespace) -> tuple[dict[str, float], bool]:
    """``({'flops_reduction': 0.5}, True)``: the budget, and whether it is the default."""
    if args.params_reduction is not None:
        return {"params_reduction": args.params_reduction}, False
    if args.flops_reduction is not None:
        return {"flops_reduction": args.flops_reduction}, False
    return {"flops_reduction": DEFAULT_FLOPS_REDUCTION}, True


def cmd_prune(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _fresh_output(out, args.force)
    settings = CriterionSettings.resolve(
        args.criterion, preset=args.preset, alpha=args.alpha, beta=args.beta
    )
    budget, default = _budget(args)
    print(settings.describe())
    print(
        f"budget: {reporting.budget_text(budget)}"
        + (" (the default: set --flops-reduction or --params-reduction)" if default else "")
        + (f", in {args.steps} steps" if args.steps > 1 else "")
    )
    ckpt = Checkpoint.load(args.checkpoint)
    model = ckpt.build().eval()
    train, test = _loaders(ckpt, args, distributed())
    batch = next(iter(train)) if needs_gradients(args.criterion) else None
    pruner = prune_model(model, ckpt, settings, steps=args.steps, grad_batch=batch, **budget)
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
                "settings": settings.to_dict(),
                "budget": budget,
                "steps": args.steps,
            }
        },
    )
    result.save(out)
    print(
        f"pruned with {settings.label}: MACs -{report.macs_reduction:.2%}, params "
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


def _curve_settings(args: argparse.Namespace, final: Checkpoint) -> list[CriterionSettings]:
    """The settings of every curve: those the checkpoint was pruned with, for its criterion.

    ``--preset``/``--alpha``/``--beta`` given to ``report`` set every cpmc curve; else a
    cpmc curve of the criterion the checkpoint was pruned with uses the prune step's
    settings, and any other cpmc curve CPMC's defaults.
    """
    criteria = list(dict.fromkeys(args.criteria))
    explicit = {"preset": args.preset, "alpha": args.alpha, "beta": args.beta}
    given = [f"--{k}" for k, v in explicit.items() if v is not None]
    if given and not any(c.startswith("cpmc") for c in criteria):
        raise ValueError(f"{', '.join(given)} set the cpmc curves, but --criteria has none")
    pruned = final.metrics.get("pruned")
    recorded = pruned.get("settings") if isinstance(pruned, dict) else None
    result = []
    for criterion in criteria:
        if not criterion.startswith("cpmc"):
            result.append(CriterionSettings.resolve(criterion))
        elif given:
            result.append(CriterionSettings.resolve(criterion, **explicit))
        elif isinstance(recorded, dict) and recorded.get("criterion") == criterion:
            result.append(CriterionSettings.from_dict(recorded))
        else:
            result.append(CriterionSettings.resolve(criterion))
    return result


def cmd_report(args: argparse.Namespace) -> None:
    baseline, final = Checkpoint.load(args.baseline), Checkpoint.load(args.checkpoint)
    if (baseline.model_name, baseline.dataset) != (final.model_name, final.dataset):
        raise ValueError(
            f"--baseline is a {baseline.model_name} on {baseline.dataset}, the checkpoint a "
            f"{final.model_name} on {final.dataset}: report needs the same model and data"
        )
    out = Path(args.out_dir)
    _fresh_directory(out, args.force)
    curves = _curve_settings(args, final)
    pruned = final.metrics.get("pruned")
    if isinstance(pruned, dict) and "settings" in pruned:
        prune = CriterionSettings.from_dict(pruned["settings"])
        print(f"the checkpoint was pruned with {prune.label} to "
              f"{reporting.budget_text(pruned['budget'])}")  # fmt: skip
    rates = ", ".join(f"{100 * r:g} %" for r in args.rates)
    print(f"prune-rate curve: {'; '.join(c.label for c in curves)}; at FLOPs rates {rates}")
    train, test = _loaders(baseline, args, distributed())
    files = reporting.write_report(
        baseline,
        final,
        out,
        train=train,
        test=test,
        curve_settings=curves,
        rates=args.rates,
        prune=prune_model,
        seed=args.seed,
    )
    print(reporting.table(files["summary"]))
    print(f"report written to {out}: " + ", ".join(sorted(p.name for p in files["paths"])))


def cmd_demo(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    _fresh_directory(out, args.force)
    started = time.time()
    data = ["--batch-size", "64", "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.train_subset:
        data += ["--train-subset", str(args.train_subset)]
    if args.data_root:
        data += ["--data-root", args.data_root]
    if args.download:
        data += ["--download"]
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
    for argv in steps:  # the same commands a user would type, each seeded the same way
        print(f"== cpmc-prune {' '.join([*argv, *data, '--force'])}")
        step = parser.parse_args([*argv, *data, "--force"])
        _run(step, threads_source=args.threads_source)
    print(f"demo finished in {time.time() - started:.0f} s; files in {out.resolve()}")


COMMANDS = {
    "train": cmd_train,
    "prune": cmd_prune,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "demo": cmd_demo,
}


# ---------------------------------------------------------------------- running
def _run(args: argparse.Namespace, *, threads_source: str | None = None) -> None:
    """Set threads and seeds, print the header, run the command."""
    if threads_source is None:
        cap = DEMO_MAX_THREADS if args.command == "demo" else None
        args.threads, threads_source = resolve_threads(args.threads, cap=cap)
    torch.set_num_threads(args.threads)
    args.threads_source = threads_source
    seed_everything(args.seed)  # before the model is built and any data drawn
    if os.environ.get("RANK", "0") == "0":
        print(
            f"cpmc-prune {args.command}: seed {args.seed}, "
            f"{describe_threads(args.threads, threads_source)}"
        )
    COMMANDS[args.command](args)


# ---------------------------------------------------------------------- parser
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (or says it is required)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if "default" in text:
            return text  # the text says it in words
        default = action.default
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
        elif isinstance(default, bool):
            shown = "on" if default else "off"
        elif default is None:
            shown = "none"
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _help_text(text: str) -> str:
    """Help text for argparse, which formats it with ``%``."""
    return text.replace("%", "%%")


def _common_options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    here = torch.get_num_threads()
    fallback = (
        f"torch's default, at most {DEMO_MAX_THREADS}: {min(here, DEMO_MAX_THREADS)} here"
        if demo
        else f"torch's default: {here} here"
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of everything random: model initialization, training subset, shuffling, "
        "augmentation, BatchNorm re-estimation batches and the random criterion",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=_help_text(
            f"CPU threads torch uses (default: $OMP_NUM_THREADS when set, else {fallback}). "
            "Use 1 for small models on a machine that other jobs keep busy: extra threads "
            "then wait on each other"
        ),
    )


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="the data set's directory (default: none needed for digits; "
        "/usr/share/datasets/fashion-mnist for fashion-mnist; "
        "~/.cache/cpmc_plugin/datasets for cifar10, cifar100, svhn)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download a missing data set into --data-root (needs network)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per batch")
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N images, a seeded random subset (default: the whole training split)",
    )
    _common_options(p)


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
        help="train with this sparsity regularizer (proximal steps, exact zeros) "
        "(default: none, plain training)",
    )
    g.add_argument(
        "--lam",
        type=non_negative,
        default=None,
        help="strength of oicsr, bn-fista, ssr-l21 (default 1e-4)",
    )
    g.add_argument("--rho", type=non_negative, default=None, help="SSR's rho (default 1e-3)")
    g.add_argument(
        "--keep",
        type=unit_interval,
        default=None,
        help="ssr-l20: fraction of channel groups kept (default: none; ssr-l20 needs it)",
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
        help="auxiliary classifiers on these modules while training (default: none)",
    )
    g.add_argument(
        "--aux-weight", type=non_negative, default=0.3, help="weight of each auxiliary loss"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``cpmc-prune`` parser: one subcommand per step, every option with help."""
    parser = argparse.ArgumentParser(
        prog="cpmc-prune",
        description="Train, prune to a FLOPs or parameter budget, fine-tune, evaluate, report; "
        "or run the whole demo.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="run `cpmc-prune COMMAND --help`"
    )

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    p = command("train", "train a model from scratch")
    p.add_argument(
        "--model", required=True, choices=list_models(), type=str.lower, help="architecture"
    )
    p.add_argument("--dataset", default="digits", choices=list_datasets(), help="data set")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    p.add_argument(
        "--lr", type=non_negative, default=0.1, help="initial learning rate (cosine schedule)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run at --out")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)
    _sparse_options(p)

    p = command("prune", "prune a checkpoint to a FLOPs or parameter budget")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint to prune")
    p.add_argument(
        "--criterion",
        default="cpmc",
        choices=CRITERIA,
        type=str.lower,
        help="how channels are ranked",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--flops-reduction",
        type=fraction,
        default=None,
        metavar="R",
        help=_help_text(
            "fraction of FLOPs (MACs) to remove, in (0, 1) (default: "
            f"{DEFAULT_FLOPS_REDUCTION} unless --params-reduction is given)"
        ),
    )
    budget.add_argument(
        "--params-reduction",
        type=fraction,
        default=None,
        metavar="R",
        help="fraction of parameters to remove, in (0, 1) (default: none, a FLOPs budget)",
    )
    p.add_argument(
        "--alpha",
        type=non_negative,
        default=None,
        help=f"CPMC's weight of the parameter cost (default: the --preset's, else "
        f"{DEFAULT_ALPHA:g}); given, it overrides the preset's",
    )
    p.add_argument(
        "--beta",
        type=non_negative,
        default=None,
        help=f"CPMC's weight of the FLOPs cost (default: the --preset's, else "
        f"{DEFAULT_BETA:g}); given, it overrides the preset's",
    )
    p.add_argument(
        "--preset",
        choices=list_presets(),
        default=None,
        help="CPMC's alpha/beta measured for this model family (default: none, CPMC's "
        "defaults); --alpha/--beta override it",
    )
    p.add_argument("--steps", type=positive_int, default=1, help="iterative pruning steps")
    p.add_argument("--out", required=True, metavar="FILE", help="the pruned checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)

    p = command("finetune", "fine-tune a (pruned) checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint to train")
    p.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
    p.add_argument(
        "--lr", type=non_negative, default=0.01, help="initial learning rate (cosine schedule)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run at --out")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)
    _sparse_options(p)

    p = command("evaluate", "accuracy, parameters and MACs of a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint to evaluate")
    _data_options(p)

    p = command("report", "table, JSON and plots: baseline vs final checkpoint")
    p.add_argument("--baseline", required=True, metavar="FILE", help="the unpruned checkpoint")
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="the pruned (fine-tuned) checkpoint"
    )
    p.add_argument("--out-dir", required=True, metavar="DIR", help="where the files go")
    p.add_argument(
        "--criteria",
        nargs="+",
        choices=CRITERIA,
        default=["cpmc", "l1", "random"],
        help="one curve per criterion in prune_rate.png",
    )
    p.add_argument(
        "--rates",
        nargs="+",
        type=fraction,
        default=[0.3, 0.5, 0.7],
        metavar="R",
        help="FLOPs prune rates of the curve",
    )
    p.add_argument(
        "--alpha",
        type=non_negative,
        default=None,
        help="alpha of the cpmc curves (default: the prune step's for its criterion, "
        f"else {DEFAULT_ALPHA:g})",
    )
    p.add_argument(
        "--beta",
        type=non_negative,
        default=None,
        help="beta of the cpmc curves (default: the prune step's for its criterion, "
        f"else {DEFAULT_BETA:g})",
    )
    p.add_argument(
        "--preset",
        choices=list_presets(),
        default=None,
        help="preset of the cpmc curves (default: the prune step's for its criterion, else none)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out-dir")
    _data_options(p)

    p = command("demo", "the whole story offline: train, prune, fine-tune, report")
    p.add_argument("--out-dir", default="cpmc-demo", metavar="DIR", help="where the files go")
    p.add_argument("--model", default="resnet20", choices=list_models(), help="architecture")
    p.add_argument("--dataset", default="digits", choices=list_datasets(), help="data set")
    p.add_argument("--epochs", type=positive_int, default=8, help="training epochs")
    p.add_argument("--finetune-epochs", type=positive_int, default=4, help="fine-tuning epochs")
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N images, a seeded random subset (default: the whole training split)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="the data set's directory (default: the data set's usual place)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download a missing data set (needs network)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out-dir")
    _common_options(p, demo=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cpmc-prune``; returns the exit code."""
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        _run(args)
    except (ValueError, OSError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"cpmc-prune {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # as it was, for callers in the same process
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
