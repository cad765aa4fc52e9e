"""Every pruning criterion at the same FLOPs budgets: accuracy, and CPU latency vs FLOPs.

Protocol (one process; CPU unless ``--device`` finds a GPU for the training loops):

1. Baseline, once per model: ``--epochs`` (or ``--model-epochs MODEL=N``) of
   ``cpmc_plugin.training.fit`` (SGD momentum 0.9, weight decay 5e-4, cosine learning
   rate from ``--lr``, batch 128, the augmentation of ``cpmc_plugin.data``) on
   ``--train-subset`` training images (seeded selection, as ``make_loaders`` draws it).
   The state dict is cached in ``benchmarks/results/cache/`` under
   ``criteria-{data}-{model}-n{images}-e{epochs}-lr{lr}-s{seed}.pt``, so reruns skip
   training (``--no-cache`` retrains); ``--resume`` skips a model whose cells are all in
   ``--out`` without loading its baseline.
2. Prune, for every criterion and rate, a deep copy of the baseline in one shot with
   ``CPMCPruner(model, x, importance=make_importance(criterion, x, family=...),
   flops_reduction=rate, ignored_layers=[model.classifier])``: every criterion gets the
   same exact MACs budget (within 0.5 pp). ``cpmc`` and ``cpmc-a`` use the model
   family's preset (``cpmc_plugin.get_preset``), ``cpmc-default`` the default
   alpha/beta. ``taylor`` gets the gradients of one fixed training batch (eval mode)
   right before the prune, as ``cpmc-prune prune`` does. Rates: ``--grid-rates`` for
   ``--grid-model``, ``--other-rates`` for the other models.
3. Test accuracy (``--test-subset`` images of the test split, the same for every row):
   right after pruning ("no-FT"); after BatchNorm recalibration
   (``cpmc_plugin.training.recalibrate_bn`` over ``--calib-batches`` batches of 128
   un-augmented training images, the same for every row: "BN-recal"); and after a fixed
   fine-tune of the recalibrated model (``fit`` for ``--finetune-epochs`` on
   ``--finetune-subset`` images of the training subset, cosine from ``--finetune-lr``),
   once per fine-tune seed: ``--seeds`` for the grid model, the first seed only for the
   others (``--other-seeds`` overrides). Mean and sample standard deviation over seeds.
4. CPU latency (eval mode, ``torch.inference_mode``, ``--threads`` threads): per rate,
   the ``cpmc``-pruned model (``--latency-all``: every criterion's) against the
   baseline, interleaved, median over ``--latency-reps`` forward passes of a batch of 64
   (and 5x as many of a batch of 1) after warm-up; measured speed-up vs MACs speed-up
   (baseline MACs / pruned MACs, ``tp.utils.count_ops_and_params``).

Prints a markdown table per model (best value per rate in bold), a mean-rank table and
a latency table, and the seconds spent in each phase; writes JSON (provenance,
options, every raw number, per-phase wall time) to ``benchmarks/results/criteria.json``
after every row, so an interrupted run keeps what it did. ``--markdown`` writes the
tables to a file too.

Models: registry names (``cpmc_plugin.models``: resnet20, vgg16, densenet40, ...) or
the small stand-ins of ``benchmarks/_tiny_models.py`` that the presets were chosen on:
``tiny-vgg`` (VGG-style, 0.30 M params), ``tiny-resnet``, ``tiny-densenet``
(DenseNet-style, 0.08 M params). At 28x28, VGG-16 costs about 7x and DenseNet-40 about
12x a ResNet-20 per training image on a CPU, so the CPU default uses the stand-ins.

Run from the repository root. The default, on 2 CPU cores with nothing else running,
takes an estimated 45 to 50 minutes (about 28 for ResNet-20's 30 rows with 3 fine-tunes
each, 6 for tiny-vgg, 12 for tiny-densenet; the baselines are about 5 of that, skipped
with the cache). Estimated from per-image timings at 28x28 (1 thread: ResNet-20 5.0 ms
to train, 2.0 ms to evaluate; tiny-vgg 5.0/2.1; tiny-densenet 7.9/4.4) and about 1.7x
for 2 threads; the phase table of a real run replaces it::

    python benchmarks/criteria.py --markdown benchmarks/results/criteria.md

That is ``--dataset fashion-mnist --models resnet20 tiny-vgg tiny-densenet
--grid-model resnet20 --grid-rates 0.3 0.5 0.7 --other-rates 0.5 --criteria`` (all ten)
``--epochs 3 --train-subset 10000 --finetune-epochs 1 --finetune-subset 5000
--test-subset 5000 --calib-batches 20 --seeds 0 1 2 --threads 2``. Evaluation is about
a third of the time: ``--test-subset`` is the knob for it, ``--no-finetune`` leaves
about a quarter. On a GPU (training, evaluation and recalibration there, latency still
on the CPU), one model per run, e.g.::

    python benchmarks/criteria.py --models vgg16 --grid-model vgg16 --train-subset 0 \
        --epochs 15 --finetune-subset 20000 --finetune-epochs 2 --test-subset 0 \
        --threads 8 --workers 4 --out benchmarks/results/criteria_gpu_vgg16.json

Quick check (seconds)::

    python benchmarks/criteria.py --dataset digits --models resnet20 --grid-rates 0.5 \\
        --criteria cpmc l1 taylor --epochs 1 --seeds 0 --threads 1 --out /tmp/crit.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from _common import (
    CACHE_DIR,
    RESULTS,
    cached_baseline,
    git_state,
    log,
    provenance,
    relative,
    shuffled,
    with_digits_fallback,
    write_json,
)
from _criteria_report import report
from _tiny_models import FAMILIES, build_model
from torch.utils.data import DataLoader, Subset

from cpmc_plugin import get_preset
from cpmc_plugin.core.presets import DEFAULT_ALPHA, DEFAULT_BETA, family_of
from cpmc_plugin.criteria import (
    CRITERIA,
    make_importance,
    needs_calibration,
    needs_data,
    needs_gradients,
)
from cpmc_plugin.data import dataset_info, load_dataset, make_loaders
from cpmc_plugin.models import create_model, list_models
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from cpmc_plugin.training import Distributed, accuracy, fit, recalibrate_bn

DEFAULT_OUT = RESULTS / "criteria.json"
ALL_CRITERIA = (*CRITERIA, "cpmc-default")
TINY = "tiny-"
BATCH, EVAL_BATCH = 128, 500
LATENCY_BATCHES = (64, 1)


class Phases:
    """Wall-clock seconds per phase, per model and in total."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    @contextmanager
    def __call__(self, model: str, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[model][phase] += time.perf_counter() - started

    def as_dict(self) -> dict[str, dict[str, float]]:
        out = {m: {p: round(s, 1) for p, s in d.items()} for m, d in self.seconds.items()}
        total: dict[str, float] = defaultdict(float)
        for phases in self.seconds.values():
            for phase, seconds in phases.items():
                total[phase] += seconds
        out["total"] = {p: round(s, 1) for p, s in total.items()}
        return out


# ---------------------------------------------------------------------------- data
def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """Loaders of the data set (digits, with a warning, if it is not installed)."""
    data, _, data["fallback_reason"] = with_digits_fallback(lambda n: _load(n, args), args.dataset)
    return data


def _size(requested: int | None, available: int) -> int | None:
    return None if not requested or requested >= available else requested


def _load(name: str, args: argparse.Namespace) -> dict[str, Any]:
    info = dataset_info(name)
    train_subset = _size(args.train_subset, info.train_size)
    train, test, info = make_loaders(
        name,
        args.data_root,
        batch_size=BATCH,
        train_subset=train_subset,
        test_subset=_size(args.test_subset, info.test_size),
        seed=args.data_seed,
        num_workers=args.workers,
    )
    train_set: Any = train.dataset
    indices = (
        list(train_set.indices) if isinstance(train_set, Subset) else list(range(len(train_set)))
    )
    plain = load_dataset(name, args.data_root, train=True, augment=False)
    ft_size = _size(args.finetune_subset, len(indices)) or len(indices)
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(args.data_seed))
    finetune_set = Subset(train_set, sorted(order[:ft_size].tolist()))
    calib = Subset(plain, indices[: args.calib_batches * BATCH])
    test_set: Any = test.dataset
    return {
        "name": name,
        "info": info,
        "train": train,
        "train_set": train_set,
        "finetune_set": finetune_set,
        "calib": DataLoader(calib, batch_size=BATCH),
        "test": DataLoader(test_set, batch_size=EVAL_BATCH),
        "example": plain[indices[0]][0].unsqueeze(0),
        "sizes": {
            "train": len(train_set),
            "finetune": len(finetune_set),
            "calibration": len(calib),
            "test": len(test_set),
        },
    }


