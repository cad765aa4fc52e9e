"""Wall-clock time to prune torchvision models: torch-pruning's MetaPruner vs CPMCPruner.

For each model (torchvision ``resnet50``, ``densenet121`` and ``mobilenet_v2``,
``weights=None``, eval mode, input ``torch.randn(1, 3, 224, 224)``, fixed seed) it times,
on a fresh deep copy each time:

* host: ``tp.pruner.MetaPruner(model, x, importance=GroupMagnitudeImportance(p=2),
  global_pruning=True, pruning_ratio=0.5, ignored_layers=[classifier])`` + ``.step()``;
* ours: ``cpmc_plugin.CPMCPruner(model, x, flops_reduction=0.5,
  ignored_layers=[classifier])`` + ``.step()`` (default importance: ``CPMCImportance``).

Only construction (graph building included) + ``step()`` is inside the timed region
(``time.perf_counter``), and each is also timed on its own (``init_s``, ``step_s``):
where the time goes. The repeats alternate host/ours and the median is reported, with
the MACs reduction each reached (``tp.utils.count_ops_and_params``; for ours also
``pruner.report()``) and the ratio ours/host (goal: <= 1.0).
``torch.set_num_threads`` is left at its default unless ``--threads`` is given (on a
shared, oversubscribed machine ``--threads 1`` gives far steadier numbers). Prints a
markdown table and writes JSON (results plus command line, platform, CPU, library
versions and UTC date).

Run from the repository root::

    python benchmarks/prune_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from _common import RESULTS, provenance, write_json
from torch import nn

import cpmc_plugin
from cpmc_plugin.torch_pruning import pruner as pruner_module
from cpmc_plugin.torch_pruning.applying import Applier
from cpmc_plugin.torch_pruning.cost.meter import Meter
from cpmc_plugin.torch_pruning.planning.planner import Planner

#: model name -> the layer kept whole (the classifier)
CLASSIFIER = {"resnet50": "fc", "densenet121": "classifier", "mobilenet_v2": "classifier.1"}
GOAL = 1.0  # CPMC's time at most the host's
DEFAULT_OUT = RESULTS / "prune_speed.json"


def run_host(model: nn.Module, x: torch.Tensor, classifier: nn.Module) -> tuple[Any, float]:
    started = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=0.5,
        ignored_layers=[classifier],
    )
    built = time.perf_counter() - started
    pruner.step()
    return pruner, built


def run_ours(model: nn.Module, x: torch.Tensor, classifier: nn.Module) -> tuple[Any, float]:
    started = time.perf_counter()
    pruner = cpmc_plugin.CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier])
    built = time.perf_counter() - started
    pruner.step()
    return pruner, built


#: the parts of CPMC's init + step that ``--breakdown`` times: ``(label, owner, method)``
#: (init includes ``trace``, the host's own graph building; ``plan`` includes ``score``,
#: ``check_reachable`` the cost model it builds first)
PHASES = (
    ("trace", pruner_module, "trace_with_host"),
    ("units", Planner, "units"),
    ("cost_model", Meter, "cost_model"),
    ("check_reachable", Planner, "check_reachable"),
    ("score", Planner, "score"),
    ("plan", Planner, "plan"),
    ("apply", Applier, "apply"),
    ("check_runs", Applier, "check_runs"),
)


@contextlib.contextmanager
def _timing_phases() -> Iterator[dict[str, float]]:
    """Add up the wall time of each of :data:`PHASES` inside the block."""
    spent: dict[str, float] = {}
    originals = [(owner, attr, getattr(owner, attr)) for _, owner, attr in PHASES]

    def timed(label: str, real: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        return run

    for (label, owner, attr), (_, _, real) in zip(PHASES, originals, strict=True):
        setattr(owner, attr, timed(label, real))
    try:
        yield spent
    finally:
        for owner, attr, real in originals:
            setattr(owner, attr, real)


def breakdown(name: str, repeats: int, seed: int, image_size: int) -> dict[str, float]:
    """Median seconds per part of CPMC's init + step (see :data:`PHASES`)."""
    torch.manual_seed(seed)
    base = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, image_size, image_size)
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        model = copy.deepcopy(base)
        classifier = model.get_submodule(CLASSIFIER[name])
        with _timing_phases() as spent:
            started = time.perf_counter()
            pruner = cpmc_plugin.CPMCPruner(
                model, x, flops_reduction=0.5, ignored_layers=[classifier]
            )
            built = time.perf_counter() - started
            pruner.step()
            total = time.perf_counter() - started
        runs.append({**spent, "init": built, "total": total})
    return {key: statistics.median(r.get(key, 0.0) for r in runs) for key in runs[0]}


