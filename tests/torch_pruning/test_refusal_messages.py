"""A refusal says everything at once: every output that would change shape, where it
sits in the output, and the layer to ignore for each; interactive steps refuse before
the first group; a trace failure gets the advice of its cause."""

from __future__ import annotations

import collections
import re

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCPruner
from cpmc_plugin.core.producers import output_paths
from tests.helpers import assert_unchanged, budget_tolerance, model_state

__all__: list[str] = []


class TwoHeads(nn.Module):
    """A body and two heads, one behind a BatchNorm; a dict output with a nested list."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())
        self.seg = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.aux = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h = self.body(x)
        return {"seg": self.seg(h), "aux": [self.aux(h).relu()]}


def _output_shapes(model: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    with torch.no_grad():
        out = model.eval()(x)
    return tuple(out["seg"].shape), tuple(out["aux"][0].shape)


def _named_layers(message: str) -> set[str]:
    """The layers the refusal says to put in ignored_layers."""
    found = re.search(r"keep their shape: put (.*) in ignored_layers", message)
    assert found is not None, message
    return set(re.findall(r"'([\w.]+)'", found.group(1)))


def test_one_refusal_names_every_output_its_path_and_its_conv() -> None:
    torch.manual_seed(0)
    net, x = TwoHeads(), torch.randn(1, 3, 16, 16)
    state = model_state(net)
    with pytest.raises(ValueError, match="refused the step") as refused:
        CPMCPruner(net, x, flops_reduction=0.6).step()
    message = str(refused.value)
    assert re.search(r"output 0 \(out\['seg'\]\) from \(1, 8, 14, 14\) to \(1, \d, 14", message)
    assert re.search(r"\(made by 'seg\.0' \(Conv2d\)\)", message)
    assert re.search(r"output 1 \(out\['aux'\]\[0\]\) from \(1, 4, 14, 14\) to .*'aux'", message)
    assert _named_layers(message) == {"seg.0", "aux"}  # the conv, not its BatchNorm
    assert "seg.1" not in message and message.endswith("The model is unchanged")
    assert_unchanged(net, state)
    # doing what it says lets the same budget through: one round
    modules = dict(net.named_modules())
    ignored = [modules[n] for n in _named_layers(message)]
    pruner = CPMCPruner(net, x, flops_reduction=0.6, ignored_layers=ignored)
    pruner.step()
    assert abs(pruner.report().macs_reduction - 0.6) <= budget_tolerance(pruner)
    assert _output_shapes(net, x) == ((1, 8, 14, 14), (1, 4, 14, 14))
    assert net.body[0].out_channels < 16


def test_an_interactive_refusal_comes_on_the_first_next_with_nothing_changed() -> None:
    torch.manual_seed(0)
    net, x = TwoHeads(), torch.randn(1, 3, 16, 16)
    state = model_state(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.6, iterative_steps=2)
    groups = pruner.step(interactive=True)
    assert groups is not None
    with pytest.raises(ValueError, match=r"output 0 .*output 1 .*ignored_layers") as refused:
        next(groups)
    assert _named_layers(str(refused.value)) == {"seg.0", "aux"}
    assert pruner.current_step == 0  # the step did not happen
    assert_unchanged(net, state)
    # a plain step of the same pruner is refused alike, and leaves the count as it was
    with pytest.raises(ValueError, match="refused the step"):
        pruner.step()
    assert pruner.current_step == 0


def test_output_paths_name_each_tensor_as_python_indexes_it() -> None:
    pair = collections.namedtuple("pair", "logits extra")
    one = torch.ones(1)
    assert output_paths(one) == ["out"]
    assert output_paths((one, [one, None], {"a": one})) == ["out[0]", "out[1][0]", "out[2]['a']"]
    assert output_paths(pair(one, (one,))) == ["out.logits", "out.extra[0]"]
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")
    hf = modeling_outputs.CausalLMOutputWithPast(logits=one, hidden_states=(one, one))
    assert output_paths(hf) == ["out.logits", "out.hidden_states[0]", "out.hidden_states[1]"]


class TupleWithNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(self.conv(x)), None


def test_an_output_the_host_cannot_read_gets_output_transform_advice() -> None:
    torch.manual_seed(0)
    net, x = TupleWithNone(), torch.randn(1, 3, 16, 16)
    state = model_state(net)
    with pytest.raises(ValueError, match=r"cannot read its output.*output_transform=") as refused:
        CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.head])
    assert "in torch_pruning's flatten_as_list()" in str(refused.value)
    assert "channel shuffle" not in str(refused.value)
    assert_unchanged(net, state)
    # the advice works
    pruner = CPMCPruner(
        net, x, flops_reduction=0.3, ignored_layers=[net.head], output_transform=lambda o: o[0]
    )
    pruner.step()
    assert net.conv.out_channels < 8 and net(x)[0].shape == (1, 4, 14, 14)
