"""``cpmc-prune prune-hf``: prune a Hugging Face causal LM saved on disk to a FLOPs budget.

It loads a local ``save_pretrained`` directory (never the hub), prunes attention heads,
MLP channels and the hidden width together with :func:`~cpmc_plugin.head_options`
under the budget, optionally choosing CPMC's options on a text (``cpmc-auto``), prints
the shapes before and after, and writes a directory that ``from_pretrained`` loads.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.options import head_options
from ..torch_pruning.pruner import CPMCPruner
from ._common import DEFAULT_FLOPS_REDUCTION, fresh_directory
from .argtypes import fraction, positive_int

__all__ = ["add_prune_hf_parser", "cmd_prune_hf", "next_token_loss"]

#: files of a tokenizer that ``save_pretrained`` may have written beside the model
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def add_prune_hf_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``prune-hf`` (the caller adds ``--seed`` and ``--threads``)."""
    p.add_argument("--model", required=True, metavar="DIR", help="a save_pretrained directory")
    p.add_argument(
        "--flops-reduction",
        type=fraction,
        default=DEFAULT_FLOPS_REDUCTION,
        metavar="R",
        help="fraction of FLOPs (MACs, attention matmuls included) to remove, in (0, 1)",
    )
    p.add_argument(
        "--calibration-text",
        default=None,
        metavar="FILE",
        help="a text file: choose CPMC's options on it (cpmc-auto, by next-token loss); "
        "default: none, CPMC's default options",
    )
    p.add_argument(
        "--context", type=positive_int, default=128, help="tokens per calibration sequence"
    )
    p.add_argument(
        "--calibration-batches",
        type=positive_int,
        default=8,
        metavar="N",
        help="calibration batches of 4 sequences (>= 2; half re-measure, half score)",
    )
    p.add_argument(
        "--tokens", type=positive_int, default=64, help="tokens of the example input traced"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")


def next_token_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of a causal LM's ``outputs`` (or logits)."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError(
            "prune-hf needs the transformers package: pip install 'cpmc-plugin[transformers]'"
        ) from None
    return transformers


def _load(transformers: Any, folder: Path) -> tuple[nn.Module, Any]:
    """The model of ``folder`` in eval mode, and its tokenizer (``None``: bytes)."""
    if not folder.is_dir():
        raise ValueError(f"--model {folder} is not a directory (expected a save_pretrained one)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {folder} has no config.json: not a save_pretrained directory")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"--model {folder} could not be loaded as a causal LM: {error}") from None
    tokenizer = None
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def _token_ids(text: str, tokenizer: Any, vocab_size: int) -> torch.Tensor:
    if tokenizer is not None:
        return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if vocab_size < 256:
        raise ValueError(
            f"the model has no tokenizer and a vocabulary of {vocab_size} < 256 tokens, so "
            "its text cannot be read as bytes: save its tokenizer into --model"
        )
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def _calibration_batches(ids: torch.Tensor, context: int, batches: int, seed: int) -> list[Any]:
    """``batches`` batches of 4 random windows: (tokens, the tokens after them)."""
    if batches < 2:
        raise ValueError(f"--calibration-batches must be >= 2, got {batches}")
    if len(ids) < context + 2:
        raise ValueError(
            f"--calibration-text has {len(ids)} tokens, fewer than --context {context} + 2: "
            "give a longer text or a shorter --context"
        )
    g = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(batches):
        starts = torch.randint(0, len(ids) - context - 1, (4,), generator=g).tolist()
        window = torch.stack([ids[s : s + context + 1] for s in starts])
        found.append((window[:, :-1], window[:, 1:]))
    return found


def _shape(model: nn.Module) -> dict[str, int]:
    config: Any = getattr(model, "config", None)
    unique = {id(p): p for p in model.parameters()}
    return {
        "parameters": sum(p.numel() for p in unique.values()),
        "attention heads": int(config.num_attention_heads),
        "key/value heads": int(getattr(config, "num_key_value_heads", config.num_attention_heads)),
        "hidden size": int(config.hidden_size),
        "intermediate size": int(config.intermediate_size),
    }


def _table(before: dict[str, int], after: dict[str, int], macs: tuple[float, float]) -> str:
    rows = [("MACs", macs[0], macs[1]), *((k, before[k], after[k]) for k in before)]
    lines = [f"{'':18s} {'before':>14s} {'after':>14s} {'removed':>8s}"]
    for name, was, now in rows:
        removed = f"{100 * (1 - now / was):.1f} %" if was else "-"
        lines.append(f"{name:18s} {int(was):>14,d} {int(now):>14,d} {removed:>8s}")
    return "\n".join(lines)


def cmd_prune_hf(args: argparse.Namespace) -> None:
    """Load, (calibrate,) prune, print the table, write the pruned directory."""
    transformers = _transformers()
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # the output stays a table, an error one line
    try:
        _prune_hf(transformers, args)
    finally:
        if shown:
            bars.enable_progress_bar()


def _prune_hf(transformers: Any, args: argparse.Namespace) -> None:
    folder, out = Path(args.model), Path(args.out)
    if out.resolve() == folder.resolve():
        raise ValueError("--out must not be --model: the pruned model goes into a new directory")
    fresh_directory(out, args.force)
    text = None
    if args.calibration_text is not None:
        path = Path(args.calibration_text)
        if not path.is_file():
            raise ValueError(f"--calibration-text {path} is not a file")
        text = path.read_text(encoding="utf-8", errors="replace")
    model, tokenizer = _load(transformers, folder)
    config: Any = model.config
    vocab = int(config.vocab_size)
    calibration: dict[str, Any] = {}
    if text is not None:  # cpmc-auto: CPMC's options chosen by next-token loss on the text
        ids = _token_ids(text, tokenizer, vocab)
        data = _calibration_batches(ids, args.context, args.calibration_batches, args.seed)
        example = ids[: args.tokens].unsqueeze(0)
        calibration = {
            "calibration_data": data,
            "calibration_batches": args.calibration_batches,
            "calibration_loss_fn": next_token_loss,
            "calibration_progress": True,
        }
    else:
        g = torch.Generator().manual_seed(args.seed)
        example = torch.randint(0, vocab, (1, args.tokens), generator=g)
    before = _shape(model)
    pruner = CPMCPruner(
        model, example, flops_reduction=args.flops_reduction, **calibration, **head_options(model)
    )
    if pruner.calibration is not None:
        print(pruner.calibration.table())
    pruner.step()
    report = pruner.report()
    print(f"criterion {'cpmc-auto' if text is not None else 'cpmc'}: {pruner.importance}")
    print(_table(before, _shape(model), (report.macs_before, report.macs_after)))
    out.mkdir(parents=True, exist_ok=True)
    saved: Any = model
    saved.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
    print(f"wrote {out} (load it with from_pretrained)")
