"""A seeded generator of small random CNNs that mix every block CPMC must prune.

``random_cnn(seed)`` always builds the same network with the same weights: the
structure is drawn from ``random.Random(seed)`` and the weights from a
``torch.Generator`` seeded with ``seed``; torch's global random state is left alone.

Blocks: plain conv-bn-relu, residual (add), bottleneck, dense-concat (DenseNet-style),
depthwise-separable (either order, so a depthwise output can feed the next block),
grouped conv, squeeze-excitation (a sigmoid gate from pooled features, by 1x1 convs
or by Linear layers), inception-style branch concat. Heads: hidden Linear layers
after flatten or pooling and a Linear head, or a 1x1 conv head then pooling.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BLOCKS", "RandomCNN", "RandomCase", "random_case", "random_cnn"]

#: the block kinds the generator draws from
BLOCKS = (
    "plain",
    "residual",
    "bottleneck",
    "dense",
    "depthwise",
    "grouped",
    "se",
    "inception",
)
_WIDTHS = (4, 6, 8, 12, 16, 24, 32)


def _conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """Two 3x3 conv-bn (or a 1x1-3x3-1x1 bottleneck) plus a shortcut, added."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck: bool, mid: int) -> None:
        super().__init__()
        if bottleneck:
            self.body = nn.Sequential(
                _conv_bn(cin, mid, 1),
                _conv_bn(mid, mid, 3, stride),
                _conv_bn(mid, cout, 1, relu=False),
            )
        else:
            self.body = nn.Sequential(
                _conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, relu=False)
            )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = _conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Dense(nn.Module):
    """DenseNet-style: each layer reads the concatenation of the input and all earlier outputs."""

    def __init__(self, cin: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_conv_bn(cin + i * growth, growth, 3) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DepthwiseSeparable(nn.Module):
    """A depthwise 3x3 and a pointwise 1x1, in either order (``pointwise_first``)."""

    def __init__(self, cin: int, cout: int, stride: int, pointwise_first: bool) -> None:
        super().__init__()
        if pointwise_first:
            self.body = nn.Sequential(
                _conv_bn(cin, cout, 1), _conv_bn(cout, cout, 3, stride, groups=cout)
            )
        else:
            self.body = nn.Sequential(
                _conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SqueezeExcitation(nn.Module):
    """Multiply the channels by a sigmoid gate computed from their pooled values."""

    def __init__(self, channels: int, squeeze: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        if linear:
            self.reduce: nn.Module = nn.Linear(channels, squeeze)
            self.expand: nn.Module = nn.Linear(squeeze, channels)
        else:
            self.reduce = nn.Conv2d(channels, squeeze, 1)
            self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            pooled = x.mean((2, 3))
            gate = torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))
            return x * gate[:, :, None, None]
        pooled = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))


