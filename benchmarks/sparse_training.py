"""Sparse-training methods side by side: same model, same FLOPs budget, same fine-tune.

Protocol (one process, CPU; Fashion-MNIST from the Debian package, 28x28, 10 classes, or
``--dataset digits``, scikit-learn's embedded 8x8 digits, for a run without it):

1. Baseline: ``resnet20`` (``--model``) trained with ``cpmc_plugin.training.fit``
   (SGD momentum 0.9, weight decay 5e-4, cosine learning rate from ``--lr``, batch 128)
   for ``--epochs`` on ``--train-subset`` training images (seeded subset). Cached in
   ``--cache-dir`` (default ``benchmarks/results/cache/``; ``--no-cache`` retrains).
2. Sparse phase, per method, on a copy of the baseline: ``--sparse-epochs`` of ``fit``
   from ``--sparse-lr`` with the method's regularizer:

   - ``none``: plain training (the control), pruned with CPMC's default criterion;
   - ``oicsr`` / ``bn-fista`` / ``ssr-l21`` / ``ssr-l20``: this package's regularizers in
     the proximal convention (``optimizer.step(); reg.proximal_step(lr)``, then
     ``finalize()``); ``bn-fista+aux`` adds auxiliary classifiers on ``layer1`` and
     ``layer2`` (weight 0.3), detached before pruning; ``bn-fista-m0`` is BN-FISTA
     without extrapolation (``momentum=0``: proximal SGD on the BN factors);
   - ``tp-bnscale`` / ``tp-groupnorm``: torch-pruning's ``BNScalePruner`` /
     ``GroupNormPruner``, whose ``regularize(model)`` runs between ``backward()`` and
     ``step()``.
3. Prune to the same budget, ``--flops-reduction`` of the MACs, with
   ``CPMCPruner(importance=...)`` (exact budget, one shot, classifier kept), ranking
   channels by the quantity the method sparsified: OICSR's out-in group energy
   (``OICSRImportance``), BN scale ``|gamma|`` (``BNScaleImportance(normalizer=None)``,
   compared across layers as network slimming does) for the three BN methods,
   SSR's filter-group energy (``SSRImportance``), and for GroupNormPruner its
   own default, ``GroupMagnitudeImportance(p=2)``.
4. Fine-tune every pruned model the same way: ``--finetune-epochs`` of ``fit`` from
   ``--finetune-lr``, same seed. Test accuracy on ``--test-subset`` test images after the
   sparse phase and right after pruning (both after BatchNorm recalibration,
   ``recalibrate_bn`` over 20 un-augmented training batches: running statistics lag
   behind factors that shrink every step), and after fine-tuning.

Strengths are per method, since the penalties have different scales: every method
gets the same three tries (``STRENGTHS``: weak, middle, strong, chosen so that the
strong one zeroes many channels within this short schedule), and every try is a row.
``--strength METHOD=V1,V2`` replaces a method's tries.

Usage::

    python benchmarks/sparse_training.py            # 25 rows, about 3 min each on 2 CPU cores
    python benchmarks/sparse_training.py --quick    # a smoke run, ~3 min
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from _common import CACHE_DIR, RESULTS, cached_baseline, provenance, write_json

from cpmc_plugin import (
    CPMCImportance,
    OICSRImportance,
    SSRImportance,
    attach_auxiliary_classifiers,
    make_regularizer,
)
from cpmc_plugin.data import dataset_info, make_loaders
from cpmc_plugin.models import create_model
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from cpmc_plugin.training import accuracy, distributed, fit, recalibrate_bn

DEFAULT_OUT = RESULTS / "sparse_training.json"
METHODS = (
    "none",
    "oicsr",
    "bn-fista",
    "bn-fista+aux",
    "bn-fista-m0",
    "ssr-l21",
    "ssr-l20",
    "tp-bnscale",
    "tp-groupnorm",
)
#: per method, a weak, a middle and a strong setting: lam (oicsr, bn-fista, ssr-l21), keep
#: (ssr-l20), reg (tp-*); every method gets the same three tries
STRENGTHS: dict[str, tuple[float, ...]] = {
    "oicsr": (1e-3, 3e-3, 1e-2),
    "bn-fista": (1e-2, 5e-2, 2e-1),
    "bn-fista+aux": (1e-2, 5e-2, 2e-1),
    "bn-fista-m0": (5e-2, 2e-1, 5e-1),
    "ssr-l21": (1e-2, 3e-2, 6e-2),
    "ssr-l20": (0.85, 0.7, 0.5),
    "tp-bnscale": (1e-4, 1e-3, 1e-2),
    "tp-groupnorm": (5e-5, 5e-4, 5e-3),
}
AUX_AT = ["layer1", "layer2"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def importance_for(method: str, x: torch.Tensor) -> tp.importance.Importance:
    if method == "none":
        return CPMCImportance(x)
    if method == "oicsr":
        return OICSRImportance()
    if method.startswith("ssr"):
        return SSRImportance()
    if method == "tp-groupnorm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    # bn-fista, bn-fista+aux, tp-bnscale: raw |gamma| across layers (network slimming's
    # global threshold); the default per-layer mean is 0/0 where all scales are zero
    return tp.importance.BNScaleImportance(normalizer=None)


def sparse_phase(
    method: str,
    strength: float | None,
    model: nn.Module,
    x: torch.Tensor,
    loader: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Train ``model`` in place with the method's regularizer; returns what it reports."""
    classifier = [model.classifier]
    trained: nn.Module = model
    regularizer = None
    after_backward: Callable[[], None] | None = None
    if method in ("oicsr", "bn-fista", "bn-fista+aux", "bn-fista-m0", "ssr-l21"):
        name = method.removesuffix("+aux").removesuffix("-m0")
        extra: dict[str, Any] = {}
        if name == "ssr-l21":
            extra = {"rho": args.rho, "update_every": args.update_every}
        elif method == "bn-fista-m0":
            extra = {"momentum": 0.0}
        regularizer = make_regularizer(
            name, model, x, strength=strength, ignored_layers=classifier, **extra
        )
    elif method == "ssr-l20":
        regularizer = make_regularizer(
            "ssr-l20", model, x, keep=strength, rho=args.rho, update_every=args.update_every,
            ignored_layers=classifier,
        )  # fmt: skip
    elif method == "tp-bnscale":
        pruner = tp.pruner.BNScalePruner(
            model, x, importance=tp.importance.BNScaleImportance(), reg=strength,
            ignored_layers=classifier,
        )  # fmt: skip
        after_backward = lambda: pruner.regularize(model)  # noqa: E731
    elif method == "tp-groupnorm":
        pruner = tp.pruner.GroupNormPruner(
            model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=strength,
            ignored_layers=classifier,
        )  # fmt: skip
        after_backward = lambda: pruner.regularize(model)  # noqa: E731
    if method.endswith("+aux"):
        trained = attach_auxiliary_classifiers(model, AUX_AT, 10, example_inputs=x)
    zeros = fit(
        trained,
        loader,
        epochs=args.sparse_epochs,
        lr=args.sparse_lr,
        env=distributed(),
        desc=method,
        sparsity=regularizer,
        after_backward=after_backward,
    )
    if trained is not model:
        trained.detach()  # type: ignore[operator]
    bn_zero = sum(
        int((m.weight == 0).sum())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    return {"strength": strength, "zero_groups": zeros, "bn_scales_at_zero": bn_zero}


def run_method(
    method: str,
    strength: float | None,
    base: nn.Module,
    x: torch.Tensor,
    data: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    started = time.time()
    torch.manual_seed(args.seed)
    model = copy.deepcopy(base)
    sparse = sparse_phase(method, strength, model, x, data["train"], args)
    row: dict[str, Any] = {"method": method, **sparse}
    cpu = torch.device("cpu")
    recalibrate_bn(model, data["calib"])
    row["acc_sparse"] = accuracy(model, data["test"], cpu)
    if args.sparse_only:
        row["seconds"] = round(time.time() - started, 1)
        return row
    pruner = prune_to_budget(
        model, x, importance_for(method, x), flops_reduction=args.flops_reduction
    )
    report = pruner.report()
    recalibrate_bn(model, data["calib"])
    row.update(
        macs_reduction=report.macs_reduction,
        params_reduction=report.params_reduction,
        acc_pruned=accuracy(model, data["test"], cpu),
    )
    torch.manual_seed(args.seed)
    fit(model, data["train"], epochs=args.finetune_epochs, lr=args.finetune_lr,
        env=distributed(), desc="finetune")  # fmt: skip
    row["acc_finetuned"] = accuracy(model, data["test"], cpu)
    row["seconds"] = round(time.time() - started, 1)
    return row


def baseline(data: dict[str, Any], args: argparse.Namespace) -> nn.Module:
    model = create_model(args.model, num_classes=10, in_channels=1)
    sizes = f"n{args.train_subset}-e{args.epochs}-lr{args.lr}-s{args.seed}"
    data_name = "fashion" if args.dataset == "fashion-mnist" else args.dataset
    path = args.cache_dir / f"sparse-training-{data_name}-{args.model}-{sizes}.pt"

    def train_baseline() -> dict[str, Any]:
        torch.manual_seed(args.seed)
        fit(
            model, data["train"], epochs=args.epochs, lr=args.lr, env=distributed(), desc="baseline"
        )
        return {}

    cached_baseline(model, path, train_baseline, no_cache=args.no_cache)
    return model


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Baseline {result['model']}: {result['baseline_accuracy']:.2%} test accuracy. "
        f"Budget: -{result['options']['flops_reduction']:.0%} MACs.",
        "",
        "| method | strength | zero groups | BN scales at 0 | after sparse | pruned, no FT "
        "| fine-tuned | MACs | params | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        strength = "" if r["strength"] is None else f"{r['strength']:g}"
        lines.append(
            f"| {r['method']} | {strength} | {r['zero_groups']} | {r['bn_scales_at_zero']} "
            f"| {r['acc_sparse']:.2%} | {r['acc_pruned']:.2%} | **{r['acc_finetuned']:.2%}** "
            f"| -{r['macs_reduction']:.1%} | -{r['params_reduction']:.1%} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def strength_option(text: str) -> tuple[str, tuple[float, ...]]:
    method, _, values = text.partition("=")
    if method not in STRENGTHS:
        raise argparse.ArgumentTypeError(f"method must be one of {', '.join(STRENGTHS)}")
    try:
        return method, tuple(float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{values!r} is not a list of numbers") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument(
        "--dataset",
        choices=("fashion-mnist", "digits"),
        default="fashion-mnist",
        help="digits: the embedded 8x8 digits, for a run without Fashion-MNIST",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--train-subset", type=int, default=6000)
    p.add_argument("--test-subset", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--sparse-epochs", type=int, default=4)
    p.add_argument("--sparse-lr", type=float, default=0.05)
    p.add_argument("--update-every", type=int, default=10, help="SSR's Z/U schedule (steps)")
    p.add_argument("--rho", type=float, default=1.0, help="SSR's rho")
    p.add_argument("--sparse-only", action="store_true", help="stop after the sparse phase")
    p.add_argument("--flops-reduction", type=float, default=0.5)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument(
        "--strength",
        type=strength_option,
        action="append",
        default=[],
        metavar="METHOD=V1[,V2]",
        help="strengths to try for a method (default: STRENGTHS)",
    )
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only merge these result files into --out and print")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="trained baselines")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.epochs = 512, 500, 1
        args.sparse_epochs = args.finetune_epochs = 1
        args.no_cache = True
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("sparse_training_quick.json")
    args.strengths = {**STRENGTHS, **dict(args.strength)}
    return args


def merge(args: argparse.Namespace) -> dict[str, Any]:
    """One result from runs split over processes (same options, different methods)."""
    parts = [json.loads(path.read_text()) for path in args.merge]
    counts = [len(part["rows"]) for part in parts]
    result = copy.deepcopy(parts[0])
    result["rows"] = []
    for part in parts:
        same = ("model", "baseline_accuracy")
        if any(part[k] != result[k] for k in same):
            raise SystemExit(f"{args.merge}: the runs differ in {same}; cannot merge")
        result["rows"].extend(part["rows"])
    order = {m: i for i, m in enumerate(METHODS)}

    def weak_first(row: dict[str, Any]) -> tuple[int, float]:
        strength = row["strength"] or 0.0
        return order[row["method"]], -strength if row["method"] == "ssr-l20" else strength

    result["rows"].sort(key=weak_first)
    result["parts"] = [
        {"command": part["command"], "provenance": part["provenance"], "rows": count}
        for part, count in zip(parts, counts, strict=True)
    ]
    del result["command"], result["provenance"]
    write_json(args.out, result, default=str)
    print(table(result))
    if args.markdown:
        args.markdown.write_text(table(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    train, test, _ = make_loaders(
        args.dataset, None, batch_size=128, train_subset=args.train_subset,
        test_subset=args.test_subset, seed=args.seed,
    )  # fmt: skip
    calib, _, _ = make_loaders(
        args.dataset, None, batch_size=128, train_subset=args.train_subset, seed=args.seed,
        augment=False,
    )  # fmt: skip
    data = {"train": train, "test": test, "calib": calib}
    info = dataset_info(args.dataset)
    x = torch.randn(1, info.in_channels, info.image_size, info.image_size)
    base = baseline(data, args)
    result: dict[str, Any] = {
        "provenance": provenance(),
        "command": "python benchmarks/sparse_training.py " + " ".join(argv or sys.argv[1:]),
        "model": args.model,
        "options": {
            k: v for k, v in vars(args).items() if k not in ("out", "markdown", "strength")
        },
        "baseline_accuracy": accuracy(base, test, torch.device("cpu")),
        "rows": [],
    }
    log(f"baseline accuracy {result['baseline_accuracy']:.2%}")
    for method in args.methods:
        for strength in args.strengths.get(method, (None,)):
            row = run_method(method, strength, base, x, data, args)
            result["rows"].append(row)
            log(json.dumps(row))
            write_json(args.out, result, default=str)
    if args.sparse_only:
        return result
    print(table(result))
    if args.markdown:
        args.markdown.write_text(table(result) + "\n")
    return result


if __name__ == "__main__":
    main()
