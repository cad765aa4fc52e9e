"""collect_activity: per-channel mean squares and summed gradients, known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin.core.activity import collect_activity, split_batch


def test_conv_channels_average_over_batch_and_positions() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=False)
    x = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    activity = collect_activity(conv, [x, x * 2], modules=[conv], batches=2)
    expected = torch.cat([x, x * 2]).transpose(0, 1).reshape(2, -1).square().mean(1)
    torch.testing.assert_close(activity.inputs[conv], expected.double())
    out = torch.cat([conv(x), conv(x * 2)]).detach()
    torch.testing.assert_close(
        activity.outputs[conv], out.transpose(0, 1).reshape(3, -1).square().mean(1).double()
    )
    assert activity.batches == 2


def test_linear_channels_are_the_last_dimension_of_token_inputs() -> None:
    linear = nn.Linear(4, 2)
    tokens = torch.randn(3, 5, 4)  # batch 3, 5 tokens
    activity = collect_activity(linear, [tokens], modules=[linear])
    torch.testing.assert_close(
        activity.inputs[linear], tokens.reshape(-1, 4).square().mean(0).double()
    )
    assert activity.input_scale(linear, 1).shape == (4,)
    torch.testing.assert_close(activity.input_scale(linear, 1), activity.inputs[linear].sqrt())


def test_gradients_are_summed_over_the_batches_and_the_grads_restored() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    expected = sum(
        torch.autograd.grad(F.cross_entropy(net(x), y), net.weight)[0] for x, y in batches
    )
    activity = collect_activity(net, batches, modules=[net], batches=3, gradients=True)
    torch.testing.assert_close(activity.gradients[net.weight], expected)
    assert net.weight.grad is None and net.bias.grad is None


def test_only_the_first_batches_are_read() -> None:
    net = nn.Linear(2, 2)
    seen = []

    def stream():
        for i in range(10):
            seen.append(i)
            yield torch.ones(1, 2) * i

    collect_activity(net, stream(), modules=[net], batches=3)
    assert seen == [0, 1, 2]  # no batch past the last is drawn


@pytest.mark.parametrize(
    ("data", "kwargs", "match"),
    [
        ([], {}, "data gave no batch"),
        ([torch.ones(1, 2)], {"gradients": True}, r"needs \(inputs, targets\) batches"),
        ([torch.ones(1, 2)], {"batches": 0}, "batches must be"),
        ([(torch.ones(1, 2), torch.tensor([5]))], {"gradients": True}, "loss failed on batch 0"),
    ],
)
def test_bad_input(data, kwargs, match) -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=match):
        collect_activity(net, data, modules=[net], **kwargs)
    assert net.weight.grad is None and net.weight.requires_grad


def test_split_batch() -> None:
    x, y = torch.ones(2), torch.zeros(2)
    assert split_batch((x, y)) == (x, y)
    assert split_batch(x) == (x, None)
