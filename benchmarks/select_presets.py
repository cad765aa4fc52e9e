"""Choose the per-family CPMC presets (alpha, beta) from a recorded measurement.

For each family (VGG, ResNet, DenseNet; see ``_tiny_models.py``) a small network is
trained on scikit-learn's digits (8x8 images upsampled to 16x16), then, for every
(alpha, beta) of a grid, a copy is pruned by ``CPMCPruner`` to 50 % fewer MACs
(classifier ignored) and its test accuracy is measured without fine-tuning, both
as is and after recalibrating the BatchNorm statistics on the training set. The
recalibrated accuracy, averaged over training seeds, picks the preset of each family
(ties: smaller alpha + beta). Results go to ``benchmarks/results/select_presets.json``.

Run from the repository root::

    python benchmarks/select_presets.py            # full grid, 3 seeds
    python benchmarks/select_presets.py --seeds 0 --alphas 0 0.5 --betas 0 0.5   # quick
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import RESULTS, git_state, provenance, train_sgd, write_json
from _tiny_models import FAMILIES, build_model
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cpmc_plugin import CPMCImportance
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from cpmc_plugin.training import recalibrate_bn

DEFAULT_OUTPUT = RESULTS / "select_presets.json"
GRID = (0.0, 0.1, 0.25, 0.5, 1.0)
TRAIN_OPTIONS = ("epochs", "lr", "weight_decay", "batch_size")  # of train(), from the options


@dataclass(frozen=True)
class Digits:
    """The digits split as tensors: images ``(N, 1, size, size)`` in [0, 1], int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class PruneResult:
    """One (alpha, beta) prune of one trained model."""

    alpha: float
    beta: float
    correct: int | None = None
    correct_recal: int | None = None
    accuracy: float | None = None
    accuracy_recal: float | None = None
    macs_reduction: float | None = None
    params_reduction: float | None = None
    params_after: int | None = None
    channels_after: int | None = None
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------- data
def load_data(size: int = 16, test_size: int = 450, split_seed: int = 0) -> Digits:
    """Digits scaled to [0, 1], upsampled (bilinear) to ``size`` x ``size``, stratified split."""
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=test_size,
        random_state=split_seed,
        stratify=digits.target,
    )
    train_t, test_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Digits(images[train_t], labels[train_t], images[test_t], labels[test_t])


