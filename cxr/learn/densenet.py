"""DenseNet-121's feature extractor (Huang et al., 2017) in plain torch.

``cxr predict`` with a DenseNet-121 then does not import torchvision, whose import costs more than a
second (its ``ops`` load ``torch._dynamo``). The module names, and so the state-dict keys, are those
of torchvision's ``densenet121().features``: bundles trained on torchvision's module and torchvision's
ImageNet state-dict files load unchanged. The initialisation and the arithmetic are the same too.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

GROWTH = 32  # channels each dense layer adds
BLOCKS = (6, 12, 24, 16)  # dense layers per block
STEM_CHANNELS = 64
BOTTLENECK = 4  # a layer's 1x1 convolution outputs BOTTLENECK * GROWTH channels
CHANNELS = 1024  # of the output


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv, BN-ReLU-3x3 conv on the concatenation of the block's input and earlier layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        width = BOTTLENECK * GROWTH
        self.norm1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, GROWTH, kernel_size=3, padding=1, bias=False)

    def forward(self, previous: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(previous, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.Module):
    """``layers`` dense layers; the output concatenates the input and every layer's GROWTH channels."""

    def __init__(self, layers: int, channels: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(channels + i * GROWTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


def _transition(channels: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv to half the channels, then a 2x2 average pool to half the size."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(channels, channels // 2, kernel_size=1, bias=False),
            pool=nn.AvgPool2d(kernel_size=2, stride=2),
        )
    )


def densenet121_features() -> nn.Sequential:
    """[N, 3, H, W] -> [N, 1024, H/32, W/32], before the final ReLU (as torchvision's ``features``)."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv0=nn.Conv2d(3, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(STEM_CHANNELS),
        relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    channels = STEM_CHANNELS
    for number, layers in enumerate(BLOCKS, 1):
        parts[f"denseblock{number}"] = DenseBlock(layers, channels)
        channels += layers * GROWTH
        if number < len(BLOCKS):
            parts[f"transition{number}"] = _transition(channels)
            channels //= 2
    parts["norm5"] = nn.BatchNorm2d(channels)
    assert channels == CHANNELS
    features = nn.Sequential(parts)
    for module in features.modules():  # torchvision's rules
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return features
