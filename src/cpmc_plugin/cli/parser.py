"""The ``cpmc-prune`` argument parser: one subcommand per step, every option with help."""

from __future__ import annotations

import argparse

import torch

from ..core.presets import DEFAULT_ALPHA, DEFAULT_BETA, list_presets
from ..criteria import CRITERIA
from ..data import list_datasets
from ..models import list_models
from ..sparse.factory import SPARSE_METHODS
from ._common import DEFAULT_FLOPS_REDUCTION
from .argtypes import fraction, non_negative, non_negative_int, positive_int, unit_interval
from .prune_hf import add_prune_hf_parser
from .settings import DEMO_MAX_THREADS

__all__ = ["HelpFormatter", "build_parser"]


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


def _train_subset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N images, a seeded random subset (default: the whole training split)",
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
    _train_subset_option(p)
    _common_options(p)


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


def _training_options(p: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    """The options of ``train`` and ``finetune`` after what each trains."""
    p.add_argument("--epochs", type=positive_int, default=epochs, help="training epochs")
    p.add_argument(
        "--lr", type=non_negative, default=lr, help="initial learning rate (cosine schedule)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run at --out")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)
    _sparse_options(p)


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
    _training_options(p, epochs=10, lr=0.1)

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
    p.add_argument(
        "--calibration-finetune-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="cpmc-auto only: re-score its best 8 plans after N SGD steps, a proxy for the "
        "accuracy after a fine-tune (default 0: the accuracy right after the prune)",
    )
    p.add_argument("--steps", type=positive_int, default=1, help="iterative pruning steps")
    p.add_argument("--out", required=True, metavar="FILE", help="the pruned checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _data_options(p)

    p = command("finetune", "fine-tune a (pruned) checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint to train")
    _training_options(p, epochs=5, lr=0.01)

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

    p = command(
        "prune-hf",
        "prune a Hugging Face causal LM saved with save_pretrained (heads, MLP channels and "
        "the hidden width) to a FLOPs budget; writes a directory from_pretrained loads",
    )
    add_prune_hf_parser(p)
    _common_options(p)

    p = command("demo", "the whole story offline: train, prune, fine-tune, report")
    p.add_argument("--out-dir", default="cpmc-demo", metavar="DIR", help="where the files go")
    p.add_argument("--model", default="resnet20", choices=list_models(), help="architecture")
    p.add_argument("--dataset", default="digits", choices=list_datasets(), help="data set")
    p.add_argument("--epochs", type=positive_int, default=8, help="training epochs")
    p.add_argument("--finetune-epochs", type=positive_int, default=4, help="fine-tuning epochs")
    _train_subset_option(p)
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
