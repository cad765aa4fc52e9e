"""``cpmc-prune``: train, prune to a FLOPs budget, fine-tune, evaluate, report; or the demo.

Every command reads and writes :class:`~cpmc_plugin.cli.checkpoint.Checkpoint` files.
The parser lives in :mod:`.parser`, its argument types in :mod:`.argtypes`, the training
run in :mod:`.train`; this module holds the commands and the entry point.
A bad argument, a missing or corrupt checkpoint, or an output that exists already
gives a one-line error and exit code 2; no file is written then. Every command first
sets its thread count and seeds every generator (before the model is built or any
data drawn), and prints both in its header: the same command with the same
``--seed`` and thread count gives the same numbers on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..core.presets import family_of
from ..criteria import needs_calibration, needs_gradients
from ..data import dataset_info, make_loaders
from ..models import create_model
from ..training import accuracy, distributed, fit
from . import report as reporting
from ._common import (
    CLI_OPTION_NAMES,
    DEFAULT_FLOPS_REDUCTION,
    counts,
    fresh_directory,
    fresh_output,
    loaders,
)
from .argtypes import fraction, non_negative, non_negative_int, positive_int, unit_interval
from .checkpoint import Checkpoint
from .parser import HelpFormatter, build_parser
from .prune_hf import cmd_prune_hf
from .settings import (
    DEMO_MAX_THREADS,
    CriterionSettings,
    describe_threads,
    resolve_threads,
    seed_everything,
)
from .train import run_training

# Names kept importable from here for existing imports; each is looked up in the module
# that defines it (patch ``cli.train.fit``, ``cli._common.make_loaders`` or
# ``CriterionSettings.prune``, not these).
__all__ = [
    "CLI_OPTION_NAMES",
    "COMMANDS",
    "DEFAULT_FLOPS_REDUCTION",
    "HelpFormatter",
    "build_parser",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_finetune",
    "cmd_prune",
    "cmd_report",
    "cmd_train",
    "family_of",
    "fit",
    "fraction",
    "main",
    "make_loaders",
    "non_negative",
    "non_negative_int",
    "positive_int",
    "unit_interval",
]


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    fresh_output(out, args.force, args.resume)
    info = dataset_info(args.dataset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    model = create_model(args.model, **kwargs)  # after seed_everything: the same weights
    ckpt = Checkpoint(args.model.lower(), kwargs, args.dataset, info.image_size, model.state_dict())
    run_training(model, ckpt, args, "train", out)


def cmd_finetune(args: argparse.Namespace) -> None:
    out = Path(args.out)
    fresh_output(out, args.force, args.resume)
    ckpt = Checkpoint.load(args.checkpoint)
    run_training(ckpt.build(), ckpt, args, "finetune", out)


def _budget(args: argparse.Namespace) -> tuple[dict[str, float], bool]:
    """``({'flops_reduction': 0.5}, True)``: the budget, and whether it is the default."""
    if args.params_reduction is not None:
        return {"params_reduction": args.params_reduction}, False
    if args.flops_reduction is not None:
        return {"flops_reduction": args.flops_reduction}, False
    return {"flops_reduction": DEFAULT_FLOPS_REDUCTION}, True


def cmd_prune(args: argparse.Namespace) -> None:
    out = Path(args.out)
    fresh_output(out, args.force)
    settings = CriterionSettings.resolve(
        args.criterion, preset=args.preset, alpha=args.alpha, beta=args.beta
    )
    settings.calibration_finetune_steps(args.calibration_finetune_steps)  # before any work
    budget, default = _budget(args)
    print(settings.describe())
    print(
        f"budget: {reporting.budget_text(budget)}"
        + (" (the default: set --flops-reduction or --params-reduction)" if default else "")
        + (f", in {args.steps} steps" if args.steps > 1 else "")
    )
    ckpt = Checkpoint.load(args.checkpoint)
    model = ckpt.build().eval()
    train, test = loaders(ckpt, args, distributed())
    batch = next(iter(train)) if needs_gradients(args.criterion) else None
    pruner = settings.prune(
        model,
        ckpt.example_inputs,
        flops_reduction=budget.get("flops_reduction"),
        params_reduction=budget.get("params_reduction"),
        steps=args.steps,
        grad_batch=batch,
        calibration_data=train if settings.uses_training_data else None,
        calibration_finetune_steps=args.calibration_finetune_steps,
    )
    calibration = pruner.calibration
    if calibration is not None:
        print(calibration.table())
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
                **(
                    {"calibration": _reproducible(calibration.as_dict())}
                    if calibration is not None
                    else {}
                ),
            }
        },
    )
    result.save(out)
    print(
        f"pruned with {settings.label}: MACs -{report.macs_reduction:.2%}, params "
        f"-{report.params_reduction:.2%}, accuracy without fine-tuning {acc:.2%} -> {out}"
    )


def _reproducible(report: dict[str, Any]) -> dict[str, Any]:
    """A calibration report without its wall time (checkpoints are bit-identical reruns)."""
    return {k: v for k, v in report.items() if k != "seconds"}


def cmd_evaluate(args: argparse.Namespace) -> None:
    ckpt = Checkpoint.load(args.checkpoint)
    model = ckpt.build()
    _, test = loaders(ckpt, args, distributed())
    acc = accuracy(model, test, torch.device("cpu"))
    macs, params = counts(model, ckpt)
    print(
        f"{ckpt.model_name} on {ckpt.dataset}: accuracy {acc:.2%}, {params:,} params, {macs:,} MACs"
    )


def _curve_settings(args: argparse.Namespace, final: Checkpoint) -> list[CriterionSettings]:
    """The settings of every curve: those the checkpoint was pruned with, for its criterion.

    ``--preset``/``--alpha``/``--beta`` given to ``report`` set every cpmc curve with
    fixed weights (``cpmc-auto`` chooses its own at each rate); else a cpmc curve of the
    criterion the checkpoint was pruned with uses the prune step's settings, and any
    other cpmc curve CPMC's defaults.
    """
    criteria = list(dict.fromkeys(args.criteria))
    explicit = {"preset": args.preset, "alpha": args.alpha, "beta": args.beta}
    given = [f"--{k}" for k, v in explicit.items() if v is not None]
    fixed = [c for c in criteria if c.startswith("cpmc") and not needs_calibration(c)]
    if given and not fixed:
        raise ValueError(
            f"{', '.join(given)} set the cpmc curves with fixed weights, but --criteria has none"
        )
    pruned = final.metrics.get("pruned")
    recorded = pruned.get("settings") if isinstance(pruned, dict) else None
    result = []
    for criterion in criteria:
        if criterion not in fixed:
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
    fresh_directory(out, args.force)
    curves = _curve_settings(args, final)
    pruned = final.metrics.get("pruned")
    if isinstance(pruned, dict) and "settings" in pruned:
        prune = CriterionSettings.from_dict(pruned["settings"])
        print(f"the checkpoint was pruned with {prune.label} to "
              f"{reporting.budget_text(pruned['budget'])}")  # fmt: skip
    rates = ", ".join(f"{100 * r:g} %" for r in args.rates)
    print(f"prune-rate curve: {'; '.join(c.label for c in curves)}; at FLOPs rates {rates}")
    train, test = loaders(baseline, args, distributed())
    files = reporting.write_report(
        baseline,
        final,
        out,
        train=train,
        test=test,
        curve_settings=curves,
        rates=args.rates,
        seed=args.seed,
    )
    print(reporting.table(files["summary"]))
    print(f"report written to {out}: " + ", ".join(sorted(p.name for p in files["paths"])))


def cmd_demo(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    fresh_directory(out, args.force)
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
    prune = ["--criterion", "cpmc-auto", "--flops-reduction", "0.5"]
    curve = ["--criteria", "cpmc-auto", "cpmc", "l1", "random", *preset,
             "--rates", "0.3", "0.5", "0.7"]  # fmt: skip
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
    "prune-hf": cmd_prune_hf,
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


# ---------------------------------------------------------------------- entry point
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
