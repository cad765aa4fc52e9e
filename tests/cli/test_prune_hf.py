"""``cpmc-prune prune-hf`` on a tiny random-weight LLaMA saved in the test."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from cpmc_plugin.cli import main
from cpmc_plugin.torch_pruning.cost.counting import count_ops_and_params
from tests.cli.common import cli_error

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

__all__: list[str] = []


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaMA with grouped-query attention, saved as it comes (sdpa), no tokenizer."""
    folder = tmp_path_factory.mktemp("llama")
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _macs(folder: Path) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return float(count_ops_and_params(model, torch.randint(0, 256, (1, 64)))[0])


def test_prune_hf_writes_a_checkpoint_from_pretrained_loads(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    argv = ["prune-hf", "--model", str(saved), "--flops-reduction", "0.3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for row in ("MACs", "parameters", "attention heads", "hidden size", "intermediate size"):
        assert row in printed
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config._attn_implementation == "sdpa"  # as it came
    assert loaded.config.num_key_value_heads == 2
    tokens = torch.randint(0, 256, (1, 16))
    assert loaded(tokens).logits.shape == (1, 16, 256)
    # the budget counts the attention matmuls that count_ops_and_params misses, so the
    # host's count alone is cut by at least the budget's share of what it sees
    assert 1 - _macs(out) / _macs(saved) >= 0.29


def test_prune_hf_calibrates_on_a_text(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(0)
    words = ["prune", "the", "heads", "and", "channels", "under", "one", "budget"]
    text = tmp_path / "text.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(400)), encoding="utf-8")
    out = tmp_path / "pruned"
    argv = ["prune-hf", "--model", str(saved), "--flops-reduction", "0.3", "--out", str(out),
            "--calibration-text", str(text), "--context", "32",
            "--calibration-batches", "2"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "criterion cpmc-auto: CPMCImportance(" in captured.out
    assert "calibration" in captured.err  # the progress bar
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.hidden_size <= 64


def test_prune_hf_bad_input(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["prune-hf", "--flops-reduction", "0.3"]
    missing = tmp_path / "none"
    err = cli_error([*base, "--model", str(missing), "--out", str(tmp_path / "a")], capsys)
    assert f"--model {missing} is not a directory" in err
    err = cli_error([*base, "--model", str(tmp_path), "--out", str(tmp_path / "b")], capsys)
    assert "has no config.json" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    err = cli_error([*base, "--model", str(saved), "--out", str(full)], capsys)
    assert "is not empty; pass --force" in err
    err = cli_error([*base, "--model", str(saved), "--out", str(saved)], capsys)
    assert "--out must not be --model" in err
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    err = cli_error([*base, "--model", str(saved), "--out", str(tmp_path / "c"),
                  "--calibration-text", str(short)], capsys)  # fmt: skip
    assert "fewer than --context 128 + 2" in err
    assert not (tmp_path / "c").exists()


def test_prune_hf_without_transformers(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    argv = ["prune-hf", "--model", str(saved), "--flops-reduction", "0.3",
            "--out", str(tmp_path / "d")]  # fmt: skip
    assert "prune-hf needs the transformers package: pip install" in cli_error(argv, capsys)
    assert not (tmp_path / "d").exists()
