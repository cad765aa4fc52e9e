"""Hugging Face causal LMs as users have them: default (sdpa) attention, calls under
``torch.no_grad()``, and layers of their own added to ``head_options``' ignored ones.

Each prune meets its budget within 0.5 pp, the model keeps its attention
implementation, and ``save_pretrained`` / ``from_pretrained`` round-trip it with
identical logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCPruner, eager_attention, head_options
from tests.transformer_zoo import hf_causal

transformers = pytest.importorskip("transformers")

__all__: list[str] = []


def causal_lm(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A tiny random-weight LM built as a user builds one: no ``attn_implementation``
    (Qwen2 with tied embeddings)."""
    torch.manual_seed(0)
    model, _ = hf_causal(kind, attn_implementation=None, tie_word_embeddings=kind == "qwen2")()
    return model, torch.randint(0, 128, (1, 12))


def _plain(model: nn.Module, x: Any) -> CPMCPruner:
    return CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))


def _no_grad(model: nn.Module, x: Any) -> CPMCPruner:
    with torch.no_grad():
        pruner = CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))
        pruner.step()
    return pruner


def _extra_ignored(model: nn.Module, x: Any) -> CPMCPruner:
    extra = [model.model.layers[0].mlp.down_proj]
    return CPMCPruner(model, x, flops_reduction=0.3, ignored_layers=extra, **head_options(model))


CALLS: dict[str, Callable[[nn.Module, Any], CPMCPruner]] = {
    "as-it-comes": _plain,
    "under-no-grad": _no_grad,
    "extra-ignored-layers": _extra_ignored,
}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_default_attention_meets_the_budget_and_round_trips(
    kind: str, call: str, tmp_path: Path
) -> None:
    model, x = causal_lm(kind)
    implementation = model.config._attn_implementation
    assert implementation != "eager"  # what the test is about: attention as it comes
    hidden = model.model.layers[0].mlp.down_proj.out_features
    pruner = CALLS[call](model, x)
    if call != "under-no-grad":
        pruner.step()
    assert abs(pruner.report().macs_reduction - 0.3) <= 0.005
    assert model.config._attn_implementation == implementation
    config = model.config  # follows the layers, with every key/value head kept
    assert config.num_attention_heads * 8 == model.model.layers[0].self_attn.q_proj.out_features
    assert config.num_key_value_heads == 2 and config.num_attention_heads % 2 == 0
    if call == "extra-ignored-layers":  # its output channels stayed: the hidden width
        assert model.model.layers[0].mlp.down_proj.out_features == hidden
    if kind == "qwen2":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation == implementation
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_head_options_merges_the_callers_ignored_layers() -> None:
    model, x = causal_lm("llama")
    extra = model.model.layers[1].mlp.down_proj
    options = head_options(model, ignored_layers=[extra])
    assert options["ignored_layers"] == [extra]
    assert options["output_layers"] == [model.lm_head]
    pruner = CPMCPruner(model, x, flops_reduction=0.3, **options)
    assert pruner.ignored_layers[:2] == [extra, model.lm_head]


@pytest.mark.parametrize(
    ("ignored", "error", "match"),
    [
        ("lm_head", TypeError, r"^ignored_layers must be a list of modules of the model, got str"),
        ([3], TypeError, r"^ignored_layers must hold modules of the model, got int"),
        ([nn.Linear(2, 2)], ValueError, r"^ignored_layers must hold modules of the model"),
    ],
)
def test_head_options_refuses_bad_ignored_layers(ignored: Any, error: type, match: str) -> None:
    model, _ = causal_lm("llama")
    with pytest.raises(error, match=match):
        head_options(model, ignored_layers=ignored)


def test_output_layers_must_be_modules_of_the_model() -> None:
    model, x = causal_lm("llama")
    with pytest.raises(ValueError, match=r"^output_layers must hold modules of the model"):
        CPMCPruner(model, x, flops_reduction=0.3, output_layers=[nn.Linear(2, 2)])


def test_inference_mode_is_refused_with_the_fix() -> None:
    model, x = causal_lm("llama")
    with torch.inference_mode(), pytest.raises(ValueError, match=r"outside the block"):
        CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))


def test_eager_attention_switches_back_also_on_an_error() -> None:
    model, _ = causal_lm("llama")
    before = model.config._attn_implementation
    with contextlib.suppress(RuntimeError), eager_attention(model):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("inside the block")
    assert model.config._attn_implementation == before
    with (
        pytest.raises(TypeError, match="model must be an nn.Module, got str"),
        eager_attention("model"),  # type: ignore[arg-type]
    ):
        pass


def test_torchvision_resnet_under_no_grad() -> None:
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model, x = models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pruner = CPMCPruner(model, x, flops_reduction=0.3, ignored_layers=[model.fc])
        pruner.step()
    assert abs(pruner.report().macs_reduction - 0.3) <= 0.005
    assert model(x).shape == (1, 10)