def bench_model(name: str, repeats: int, seed: int, image_size: int = 224) -> dict[str, Any]:
    torch.manual_seed(seed)
    base = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, image_size, image_size)
    base_macs, _ = tp.utils.count_ops_and_params(base, x)
    times: dict[str, list[float]] = {"host": [], "ours": []}
    inits: dict[str, list[float]] = {"host": [], "ours": []}
    cpu: dict[str, list[float]] = {"host": [], "ours": []}
    macs_red: dict[str, float] = {}
    report_red = float("nan")
    for _ in range(repeats):
        for kind, fn in (("host", run_host), ("ours", run_ours)):
            model = copy.deepcopy(base)
            classifier = model.get_submodule(CLASSIFIER[name])
            start, start_cpu = time.perf_counter(), time.process_time()
            pruner, built = fn(model, x, classifier)
            times[kind].append(time.perf_counter() - start)
            inits[kind].append(built)
            cpu[kind].append(time.process_time() - start_cpu)
            macs, _ = tp.utils.count_ops_and_params(model, x)
            macs_red[kind] = 1.0 - macs / base_macs
            if kind == "ours":
                report_red = pruner.report().macs_reduction
            del pruner, model
    host, ours = statistics.median(times["host"]), statistics.median(times["ours"])
    return {
        "model": name,
        "host_s": host,
        "ours_s": ours,
        "ratio": ours / host,
        "goal_met": ours / host <= GOAL,
        "host_init_s": statistics.median(inits["host"]),
        "host_step_s": statistics.median(
            [t - i for t, i in zip(times["host"], inits["host"], strict=True)]
        ),
        "ours_init_s": statistics.median(inits["ours"]),
        "ours_step_s": statistics.median(
            [t - i for t, i in zip(times["ours"], inits["ours"], strict=True)]
        ),
        "cpu_ratio": statistics.median(cpu["ours"]) / statistics.median(cpu["host"]),
        "host_macs_reduction": macs_red["host"],
        "ours_macs_reduction": macs_red["ours"],
        "ours_report_macs_reduction": report_red,
        "host_times_s": times["host"],
        "ours_times_s": times["ours"],
        "host_cpu_s": cpu["host"],  # process CPU time (all threads), less load-sensitive
        "ours_cpu_s": cpu["ours"],
        "base_macs": base_macs,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | host s (init + step) | CPMC s (init + step) | ratio | host MACs red. "
        "| CPMC MACs red. |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        host = f"{r['host_s']:.2f} ({r['host_init_s']:.2f} + {r['host_step_s']:.2f})"
        ours = f"{r['ours_s']:.2f} ({r['ours_init_s']:.2f} + {r['ours_step_s']:.2f})"
        lines.append(
            f"| {r['model']} | {host} | {ours} | {r['ratio']:.2f}x "
            f"| {100 * r['host_macs_reduction']:.2f} % | {100 * r['ours_macs_reduction']:.2f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pruner")
    parser.add_argument("--models", nargs="+", default=list(CLASSIFIER), choices=list(CLASSIFIER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads(N); 0 keeps the default"
    )
    parser.add_argument("--image-size", type=int, default=224, help="input height and width")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time CPMC's phases (separate runs)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    meta = provenance()  # the code timed: git_commit plus the src diff of src_diff_sha1
    results = [bench_model(name, args.repeats, args.seed, args.image_size) for name in args.models]
    print(table(results))
    for result in results:
        verdict = (
            "met" if result["goal_met"] else f"missed by {100 * (result['ratio'] / GOAL - 1):.0f} %"
        )
        print(f"{result['model']}: {result['ratio']:.2f}x, goal <= {GOAL}x {verdict}")
    if args.breakdown:
        for result in results:
            name = result["model"]
            result["ours_phases_s"] = breakdown(name, args.repeats, args.seed, args.image_size)
            print(f"{name}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in result["ours_phases_s"].items()
            ))  # fmt: skip
    meta.update(
        loadavg_before_after=[meta.pop("loadavg"), os.getloadavg()],
        repeats=args.repeats,
        seed=args.seed,
        image_size=args.image_size,
        goal=f"ours_s / host_s <= {GOAL}",
    )
    write_json(args.out, {**meta, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