# ---------------------------------------------------------------------------- training
def train(
    model: nn.Module,
    data: Digits,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> None:
    """SGD (momentum 0.9, nesterov off) with a one-cycle schedule; fixed shuffling seed."""
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            yield data.x_train[idx], data.y_train[idx]

    train_sgd(
        model,
        epoch,
        epochs=epochs,
        steps_per_epoch=(n + batch_size - 1) // batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule="one-cycle",
        seed=seed,
    )


@torch.no_grad()
def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Number of correctly classified samples (model in eval mode)."""
    model.eval()
    return int((model(x).argmax(1) == y).sum())


def recalibrate(model: nn.Module, data: Digits, batch_size: int) -> None:
    """BatchNorm statistics measured again: one pass over the training set in batches."""
    pairs = zip(data.x_train.split(batch_size), data.y_train.split(batch_size), strict=True)
    batches = list(pairs)
    recalibrate_bn(model, batches, batches=len(batches))


# ---------------------------------------------------------------------------- pruning
def prune_and_measure(
    trained: nn.Module,
    data: Digits,
    *,
    alpha: float,
    beta: float,
    flops_reduction: float,
    batch_size: int,
) -> PruneResult:
    """Prune a copy of ``trained`` with CPMC(alpha, beta); accuracy before/after BN recal."""
    result = PruneResult(alpha=alpha, beta=beta)
    model = copy.deepcopy(trained).eval()
    example = data.x_train[:1]
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importance = CPMCImportance(
                example, alpha=alpha, beta=beta, p=1, normalizer="max-min", weight_dependency=True
            )
            pruner = prune_to_budget(model, example, importance, flops_reduction=flops_reduction)
        report = pruner.report()
    except Exception as error:  # recorded, the grid goes on
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.seconds = time.perf_counter() - start
    result.warnings = sorted({str(w.message) for w in caught})
    result.macs_reduction = report.macs_reduction
    result.params_reduction = report.params_reduction
    result.params_after = report.params_after
    result.channels_after = report.channels_after
    n_test = len(data.y_test)
    result.correct = count_correct(model, data.x_test, data.y_test)
    result.accuracy = result.correct / n_test
    recalibrate(model, data, batch_size)
    result.correct_recal = count_correct(model, data.x_test, data.y_test)
    result.accuracy_recal = result.correct_recal / n_test
    return result


# ---------------------------------------------------------------------------- summary
def summarize(
    runs: list[dict[str, Any]], alphas: list[float], betas: list[float], n_test: int
) -> dict[str, Any]:
    """Mean/std over seeds per (alpha, beta), the ranking and the chosen preset."""
    cells = []
    for alpha in alphas:
        for beta in betas:
            rows = [
                r
                for run in runs
                for r in run["grid"]
                if r["alpha"] == alpha and r["beta"] == beta and r["error"] is None
            ]
            if len(rows) != len(runs):
                cells.append({"alpha": alpha, "beta": beta, "complete": False})
                continue
            acc = np.array([r["accuracy"] for r in rows])
            rec = np.array([r["accuracy_recal"] for r in rows])
            cells.append(
                {
                    "alpha": alpha,
                    "beta": beta,
                    "complete": True,
                    "correct_recal_sum": int(sum(r["correct_recal"] for r in rows)),
                    "mean_accuracy_recal": float(rec.mean()),
                    "std_accuracy_recal": float(rec.std(ddof=1)) if len(rec) > 1 else 0.0,
                    "min_accuracy_recal": float(rec.min()),
                    "mean_accuracy": float(acc.mean()),
                    "std_accuracy": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "mean_macs_reduction": float(np.mean([r["macs_reduction"] for r in rows])),
                    "mean_params_reduction": float(np.mean([r["params_reduction"] for r in rows])),
                }
            )
    complete = [c for c in cells if c["complete"]]
    # integer sums of correct answers: exact ties, no float noise
    ranked = sorted(
        complete, key=lambda c: (-c["correct_recal_sum"], c["alpha"] + c["beta"], c["alpha"])
    )
    base = [run["correct_unpruned"] / n_test for run in runs]
    return {
        "unpruned_mean_accuracy": float(np.mean(base)),
        "cells": cells,
        "ranking": [[c["alpha"], c["beta"]] for c in ranked],
        "chosen": {
            "alpha": ranked[0]["alpha"],
            "beta": ranked[0]["beta"],
            "mean_accuracy_recal": ranked[0]["mean_accuracy_recal"],
            "std_accuracy_recal": ranked[0]["std_accuracy_recal"],
            "mean_accuracy": ranked[0]["mean_accuracy"],
        }
        if ranked
        else None,
    }


def overall_best(summaries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The single (alpha, beta) with the best recalibrated accuracy averaged over families."""
    scores: dict[tuple[float, float], list[float]] = {}
    for summary in summaries.values():
        for cell in summary["cells"]:
            if cell["complete"]:
                key = (cell["alpha"], cell["beta"])
                scores.setdefault(key, []).append(cell["mean_accuracy_recal"])
    full = {k: v for k, v in scores.items() if len(v) == len(summaries)}
    if not full:
        return None
    ranked = sorted(full, key=lambda k: (-round(float(np.mean(full[k])), 12), k[0] + k[1], k[0]))
    best = ranked[0]
    return {
        "alpha": best[0],
        "beta": best[1],
        "mean_accuracy_recal_over_families": float(np.mean(full[best])),
        "per_family": dict(zip(summaries, full[best], strict=True)),
        "ranking": [
            {"alpha": k[0], "beta": k[1], "mean_accuracy_recal": float(np.mean(full[k]))}
            for k in ranked
        ],
    }


def print_family_table(
    family: str, summary: dict[str, Any], alphas: list[float], betas: list[float]
) -> None:
    """Mean recalibrated (and raw) test accuracy, alpha down, beta across."""
    by_key = {(c["alpha"], c["beta"]): c for c in summary["cells"]}
    print(f"\n== {family}: unpruned {100 * summary['unpruned_mean_accuracy']:.2f} % ==")
    for label, key in (("BN-recalibrated", "mean_accuracy_recal"), ("raw", "mean_accuracy")):
        print(f"{label} test accuracy (%) after -50 % MACs, mean over seeds")
        print("alpha\\beta " + "".join(f"{b:>9}" for b in betas))
        for alpha in alphas:
            row = ""
            for beta in betas:
                cell = by_key[(alpha, beta)]
                row += f"{100 * cell[key]:9.2f}" if cell["complete"] else f"{'err':>9}"
            print(f"{alpha:<10} {row}")
    chosen = summary["chosen"]
    if chosen:
        print(
            f"chosen: alpha={chosen['alpha']} beta={chosen['beta']} "
            f"({100 * chosen['mean_accuracy_recal']:.2f} +- "
            f"{100 * chosen['std_accuracy_recal']:.2f} % recalibrated)"
        )


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--alphas", nargs="+", type=float, default=list(GRID))
    parser.add_argument("--betas", nargs="+", type=float, default=list(GRID))
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core VM, 2 OpenMP threads "
        "stall at barriers whenever another process takes a core)",
    )
    parser.add_argument("--out", "--output", dest="output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, prune over the grid, print the tables and write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = provenance()
    wall_start = time.perf_counter()
    data = load_data(size=args.image_size)
    n_test = len(data.y_test)
    print(f"digits: {len(data.y_train)} train / {n_test} test, {tuple(data.x_train.shape[1:])}")

    families: dict[str, Any] = {}
    for family in args.families:
        runs = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_model(family, in_channels=1, num_classes=10)
            start = time.perf_counter()
            train(model, data, seed=seed, **{k: getattr(args, k) for k in TRAIN_OPTIONS})
            train_seconds = time.perf_counter() - start
            correct = count_correct(model, data.x_test, data.y_test)
            print(
                f"{family} seed {seed}: trained in {train_seconds:.1f} s, "
                f"test accuracy {100 * correct / n_test:.2f} %",
                flush=True,
            )
            grid = []
            start = time.perf_counter()
            for alpha in args.alphas:
                for beta in args.betas:
                    result = prune_and_measure(
                        model,
                        data,
                        alpha=alpha,
                        beta=beta,
                        flops_reduction=args.flops_reduction,
                        batch_size=args.batch_size,
                    )
                    if result.error:
                        print(f"  alpha={alpha} beta={beta}: {result.error}", flush=True)
                    grid.append(asdict(result))
            prune_seconds = time.perf_counter() - start
            print(f"  {len(grid)} prunes in {prune_seconds:.1f} s", flush=True)
            runs.append(
                {
                    "seed": seed,
                    "params": sum(p.numel() for p in model.parameters()),
                    "correct_unpruned": correct,
                    "accuracy_unpruned": correct / n_test,
                    "train_seconds": train_seconds,
                    "prune_grid_seconds": prune_seconds,
                    "grid": grid,
                }
            )
        summary = summarize(runs, args.alphas, args.betas, n_test)
        families[family] = {"summary": summary, "runs": runs}
        print_family_table(family, summary, args.alphas, args.betas)

    summaries = {name: entry["summary"] for name, entry in families.items()}
    best = overall_best(summaries)
    output = {
        "description": (
            "CPMC alpha/beta grid: one-shot prune to -flops_reduction MACs of small trained "
            "models on sklearn digits, no fine-tuning; selection by mean BN-recalibrated "
            "test accuracy over seeds (ties: smaller alpha+beta, then smaller alpha)"
        ),
        **started,
        "git_at_end": git_state(),
        "wall_seconds": time.perf_counter() - wall_start,
        "settings": {
            "dataset": "sklearn.datasets.load_digits, /16, bilinear to "
            f"{args.image_size}x{args.image_size}, stratified split seed 0",
            "n_train": len(data.y_train),
            "n_test": n_test,
            "families": args.families,
            "seeds": args.seeds,
            "alphas": args.alphas,
            "betas": args.betas,
            "flops_reduction": args.flops_reduction,
            "importance": {"p": 1, "normalizer": "max-min", "weight_dependency": True},
            "pruner": {"ignored_layers": ["classifier"], "max_pruning_ratio": "default"},
            "training": {
                "optimizer": "SGD momentum 0.9",
                "schedule": "OneCycleLR",
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
            },
            "bn_recalibration": "reset running stats, momentum=None, one pass over the "
            "training set in train mode (no_grad, batches of batch_size), then eval",
        },
        "chosen": {name: summary["chosen"] for name, summary in summaries.items()},
        "overall_best": best,
        "families": families,
    }
    write_json(args.output, output, indent=1)
    print("\nchosen presets:")
    for name, chosen in output["chosen"].items():
        if chosen:
            print(f"  {name}: alpha={chosen['alpha']} beta={chosen['beta']}")
    if best:
        print(
            f"overall best: alpha={best['alpha']} beta={best['beta']} "
            f"({100 * best['mean_accuracy_recal_over_families']:.2f} % mean over families)"
        )
    print(f"wrote {args.output}")
    return output


if __name__ == "__main__":
    main()