class OnDevice:
    """Iterate a loader with its images moved to ``device`` (for ``recalibrate_bn``)."""

    def __init__(self, loader: DataLoader[Any], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device), labels


# ---------------------------------------------------------------------------- models
def build(model_name: str, info: Any) -> nn.Module:
    kwargs = {"in_channels": info.in_channels, "num_classes": info.num_classes}
    if model_name.startswith(TINY):
        return build_model(model_name[len(TINY) :], **kwargs)
    return create_model(model_name, **kwargs)


def percent(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> float:
    return 100.0 * accuracy(model, loader, device)


def recalibrate(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> None:
    batches = OnDevice(loader, device)
    recalibrate_bn(model.to(device), batches, batches=len(loader))  # type: ignore[arg-type]
    model.to("cpu").eval()


def baseline(
    model_name: str, data: dict[str, Any], args: argparse.Namespace, env: Distributed
) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(args.base_seed)
    model = build(model_name, data["info"])
    n, epochs = data["sizes"]["train"], epochs_of(args, model_name)
    key = f"criteria-{data['name']}-{model_name}-n{n}-e{epochs}-lr{args.lr:g}-s{args.base_seed}"
    path = args.cache_dir / f"{key}.pt"

    def train_baseline() -> dict[str, Any]:
        log(f"[{model_name}] training baseline {key} on {env.device}")
        started = time.perf_counter()
        fit(
            model,
            data["train"],
            epochs=epochs,
            lr=args.lr,
            env=env,
            desc=f"{model_name} train",
        )
        return {"train_s": round(time.perf_counter() - started, 1), "device": str(env.device)}

    cached, kept = cached_baseline(model, path, train_baseline, no_cache=args.no_cache)
    return model.eval(), {"cache_file": relative(path), "cached": cached, "epochs": epochs, **kept}


def epochs_of(args: argparse.Namespace, model_name: str) -> int:
    """The baseline training epochs of ``model_name``: ``--model-epochs``, else ``--epochs``."""
    return int(args.model_epochs.get(model_name, args.epochs))


def kept_rows(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The resumed rows that stay: not failed, and not of a ``--rerun`` criterion."""
    rows = result.get("rows", [])
    return [r for r in rows if "error" not in r and r["criterion"] not in args.rerun]


def is_complete(result: dict[str, Any], plan: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether a resumed model has every cell, fine-tune seed and latency row of ``plan``
    (then its baseline is neither trained nor loaded again)."""
    rows = {(r["criterion"], r["rate"]): r for r in kept_rows(result, args)}
    if any((c, rate) not in rows for rate in plan["rates"] for c in args.criteria):
        return False
    if not args.no_finetune:
        for rate in [r for r in plan["rates"] if r in plan["finetune_rates"]]:
            for c in args.criteria:
                if any(str(s) not in rows[(c, rate)].get("acc_ft", {}) for s in plan["seeds"]):
                    return False
    return not args.latency_reps or bool(result.get("latency"))


def cell_seed(model_name: str, criterion: str, rate: float) -> int:
    """The seed of one cell's prune (``random`` draws from it), the same on every rerun."""
    return zlib.crc32(f"{model_name}/{criterion}/{rate!r}".encode())


def prune(
    model: nn.Module,
    criterion: str,
    rate: float,
    example: torch.Tensor,
    family: str | None,
    grad_batch: tuple[torch.Tensor, torch.Tensor],
    calibration: DataLoader[Any],
    finetune_steps: int = 0,
) -> tuple[str, dict[str, Any] | None]:
    """Prune ``model`` in place to ``rate`` fewer MACs; return the importance's repr and,
    for ``cpmc-auto``, its calibration report (calibrated on ``calibration``, with a
    short fine-tune of ``finetune_steps`` steps for its best plans)."""
    name = "cpmc" if criterion == "cpmc-default" else criterion
    importance = make_importance(
        name,
        example,
        family=None if criterion == "cpmc-default" else family,
        data=calibration if needs_data(name) else None,
    )
    model.eval()
    pruner = prune_to_budget(
        model,
        example,
        importance,
        flops_reduction=rate,
        needs_gradients=needs_gradients(name),
        grad_batch=grad_batch,
        calibration_data=calibration if needs_calibration(name) else None,
        calibration_finetune_steps=finetune_steps if needs_calibration(name) else 0,
    )
    model.zero_grad(set_to_none=True)
    importance = pruner.importance
    report = pruner.calibration.as_dict() if pruner.calibration is not None else None
    text = repr(importance)  # torch-pruning's importances have no repr of their own
    return (type(importance).__name__ if " object at 0x" in text else text), report


# ---------------------------------------------------------------------------- latency
@torch.inference_mode()
def latency_ms(models: dict[str, nn.Module], batch: int, example: torch.Tensor, reps: int) -> dict:
    """Median milliseconds per forward pass of each model, interleaved, after warm-up."""
    x = example.expand(batch, *example.shape[1:]).contiguous()
    for model in models.values():
        model.to("cpu").eval()
    for _ in range(max(2, reps // 10)):
        for model in models.values():
            model(x)
    times: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(reps):
        for key, model in models.items():
            started = time.perf_counter()
            model(x)
            times[key].append(time.perf_counter() - started)
    return {key: 1e3 * statistics.median(values) for key, values in times.items()}


def measure_latency(
    base: nn.Module,
    pruned: dict[str, nn.Module],
    example: torch.Tensor,
    reps: int,
    base_macs: float,
    macs: dict[str, float],
) -> list[dict[str, Any]]:
    rows = []
    for batch in LATENCY_BATCHES:
        n = reps if batch > 1 else 5 * reps
        for key, model in pruned.items():
            ms = latency_ms({"base": base, "pruned": model}, batch, example, n)
            rows.append(
                {
                    "label": key,
                    "batch": batch,
                    "reps": n,
                    "base_ms": ms["base"],
                    "pruned_ms": ms["pruned"],
                    "speedup": ms["base"] / ms["pruned"],
                    "macs_speedup": base_macs / macs[key],
                }
            )
    return rows


# ---------------------------------------------------------------------------- one model
def _prune_cell(
    base: nn.Module, criterion: str, rate: float, ctx: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``base`` (seeded per cell), re-measure BatchNorm, evaluate."""
    model = copy.deepcopy(base)
    torch.manual_seed(cell_seed(ctx["model"], criterion, rate))
    started = time.perf_counter()
    with ctx["phases"](ctx["model"], "prune"):
        imp, calibration = prune(
            model, criterion, rate, ctx["example"], ctx["family"], ctx["grad_batch"],
            ctx["data"]["calib"], ctx["calibration_finetune_steps"],
        )  # fmt: skip
    prune_s = time.perf_counter() - started
    macs, params = tp.utils.count_ops_and_params(model, ctx["example"])
    row: dict[str, Any] = {
        "criterion": criterion,
        "rate": rate,
        "git_commit": ctx["commit"],  # the code that measured this cell
        "importance": imp,
        "macs": int(macs),
        "params": int(params),
        "macs_reduction": 1 - macs / ctx["base_macs"],
        "params_reduction": 1 - params / ctx["base_params"],
        "prune_s": round(prune_s, 2),
    }
    if calibration is not None:
        row["calibrate_s"] = calibration["seconds"]
        row["calibration"] = calibration
    device = ctx["env"].device
    with ctx["phases"](ctx["model"], "evaluate"):
        row["acc_no_ft"] = percent(model, ctx["data"]["test"], device)
    with ctx["phases"](ctx["model"], "bn_recal"):
        recalibrate(model, ctx["data"]["calib"], device)
    with ctx["phases"](ctx["model"], "evaluate"):
        row["acc_bn_recal"] = percent(model, ctx["data"]["test"], device)
    return model, row


def _finetune(
    model: nn.Module, criterion: str, seed: int, args: argparse.Namespace, ctx: dict[str, Any]
) -> float:
    tuned = copy.deepcopy(model)
    torch.manual_seed(seed)  # augmentation draws from the global RNG
    with ctx["phases"](ctx["model"], "finetune"):
        fit(
            tuned,
            shuffled(ctx["data"]["finetune_set"], seed, workers=args.workers),
            epochs=args.finetune_epochs,
            lr=args.finetune_lr,
            env=ctx["env"],
            desc=f"{criterion} ft",
        )
    with ctx["phases"](ctx["model"], "evaluate"):
        return percent(tuned, ctx["data"]["test"], ctx["env"].device)


def _summarize_ft(row: dict[str, Any]) -> None:
    values = list(row["acc_ft"].values())
    row["acc_ft_mean"] = statistics.fmean(values) if values else None
    row["acc_ft_std"] = statistics.stdev(values) if len(values) > 1 else None


def run_model(
    model_name: str,
    plan: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
    env: Distributed,
    phases: Phases,
    result: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Fill ``result`` (saved after every cell) with one model's baseline, rows and latency.

    Two passes: first every (rate, criterion) cell is pruned, BatchNorm re-measured and
    evaluated; then the fine-tunes run (``plan["finetune_rates"]`` x ``plan["seeds"]``).
    Rows and fine-tune seeds already in ``result`` (``--resume``) are kept, not rerun.
    """
    rates, seeds, ft_rates = plan["rates"], plan["seeds"], plan["finetune_rates"]
    family = family_of(model_name)
    with phases(model_name, "baseline_train"):
        base, trained = baseline(model_name, data, args, env)
    example = data["example"]
    base_macs, base_params = tp.utils.count_ops_and_params(base, example)
    if "baseline" in result and result["baseline"].get("acc") is not None:
        base_acc = result["baseline"]["acc"]
    else:
        with phases(model_name, "evaluate"):
            base_acc = percent(base, data["test"], env.device)
    log(
        f"[{model_name}] baseline {base_acc:.2f} %, {base_macs / 1e6:.2f} M MACs, "
        f"{base_params / 1e6:.3f} M params; family {family}"
    )
    torch.manual_seed(args.base_seed)
    grad_batch = next(iter(shuffled(data["train_set"], args.base_seed)))
    resumed_rows = kept_rows(result, args)
    result.update(
        {
            "model": model_name,
            "family": family,
            "preset": vars(get_preset(family)) if family else None,
            "rates": rates,
            "finetune_rates": [] if args.no_finetune else ft_rates,
            "finetune_seeds": [] if args.no_finetune else seeds,
            "baseline": {
                **trained,
                "acc": base_acc,
                "macs": int(base_macs),
                "params": int(base_params),
            },
            "rows": resumed_rows,
            "latency": result.get("latency", []),
        }
    )
    save()
    ctx = {
        "model": model_name,
        "family": family,
        "example": example,
        "grad_batch": grad_batch,
        "data": data,
        "env": env,
        "phases": phases,
        "base_macs": base_macs,
        "base_params": base_params,
        "commit": git_state()["git_commit"],
        "calibration_finetune_steps": args.calibration_finetune_steps,
    }
    rows = {(r["criterion"], r["rate"]): r for r in result["rows"]}
    pruned: dict[tuple[str, float], nn.Module] = {}
    for rate in rates:  # pass 1: every cell without fine-tuning
        for criterion in args.criteria:
            if (criterion, rate) in rows:
                continue
            label = f"[{model_name}] {criterion} @ {rate:.0%}"
            try:
                model, row = _prune_cell(base, criterion, rate, ctx)
            except Exception as error:  # one criterion's failure is a result, go on
                log(f"{label}: prune failed: {type(error).__name__}: {error}")
                result["rows"].append(
                    {
                        "criterion": criterion,
                        "rate": rate,
                        "error": f"{type(error).__name__}: {error}",
                    }
                )
                save()
                continue
            row["acc_ft"] = {}
            _summarize_ft(row)
            rows[(criterion, rate)] = row
            result["rows"].append(row)
            pruned[(criterion, rate)] = model
            save()
            log(
                f"{label}: MACs -{100 * row['macs_reduction']:.1f} %, params "
                f"-{100 * row['params_reduction']:.1f} %, no-FT {row['acc_no_ft']:.2f}, "
                f"BN-recal {row['acc_bn_recal']:.2f} ({row['prune_s']:.1f} s prune)"
            )
    for rate in [] if args.no_finetune else [r for r in rates if r in ft_rates]:  # pass 2
        for criterion in args.criteria:
            row = rows.get((criterion, rate))
            missing = [s for s in seeds if row is not None and str(s) not in row["acc_ft"]]
            if not missing:
                continue
            assert row is not None
            model = pruned.pop((criterion, rate), None)
            if model is None:  # resumed: prune the cell again (deterministic, seeded)
                model, _ = _prune_cell(base, criterion, rate, ctx)
            for seed in missing:
                started = time.perf_counter()
                row["acc_ft"][str(seed)] = _finetune(model, criterion, seed, args, ctx)
                _summarize_ft(row)
                save()
                log(
                    f"[{model_name}] {criterion} @ {rate:.0%}: fine-tune seed {seed}: "
                    f"{row['acc_ft'][str(seed)]:.2f} ({time.perf_counter() - started:.1f} s)"
                )
    if args.latency_reps and not result["latency"]:
        for rate in rates:
            chosen = [
                c
                for c in args.criteria
                if args.latency_all or c == latency_criterion(args.criteria)
            ]
            kept: dict[str, nn.Module] = {}
            macs_of: dict[str, float] = {}
            for criterion in chosen:
                row = rows.get((criterion, rate))
                if row is None or "error" in row:
                    continue
                model = pruned.pop((criterion, rate), None)
                if model is None:
                    model, _ = _prune_cell(base, criterion, rate, ctx)
                kept[criterion], macs_of[criterion] = model.eval(), float(row["macs"])
            if not kept:
                continue
            with phases(model_name, "latency"):
                lat = measure_latency(base, kept, example, args.latency_reps, base_macs, macs_of)
            for r in lat:
                r["rate"] = rate
                log(
                    f"[{model_name}] latency {r['label']} @ {rate:.0%}, batch {r['batch']}: "
                    f"{r['base_ms']:.2f} -> {r['pruned_ms']:.2f} ms, x{r['speedup']:.2f} "
                    f"(MACs x{r['macs_speedup']:.2f})"
                )
            result["latency"] += lat
            save()


def latency_criterion(criteria: list[str]) -> str:
    return "cpmc" if "cpmc" in criteria else criteria[0]


# ---------------------------------------------------------------------------- main
def known_model(name: str) -> str:
    key = name.strip().lower()
    tiny = [TINY + f for f in FAMILIES]
    if key not in list_models() and key not in tiny:
        raise argparse.ArgumentTypeError(
            f"unknown model {name!r}; known: {', '.join([*list_models(), *tiny])}"
        )
    return key


def rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a rate must lie in (0, 1), got {text}")
    return value


def model_epochs(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not count.strip().isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected MODEL=EPOCHS with EPOCHS >= 1, got {text!r}")
    return known_model(name), int(count)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="digits if it is not installed")
    p.add_argument("--data-root", default=None, help="where the data set lies (cifar10, ...)")
    p.add_argument(
        "--models", nargs="+", type=known_model, default=["resnet20", "tiny-vgg", "tiny-densenet"]
    )
    p.add_argument(
        "--grid-models", "--grid-model", nargs="+", type=known_model, default=["resnet20"],
        help="models fine-tuned at every rate with every seed",
    )  # fmt: skip
    p.add_argument("--grid-rates", nargs="+", type=rate, default=[0.3, 0.5, 0.7])
    p.add_argument("--other-rates", nargs="+", type=rate, default=[0.5])
    p.add_argument(
        "--other-finetune-rates", nargs="+", type=rate, default=None,
        help="the rates the other models are fine-tuned at (default: all --other-rates)",
    )  # fmt: skip
    p.add_argument(
        "--resume", action="store_true",
        help="keep the cells and fine-tune seeds already in --out and run only the rest",
    )  # fmt: skip
    p.add_argument(
        "--rerun", nargs="+", default=[], metavar="CRITERION",
        help="with --resume: measure these criteria's cells again (e.g. after a change)",
    )  # fmt: skip
    p.add_argument("--criteria", nargs="+", choices=ALL_CRITERIA, default=list(ALL_CRITERIA))
    p.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    p.add_argument(
        "--model-epochs", nargs="+", type=model_epochs, default=[], metavar="MODEL=N",
        help="baseline epochs of these models instead of --epochs (e.g. densenet40=2)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=0.1, help="baseline learning rate (cosine)")
    p.add_argument("--train-subset", type=int, default=10000, help="0: the whole split")
    p.add_argument("--test-subset", type=int, default=5000, help="0: the whole split")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument(
        "--finetune-subset", type=int, default=5000, help="of the training subset; 0: all of it"
    )
    p.add_argument("--calib-batches", type=int, default=20, help="of 128 images, BN recal")
    p.add_argument(
        "--calibration-finetune-steps", type=int, default=0,
        help="cpmc-auto: fine-tune the calibration's best 8 plans this many steps",
    )  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="grid model FT seeds")
    p.add_argument("--other-seeds", nargs="+", type=int, default=None, help="default: first seed")
    p.add_argument("--no-finetune", action="store_true", help="no-FT and BN-recal only")
    p.add_argument("--base-seed", type=int, default=0, help="baseline training seed")
    p.add_argument("--data-seed", type=int, default=0, help="subset selection and shuffling")
    p.add_argument("--latency-reps", type=int, default=20, help="batch 64 (batch 1: 5x); 0: none")
    p.add_argument("--latency-all", action="store_true", help="time every criterion's model")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for training")
    p.add_argument("--no-cache", action="store_true", help="retrain the baselines")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="trained baselines")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--markdown", type=Path, default=None, help="write the tables here too")
    p.add_argument(
        "--report-only", action="store_true",
        help="print (and --markdown) the tables of --out as it is, running nothing",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.latency_reps < 0:
        p.error("--latency-reps must be >= 0")
    for name in ("epochs", "finetune_epochs", "calib_batches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible to torch")
    args.criteria = list(dict.fromkeys(args.criteria))
    args.model_epochs = dict(args.model_epochs)
    return args


#: options that change what a cell measures: a resumed run must match them
_CELL_OPTIONS = (
    "dataset", "epochs", "lr", "train_subset", "test_subset", "finetune_epochs",
    "finetune_lr", "finetune_subset", "calib_batches", "base_seed", "data_seed",
)  # fmt: skip


def resumed(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The per-model results of ``--out`` to continue (``--resume``), else none.

    Raises:
        SystemExit: the file was written with other cell options (a mixed table).
    """
    if not args.resume or not args.out.exists():
        return {}
    saved = json.loads(args.out.read_text())
    options = saved.get("options", {})
    changed = [k for k in _CELL_OPTIONS if options.get(k) != getattr(args, k)]
    if changed:
        raise SystemExit(
            f"--resume: {args.out} was written with other {', '.join(changed)}; "
            "rerun with the same options or another --out"
        )
    out = {}
    for result in saved.get("results", []):
        trained = result.get("baseline", {}).get("epochs", options.get("epochs"))
        if result.get("rows") and trained != epochs_of(args, result["model"]):
            raise SystemExit(
                f"--resume: {result['model']}'s baseline in {args.out} was trained for "
                f"{trained} epochs, not {epochs_of(args, result['model'])}; use another --out"
            )
        result["wall_s_before"] = result.get("wall_s", 0.0)
        out[result["model"]] = result
    log(f"--resume: {sum(len(r.get('rows', [])) for r in out.values())} cells from {args.out}")
    return out


def report_only(args: argparse.Namespace) -> dict[str, Any]:
    """The tables of the result file ``--out``, as they stand (a run may still add to it)."""
    saved = json.loads(args.out.read_text())
    seconds = {k: v for k, v in saved.get("phase_seconds", {}).items() if k != "total"}
    threads = argparse.Namespace(threads=saved["options"]["threads"])
    text = report(saved["results"], seconds, threads)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return saved


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch_pruning")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    env = Distributed(0, 1, torch.device("cuda" if cuda else "cpu"))
    phases = Phases()
    started = time.perf_counter()
    with phases("data", "load"):
        data = load_data(args)
    log(f"data: {data['name']}, {data['sizes']}; training on {env.device}")
    results: list[dict[str, Any]] = []
    previous = resumed(args)
    earlier: list[dict[str, Any]] = []
    if previous:  # the phases of the runs before add up with this one's
        before = json.loads(args.out.read_text())
        earlier = [*before.get("earlier_runs", []), before["provenance"]]
        saved = before.get("phase_seconds", {})
        for model, spent in saved.items():
            if model != "total":
                for phase, seconds in spent.items():
                    phases.seconds[model][phase] += seconds
    out: dict[str, Any] = {
        "provenance": provenance(str(env.device)),
        "options": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "dataset_used": data["name"],
            "dataset_fallback_reason": data["fallback_reason"],
            "sizes": data["sizes"],
            "default_alpha_beta": [DEFAULT_ALPHA, DEFAULT_BETA],
            "protocol": __doc__.split("\n\n")[1],
        },
        "results": results,
        "earlier_runs": earlier,  # the provenance of every run --resume continued
    }

    def save() -> None:
        out["phase_seconds"] = phases.as_dict()
        out["wall_s"] = round(time.perf_counter() - started, 1)
        write_json(args.out, out)

    for model_name in args.models:
        grid = model_name in args.grid_models
        rates = args.grid_rates if grid else args.other_rates
        plan = {
            "rates": rates,
            "seeds": args.seeds if grid else (args.other_seeds or args.seeds[:1]),
            "finetune_rates": rates if grid else (args.other_finetune_rates or rates),
        }
        model_started = time.perf_counter()
        result = previous.get(model_name, {"model": model_name})
        results.append(result)
        if is_complete(result, plan, args):
            log(f"[{model_name}] every cell is in {args.out} already: skipped")
            continue
        run_model(model_name, plan, data, args, env, phases, result, save)
        result["wall_s"] = round(
            result.get("wall_s_before", 0.0) + time.perf_counter() - model_started, 1
        )
        save()
        log(f"[{model_name}] done in {result['wall_s']:.0f} s")

    seconds = phases.as_dict()
    text = report(results, {k: v for k, v in seconds.items() if k != "total"}, args)
    print(text)
    wall = time.perf_counter() - started
    print(f"\nwall-clock: {wall:.0f} s; data {data['name']}, sizes {data['sizes']}")
    out["markdown"] = text
    save()
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    log(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
    return out


if __name__ == "__main__":
    main()
