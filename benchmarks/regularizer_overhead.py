"""Cost of OICSR's group lasso in a training step: with ``regularize()`` vs without.

One SGD training step (forward, cross-entropy, backward, optimizer step) of a CIFAR
ResNet-56 (``cpmc_plugin.models.resnet56``) on a random batch of 64 3x32x32 images,
on the CPU, timed in the same process with the variants interleaved:

* ``plain``: the step alone;
* ``regularize``: ``reg.regularize(model)`` between ``backward()`` and ``step()``
  (torch-pruning's convention; the variant the goal is about);
* ``penalty``: ``loss + lam * reg.penalty()`` through autograd;
* ``proximal``: ``reg.proximal_step(lr)`` after ``step()``.

The median over ``--repeats`` rounds is reported with each variant's overhead against
``plain``. Goal: ``regularize`` at most 10 % over ``plain``. Prints a markdown table and
writes JSON with the command, machine, versions, commit and date.

Run from the repository root::

    python benchmarks/regularizer_overhead.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import RESULTS, provenance, write_json

from cpmc_plugin import OICSRRegularizer
from cpmc_plugin.models import create_model

DEFAULT_OUT = RESULTS / "regularizer_overhead.json"
VARIANTS = ("plain", "regularize", "penalty", "proximal")
GOAL = 0.10


def make_steps(model_name: str, batch: int, lam: float, lr: float) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    reg = OICSRRegularizer(model, x[:1], lam=lam, ignored_layers=[model.classifier])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(variant: str) -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if variant == "penalty":
            loss = loss + lam * reg.penalty()
        loss.backward()
        if variant == "regularize":
            reg.regularize(model)
        optimizer.step()
        if variant == "proximal":
            reg.proximal_step(lr)

    return {v: (lambda v=v: step(v)) for v in VARIANTS}


def time_regularizer_alone(model_name: str, lam: float, repeats: int) -> dict[str, float]:
    """Milliseconds of the regularizer calls by themselves (no forward or backward)."""
    model = create_model(model_name, num_classes=10)
    reg = OICSRRegularizer(
        model, torch.randn(1, 3, 32, 32), lam=lam, ignored_layers=[model.classifier]
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    calls = {
        "regularize": reg.regularize,
        "penalty": reg.penalty,
        "proximal_step": lambda: reg.proximal_step(1e-6),
    }
    out = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[name] = 1000 * (time.perf_counter() - start) / repeats
    out["groups"] = reg.num_groups
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lam", type=float, default=1e-4)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    meta = provenance()
    steps = make_steps(args.model, args.batch, args.lam, args.lr)
    for _ in range(args.warmup):
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant, run in steps.items():  # interleaved: load drifts hit all alike
            start = time.perf_counter()
            run()
            times[variant].append(time.perf_counter() - start)
    median = {v: statistics.median(t) for v, t in times.items()}
    overhead = {v: median[v] / median["plain"] - 1.0 for v in VARIANTS}
    alone = time_regularizer_alone(args.model, args.lam, max(args.repeats, 10))

    print(
        f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{alone['groups']} out-in groups"
    )
    print("| variant | median step | overhead |")
    print("|---|---:|---:|")
    for v in VARIANTS:
        print(f"| {v} | {1000 * median[v]:.1f} ms | {100 * overhead[v]:+.1f} % |")
    print(
        "regularizer calls alone: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in alone.items() if k != "groups")
    )
    met = overhead["regularize"] <= GOAL
    print(f"goal (regularize overhead <= {100 * GOAL:.0f} %): {'met' if met else 'NOT met'}")

    result = {
        **meta,
        "model": args.model,
        "batch": args.batch,
        "repeats": args.repeats,
        "lam": args.lam,
        "median_step_s": median,
        "overhead": overhead,
        "regularizer_alone_ms": alone,
        "goal": f"regularize overhead <= {GOAL}",
        "goal_met": met,
        "times_s": times,
        "loadavg_after": list(os.getloadavg()),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
