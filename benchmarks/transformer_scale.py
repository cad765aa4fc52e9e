"""CPMCPruner on a 0.5B-parameter LLaMA-style model: time and peak memory against the host.

The model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query heads, 2 key/value
heads, MLP 4864, vocabulary 151936, tied embeddings) with random weights, built from a
config (no download). Each measurement runs in a fresh process:

- ``cpmc``: ``CPMCPruner(model, tokens, flops_reduction=0.3, **head_options(model))``
  and one ``step()``, graph building included;
- ``host``: torch-pruning's ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)``, the
  same head options, ``pruning_ratio=0.3`` and ``head_pruning_ratio=0.3`` (the host works
  in ratios), built inside ``cpmc_plugin.fixed_graphs()`` (without it the host's grouping
  never ends on this model), and one ``step()``.

Peak memory is the process's high-water mark (``VmHWM``, reset after the model is built)
minus its resident size before the model was built, as a multiple of the model's
parameter bytes. Goals (issue 14): time at most 1.5x the host's, peak at most 2x the
model's size.

    python benchmarks/transformer_scale.py --out benchmarks/results/transformer_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIME_GOAL = 1.5
MEMORY_GOAL = 2.0


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(mode: str, tokens: int, layers: int, vocab: int) -> dict[str, Any]:
    import torch
    import torch_pruning as tp
    import transformers

    from cpmc_plugin import CPMCPruner, fixed_graphs, head_options

    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    before_model = _status("VmRSS")
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation="eager",
        use_cache=False,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    x = torch.randint(0, config.vocab_size, (1, tokens))
    unique = {id(p): p for p in model.parameters()}
    model_bytes = sum(p.numel() * p.element_size() for p in unique.values())
    params = sum(p.numel() for p in unique.values())
    options = head_options(model)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    start = time.perf_counter()
    if mode == "cpmc":
        pruner = CPMCPruner(model, x, flops_reduction=0.3, **options)
        built = time.perf_counter()
        pruner.step()
        reduction = pruner.report().macs_reduction
    else:
        host = {"num_heads": options["num_heads"], "ignored_layers": options["output_layers"]}
        with fixed_graphs():
            meta = tp.pruner.MetaPruner(
                model,
                x,
                tp.importance.GroupMagnitudeImportance(p=2),
                pruning_ratio=0.3,
                head_pruning_ratio=0.3,
                prune_num_heads=True,
                prune_head_dims=False,
                output_transform=options["output_transform"],
                **host,
            )
        built = time.perf_counter()
        meta.step()
        reduction = None
    done = time.perf_counter()
    peak = _status("VmHWM")
    return {
        "mode": mode,
        "params": params,
        "model_bytes": model_bytes,
        "init_s": round(built - start, 2),
        "step_s": round(done - built, 2),
        "total_s": round(done - start, 2),
        "peak_over_start_bytes": peak - before_model,
        "peak_over_model": round((peak - before_model) / model_bytes, 3),
        "macs_reduction": reduction,
        "heads_left": model.config.num_attention_heads,
        "hidden_left": model.config.hidden_size,
        "mlp_left": model.config.intermediate_size,
    }


def _run_child(mode: str, tokens: int, layers: int, vocab: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--tokens", str(tokens)]
    command += ["--layers", str(layers), "--vocab", str(vocab)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="example sequence length")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["cpmc", "host"], default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.tokens, args.layers, args.vocab)))
        return
    import torch

    rows = [_run_child(mode, args.tokens, args.layers, args.vocab) for mode in ("host", "cpmc")]
    host, cpmc = rows
    ratio = cpmc["total_s"] / host["total_s"]
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "command": "python " + " ".join(sys.argv),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "rows": rows,
        "time_ratio": round(ratio, 3),
        "time_goal": TIME_GOAL,
        "memory_goal": MEMORY_GOAL,
    }
    for row in rows:
        print(
            f"{row['mode']:>4}: {row['total_s']:.1f} s (init {row['init_s']:.1f} s, step "
            f"{row['step_s']:.1f} s), peak {row['peak_over_model']:.2f}x the model "
            f"({row['model_bytes'] / 2**30:.2f} GiB, {row['params'] / 1e6:.0f} M parameters)"
        )
    met = "met" if ratio <= TIME_GOAL else "missed"
    memory = "met" if cpmc["peak_over_model"] <= MEMORY_GOAL else "missed"
    print(f"time {ratio:.2f}x the host's (goal <= {TIME_GOAL}x): {met}")
    print(f"CPMC peak {cpmc['peak_over_model']:.2f}x the model (goal <= {MEMORY_GOAL}x): {memory}")
    print(f"FLOPs removed by CPMC: {100 * cpmc['macs_reduction']:.2f} % (asked 30 %)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