class Inception(nn.Module):
    """Parallel 1x1, 3x3, 1x1-3x3 and pool-1x1 branches, concatenated."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int], mid: int) -> None:
        super().__init__()
        self.b1 = _conv_bn(cin, widths[0], 1)
        self.b3 = _conv_bn(cin, widths[1], 3)
        self.b33 = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, widths[2], 3))
        self.bpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, widths[3], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b33(x), self.bpool(x)], 1)


class RandomCNN(nn.Module):
    """Stem, random blocks, then a head; ``head`` is the layer to keep (``ignored_layers``)."""

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        neck: nn.Module,
        head: nn.Module,
        flatten_first: bool,
        description: str,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.neck = neck
        self.head = head
        self.flatten_first = flatten_first
        self.description = description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if isinstance(self.head, nn.Conv2d):  # conv head: 1x1 conv to classes, then pool
            return F.adaptive_avg_pool2d(self.head(self.neck(x)), 1).flatten(1)
        if self.flatten_first:  # flatten a small map into the hidden Linear layers
            x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        else:
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(self.neck(x))

    def extra_repr(self) -> str:
        return self.description


@dataclass(frozen=True)
class RandomCase:
    """One generated test case: the net, its input, the layer to ignore and a budget."""

    seed: int
    model: RandomCNN
    example_inputs: torch.Tensor
    head: nn.Module
    metric: str  # "macs" or "params"
    reduction: float  # in [0.1, 0.8]

    @property
    def budget(self) -> dict[str, float]:
        key = "flops_reduction" if self.metric == "macs" else "params_reduction"
        return {key: self.reduction}


def _divisors(n: int, options: tuple[int, ...]) -> list[int]:
    return [g for g in options if n % g == 0 and g < n]


def _block(kind: str, cin: int, rng: random.Random, stride: int) -> tuple[nn.Module, int]:
    """One block of ``kind`` reading ``cin`` channels, and the channels it outputs."""
    width: Callable[[], int] = lambda: rng.choice(_WIDTHS)  # noqa: E731
    if kind == "plain":
        cout = width()
        return _conv_bn(cin, cout, rng.choice((1, 3)), stride), cout
    if kind in ("residual", "bottleneck"):
        cout = cin if rng.random() < 0.5 and stride == 1 else width()
        mid = rng.choice((4, 6, 8))
        return Residual(cin, cout, stride, kind == "bottleneck", mid), cout
    if kind == "dense":
        growth = rng.choice((4, 6, 8))
        layers = rng.randint(2, 3)
        return Dense(cin, growth, layers), cin + growth * layers
    if kind == "depthwise":
        cout = width()
        return DepthwiseSeparable(cin, cout, stride, rng.random() < 0.5), cout
    if kind == "grouped":
        groups = rng.choice(_divisors(cin, (2, 4)) or [1])
        cout = groups * rng.choice((2, 3, 4))
        return _conv_bn(cin, cout, 3, stride, groups=groups), cout
    if kind == "se":
        return SqueezeExcitation(cin, max(2, cin // 4), rng.random() < 0.5), cin
    if kind == "inception":
        widths = (rng.choice((2, 4)), rng.choice((4, 6)), rng.choice((4, 8)), rng.choice((2, 4)))
        return Inception(cin, widths, rng.choice((4, 6))), sum(widths)
    raise ValueError(f"unknown block kind {kind!r}; choose from {BLOCKS}")


def _init_weights(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.2 + 0.8 * torch.rand(n, generator=generator))
                module.bias.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
                module.running_mean.copy_(0.2 * torch.rand(n, generator=generator) - 0.1)
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def random_cnn(seed: int) -> tuple[RandomCNN, torch.Tensor]:
    """A random CNN (eval mode, seeded weights) and a 1x3x16x16 input for it."""
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        return _random_cnn(seed)


def _random_cnn(seed: int) -> tuple[RandomCNN, torch.Tensor]:
    rng = random.Random(seed)
    cin = rng.choice((8, 12, 16))
    stem = _conv_bn(3, cin, 3)
    blocks: list[nn.Module] = []
    kinds: list[str] = []
    # dense-concat after depthwise or residual blocks is the mix that used to break
    if rng.random() < 0.3:
        start = [rng.choice(("depthwise", "residual", "bottleneck")), "dense"]
    else:
        start = []
    count = rng.randint(2, 5)
    downsamples = 2
    for i in range(max(count, len(start))):
        kind = start[i] if i < len(start) else rng.choice(BLOCKS)
        stride = 1
        strided = ("plain", "residual", "bottleneck", "depthwise", "grouped")
        if downsamples and kind in strided and rng.random() < 0.4:
            stride, downsamples = 2, downsamples - 1
        block, cin = _block(kind, cin, rng, stride)
        blocks.append(block)
        kinds.append(kind + ("/2" if stride == 2 else ""))
    classes = rng.choice((3, 5, 10))
    head_kind = rng.choice(("linear", "linear", "conv"))
    flatten_first = rng.random() < 0.5
    if head_kind == "conv":
        neck: nn.Module = (
            _conv_bn(cin, rng.choice(_WIDTHS), 1) if rng.random() < 0.5 else nn.Identity()
        )
        head_in = neck[0].out_channels if isinstance(neck, nn.Sequential) else cin
        head: nn.Module = nn.Conv2d(head_in, classes, 1)
        description = f"seed={seed}: {' '.join(kinds)} | conv head"
    else:
        features = cin * 4 if flatten_first else cin
        hidden = [rng.choice((8, 16, 32)) for _ in range(rng.randint(0, 2))]
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(features, h), nn.ReLU()]
            features = h
        neck = nn.Sequential(*layers)
        head = nn.Linear(features, classes)
        how = "flatten" if flatten_first else "pool"
        description = f"seed={seed}: {' '.join(kinds)} | {how} {hidden} linear head"
    model = RandomCNN(stem, blocks, neck, head, flatten_first, description)
    _init_weights(model, seed)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval(), x


def random_case(seed: int) -> RandomCase:
    """A random CNN with a seeded budget: FLOPs or parameters, a reduction in [0.1, 0.8]."""
    model, x = random_cnn(seed)
    rng = random.Random(f"budget-{seed}")
    metric = rng.choice(("macs", "params"))
    reduction = round(rng.uniform(0.1, 0.8), 3)
    return RandomCase(seed, model, x, model.head, metric, reduction)
