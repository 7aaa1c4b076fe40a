"""Drop-in conversion of networks written the way torchvision writes them (no download: the layouts are
written out here, smaller): ResNet with BasicBlock and with Bottleneck (one shared nn.ReLU per block,
downsample shortcuts, adaptive average pooling and an fc head), VGG (features, an adaptive average pool
with uneven windows, a classifier with Dropout), MobileNetV2 (depthwise convolutions, ReLU6, inverted
residuals with linear bottlenecks), DenseNet (concatenations of spikes and of convolutions, batch norm after
them, average-pooled transitions), SqueezeNet (Fire modules: two expansions concatenated) and GoogLeNet
(Inception branches concatenated, one behind a max pooling), AlexNet (a strided 5x5 stem, overlapping max
pooling, a three-layer classifier with Dropout), ShuffleNetV2 (a channel split, a join and a channel shuffle
through a 5-D view); and a timm-style network (batch norm and
activation in one module with its own forward, stochastic depth).

Each is spikified with an N-hot head, given batch-norm statistics, sharpened to 1, and deployed: the
simulator gives the class PyTorch gives on every input (both in float64, where only a true tie could
differ), the NIR file passes nir's structure check and reads back to the same graph, and ONNX Runtime
(float32) agrees on every input no membrane of which lies within float32 rounding of its threshold.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whetstone as ws
from whetstone.graph.nodes import SpikeNode
from whetstone.nn.tracing import trace

from conftest import assert_equal_where_decided, torch_threads


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(
        self, block: type, layers: list[int], width: int = 8, num_classes: int = 10, channels: int = 3
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width * block.expansion, num_classes)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))  # from 3x3: uneven, overlapping windows
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, num_classes),
        )  # fmt: skip

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]  # linear bottleneck  # fmt: skip
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(3, 8, stride=2),
            InvertedResidual(8, 8, 1, expand_ratio=1),
            InvertedResidual(8, 12, 2, expand_ratio=3),
            InvertedResidual(12, 12, 1, expand_ratio=3),
            ConvBNReLU(12, 32, kernel_size=1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))  # functional, as torchvision writes it
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):  # SqueezeNet: squeeze, then two expansions concatenated
    def __init__(self, inputs: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(inputs, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 4, 8), Fire(16, 4, 8))  # fmt: skip
        # torchvision's head (a 1x1 conv to the classes, then averaging) ends in class scores, not spikes; spikify
        # asks for a Linear classifier instead, as here (the pooled spikes are its input)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class Inception(nn.Module):  # GoogLeNet: four branches, each ending in a ReLU, concatenated
    def __init__(self, inputs: int, width: int) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True))  # fmt: skip

        self.branch1 = conv(inputs, width, 1)
        self.branch2 = nn.Sequential(conv(inputs, width, 1), conv(width, width, 3))
        self.branch3 = nn.Sequential(conv(inputs, width, 1), conv(width, width, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(inputs, width, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.inception3a, self.inception3b = Inception(8, 4), Inception(16, 4)
        self.avgpool, self.dropout, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Dropout(0.2), nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.inception3b(self.inception3a(self.conv1(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class AlexNet(nn.Module):  # torchvision's layout, small: large strided first kernel, overlapping max pooling
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 1),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(12 * 4, 32), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes))  # fmt: skip

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def channel_shuffle(x, groups: int):  # as torchvision writes it: sizes unpacked, a 5-D view, a transpose
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):  # ShuffleNetV2: split the channels, transform one half, join, shuffle
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, outputs // 2
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inputs, inputs, 3, stride, 1, groups=inputs, bias=False), nn.BatchNorm2d(inputs),
                nn.Conv2d(inputs, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            )  # fmt: skip
        self.branch2 = nn.Sequential(
            nn.Conv2d(inputs if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))  # the mean, as torchvision takes it


# -- Networks written as CIFAR-10 model collections and PyTorch's MNIST example write them: functional ReLUs and
# pooling, one stateless module called several times, `out += shortcut`, pre-activation residual streams, swish
# and squeeze-and-excitation gates, batch norm after pooling, channel slices inside a block (our own rewrites).


class LeNet(nn.Module):  # PyTorch's MNIST example style: everything but the weights is functional
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 2 * 2, 32), nn.Linear(32, 24), nn.Linear(24, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SharedPoolNet(nn.Module):  # one nn.MaxPool2d (and one nn.ReLU) called after every convolution
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.relu, self.pool, self.fc = nn.ReLU(), nn.MaxPool2d(2, 2), nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class PreActBlock(nn.Module):  # batch norm and ReLU before each convolution: real sums flow between blocks
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(8, 8), PreActBlock(8, 8))
        self.layer2 = nn.Sequential(PreActBlock(8, 16, 2), PreActBlock(16, 16))
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        out = self.layer2(self.layer1(self.conv1(x)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


class SqueezeExcite(nn.Module):  # x * sigmoid(fc(relu(fc(pool(x))))): a gate per channel
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.se1, self.se2 = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)
        w = F.relu(self.se1(w))
        w = self.se2(w).sigmoid()
        return x * w


class MBConv(nn.Module):  # EfficientNet's block: expand, depthwise, squeeze-and-excite, project; swish throughout
    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        wide = channels * expansion
        self.conv1, self.bn1 = nn.Conv2d(channels, wide, 1, bias=False), nn.BatchNorm2d(wide)
        self.conv2, self.bn2 = nn.Conv2d(wide, wide, 3, 1, 1, groups=wide, bias=False), nn.BatchNorm2d(wide)
        self.se = SqueezeExcite(wide, channels // 2)
        self.conv3, self.bn3 = nn.Conv2d(wide, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.silu(self.bn1(self.conv1(x)))
        out = F.silu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        return F.silu(out + x)


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layers = nn.Sequential(MBConv(8), MBConv(8))
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x):
        out = F.silu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PoolThenNorm(nn.Module):  # conv, pool, then batch norm and ReLU (max pooling, then average pooling)
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.pool1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8)
        self.conv2, self.pool2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.AvgPool2d(2), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.pool1(self.conv1(x))))
        x = F.relu(self.bn2(self.pool2(self.conv2(x))))
        return self.fc(x.flatten(1))


class SliceBlock(nn.Module):  # a block that reads part of its input's channels (a partial convolution)
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.part = channels // 2
        self.conv = nn.Conv2d(self.part, channels, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x[:, : self.part]))


class SliceNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(SliceBlock(16), SliceBlock(16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.layer1(F.relu(self.stem(x))).mean((2, 3)))


NETWORKS = {
    "resnet-basicblock": lambda: ResNet(BasicBlock, [2, 2]),
    "resnet-bottleneck": lambda: ResNet(Bottleneck, [1, 2], width=4),
    "vgg": VGG,
    "mobilenet-v2": MobileNetV2,
    "densenet": lambda: _example().DenseNet(channels=3),
    "squeezenet": SqueezeNet,
    "googlenet": GoogLeNet,
    "alexnet": AlexNet,
    "shufflenet-v2": ShuffleNetV2,
    "lenet-functional": LeNet,
    "shared-pool": SharedPoolNet,
    "cifar-resnet": lambda: _benchmark("warm_start").ResNet20((1, 1, 1)),  # the CIFAR ResNet, a block a stage
    "preact-resnet": PreActResNet,
    "efficientnet-se": EfficientNet,
    "pool-then-norm": PoolThenNorm,
    "channel-slice": SliceNet,
}
# What spikify says while converting them (a warning each, naming every place).
WARNINGS = {
    # its depthwise convolutions feed 1x1 convolutions: spikes there
    "shufflenet-v2": r"added a spiking activation at stage2\.0\.branch1\.1_spike, ",
    # its linear bottlenecks feed the next block: spikes are added there
    "mobilenet-v2": r"added a spiking activation at features\.1\.out_spike, features\.2\.conv\.3_spike, features\.3\.out_spike: ",
    # swish becomes the spiking bounded ReLU, named by module and line
    "efficientnet-se": r"in place of smooth activations.*silu\(\) in the forward of layers\.0 \(\S*test_dropin\.py:\d+: ",
}
SHAPE = (3, 16, 16)


def _load(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example():
    """examples/convert_your_model.py as a module: its DenseNet layout is the one tested here."""
    from pathlib import Path

    return _load(Path(__file__).parents[1] / "examples" / "convert_your_model.py")


def _benchmark(name: str):
    """benchmarks/NAME.py as a module: its CIFAR ResNet (the layout of the model collections) is tested here."""
    from pathlib import Path

    return _load(Path(__file__).parents[1] / "benchmarks" / f"{name}.py")


def _statistics(model: nn.Module) -> nn.Module:
    """Batch-norm statistics that are not the identity, and scales that spread the units' potentials."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                module.weight.uniform_(1.0, 3.0, generator=generator)
                module.bias.uniform_(-0.5, 1.0, generator=generator)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, *SHAPE, generator=generator))
    return model.eval()


def _converted(name: str) -> tuple[str, nn.Module, ws.SpikingGraph]:
    """NETWORKS[name] spikified with an N-hot head, given batch-norm statistics, calibrated, sharpened to 1, deployed."""
    torch.manual_seed(0)
    with torch_threads(1):
        network = NETWORKS[name]()
        if name in WARNINGS:
            with pytest.warns(UserWarning, match=WARNINGS[name]):
                model = ws.spikify(network, num_classes=10, key_width=40)
        else:
            model = ws.spikify(network, num_classes=10, key_width=40)
        _statistics(model)
        # Each layer's range from data (as for a trained network): every calibrated spike then weighs its layer's
        # scale downstream, through sums, concatenations, poolings and gates, which the graph must fold exactly.
        ws.calibrate(model, [torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(2))], percentile=99.99)
        assert any(layer.scale_value != 1.0 for layer in ws.spiking_layers(model))
        ws.set_model_sharpness(model, 1.0)
        graph = ws.to_spiking_graph(model, SHAPE)
    return name, model, graph


@pytest.fixture(scope="module", params=list(NETWORKS))
def converted(request):
    return _converted(request.param)


@pytest.fixture(scope="module")
def images():
    return torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))


def test_every_activation_call_site_is_its_own_spiking_layer(converted):
    name, model, graph = converted
    calls = sum(1 for node in trace(model).graph.nodes if node.op == "call_module"
                and isinstance(model.get_submodule(node.target), ws.SpikingActivation))  # fmt: skip
    layers = ws.spiking_layers(model)
    gates = [node for node in graph.spiking_nodes() if node.name.endswith(".mul")]  # spikes AND spikes: neurons too
    assert len(gates) == (2 if name == "efficientnet-se" else 0)
    assert calls == len(layers) == len(set(map(id, layers))) == len(graph.spiking_nodes()) - len(gates)
    names = [n.name for n in graph.nodes]
    assert len(names) == len(set(names))  # every node named once
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ws.fold_batchnorm(model).modules())


def test_the_simulator_gives_pytorchs_class_on_every_input(converted, images):
    _, model, graph = converted
    result = ws.simulate(graph, images.numpy())
    with torch.no_grad():
        expected = ws.fold_batchnorm(model).double()(images.double()).argmax(1).numpy()
        unfolded = model.double()(images.double()).argmax(1).numpy()
        model.float()
    assert_equal_where_decided(result.predictions, expected, result, tolerance=1e-9, min_decided=1.0)
    assert_equal_where_decided(result.predictions, unfolded, result, tolerance=1e-9, min_decided=1.0)


def test_the_simulator_gives_pytorchs_output_spikes_on_every_input(converted, images):
    """Stronger than the class: every output unit's spike (the decoder's input) is the same."""
    _, model, graph = converted
    decoder = next(m for m in model.modules() if isinstance(m, ws.SoftmaxDecode))
    seen = []
    hook = decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model.double()(images.double())
    finally:
        hook.remove()
        model.float()
    result = ws.simulate(graph, images.numpy())
    spiking = [layer for layer in result.layers if layer.op == "spike"]
    assert sum(layer.spikes > 0 for layer in spiking) >= len(spiking) // 2  # not a network of silent layers
    assert_equal_where_decided(result.output_spikes, seen[0].numpy(), result, tolerance=1e-9, min_decided=1.0)


def test_nir_passes_nirs_checks_and_reads_back_to_the_same_network(converted, images, tmp_path):
    nir = pytest.importorskip("nir", reason="optional dependency 'nir' is not installed (pip install -e '.[export]')")
    from whetstone.export.nir import read_nir, to_nir, write_nir

    name, _, graph = converted
    nir_graph = to_nir(graph)
    nir_graph.validate_structure()  # nir's own check: every edge between existing nodes, no duplicates
    assert len(nir_graph.nodes) == len(set(nir_graph.nodes))
    back = read_nir(write_nir(graph, tmp_path / f"{name}.nir"))  # read_nir refuses cycles and shared names
    shapes = {n.name: n.shape for n in back.nodes if not n.name.endswith("_sum")}  # (max pooling is 2 NIR nodes)
    assert shapes == {n.name: n.shape for n in graph.nodes}
    x = images.numpy()
    np.testing.assert_array_equal(ws.simulate(back, x).output_spikes, ws.simulate(graph, x).output_spikes)
    assert isinstance(nir.read(tmp_path / f"{name}.nir"), nir.NIRGraph)


def test_the_synapses_chips_are_given_compute_what_the_simulator_does(converted, images):
    """Loihi 2's program, the PyNN script and the fit reports read the graph as populations and their synapses
    (``connectivity``). Run as such on the 8-bit graph, each spiking layer fires where the simulator's does. A
    layer with a bias reading two populations (ShuffleNet's split of a concatenation) counted its bias twice."""
    from whetstone.graph.connectivity import connectivity
    from whetstone.targets.base import at_most_bits

    graph = at_most_bits(converted[2], 8)
    populations = connectivity(graph)
    recorded = ws.simulate(graph, images.numpy(), record=tuple(p.name for p in populations)).recorded
    spikes = {p.name: recorded[p.name][:, 0].reshape(len(images), -1) for p in populations}
    fired = 0
    for population in populations:
        if population.reads_input:  # the encoder reads pixels: real-valued sums, the simulator's as given
            continue
        inputs = sum(matrix.to_dense().numpy() @ spikes[source].T for source, matrix in population.sources.items())
        assert np.array_equal((inputs.T + population.bias >= population.threshold), spikes[population.name] == 1)
        fired += int(spikes[population.name].sum())
    assert fired > 0


@pytest.mark.parametrize("name", ["densenet", "channel-slice", "shufflenet-v2"])
def test_routing_between_layers_is_fused_so_8_bit_synapses_compose_into_integers(name, images):
    """A DenseNet transition's pooled output concatenated into the next block, and a channel slice of calibrated
    spikes: the weight-only routing (a placement, a selection) fuses into the layer before the pooling or the
    layer that reads it, so no float routing is left where a chip's integer weights compose. A ShuffleNet unit's
    split of a shuffled concatenation of two layers' spikes stays weight-1 synapses, each source's scale moved
    into the convolution that reads them."""
    from whetstone.graph.connectivity import connectivity
    from whetstone.targets.base import at_most_bits

    _, _, graph = _converted(name)
    if name == "shufflenet-v2":  # one routing from each spiking source to its reader, of weight 1
        routings = [node for node in graph.nodes if ".take" in node.name or ".part" in node.name]
        assert routings and all(set(np.unique(node.weight)) == {0.0, 1.0} for node in routings)
        assert all(isinstance(graph.node(node.inputs[0]), SpikeNode) for node in routings)
    else:
        assert not any(node.name.startswith("cat_") or node.name.endswith(".take") for node in graph.nodes)
    integer = at_most_bits(graph, 8)
    for population in connectivity(integer):
        for matrix in population.sources.values():
            values = matrix.coalesce().values().numpy()
            np.testing.assert_array_equal(values, np.round(values))  # before: a float routing times integers
    spikes = ws.simulate(integer, images.numpy()).output_spikes
    assert (spikes == ws.simulate(graph, images.numpy()).output_spikes).mean() > 0.99  # 8 bits: 99.8% measured


@pytest.mark.parametrize("name", ["densenet", "shufflenet-v2", "googlenet"])
def test_a_converted_network_with_routed_channels_is_held_by_loihi_2(name):
    from whetstone.targets import get_target

    assert get_target("loihi2").prepare(_converted(name)[2]).metadata["quantized_bits"] == 8


def test_onnx_runtime_gives_pytorchs_class(converted, images, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="optional dependency 'onnxruntime' is not installed")
    from whetstone.export.onnx import write_onnx

    name, model, graph = converted
    path = write_onnx(graph, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (label,) = session.run(["label"], {"input": images.numpy()})
    result = ws.simulate(graph, images.numpy())
    with torch.no_grad():
        expected = model(images).argmax(1).numpy()
    # float32 against float64: a sample with any of its ~100k units within 1e-5 of a threshold is left out; at
    # one-bit levels thresholds sit in the bulk of the membranes, so in the channel-slice net about half are.
    assert_equal_where_decided(label, expected, result, min_decided=0.4)


def test_the_worked_example_runs_as_written(tmp_path):
    """examples/convert_your_model.py, shrunk: the bundled digits, one epoch each, width 4."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "convert_your_model.py"
    argv = [sys.executable, str(script), "--dataset", "mnist-mini", "--epochs", "1", "1", "--width", "4", "--threads", "1",
            "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "fully binary: True" in done.stdout and (tmp_path / "resnet18.nir").stat().st_size > 0
    agreement = float(re.search(r"the same class as PyTorch on ([\d.]+)%", done.stdout).group(1))
    assert agreement >= 99.0, done.stdout
    assert re.search(r"5\. Loihi 2's [\w -]+ weights: [\d.]+% on 1,000 images, float [\d.]+%", done.stdout), done.stdout


# -- Modules with code of their own for training and for evaluation, as timm writes them ---------------------
class NormAct(nn.BatchNorm2d):
    """A batch norm that also applies dropout and an activation, in a forward of its own that reads self.training
    (the layout of timm's BatchNormAct2d)."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                     self.momentum, self.eps)  # fmt: skip
        return self.act(self.drop(x))


class DropPath(nn.Module):
    """Stochastic depth: while training, a whole sample's branch is dropped with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, 1) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


class TimmBlock(nn.Module):
    def __init__(self, channels: int, drop_path: float) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), NormAct(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 1, bias=False), NormAct(channels, act=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):  # a linear bottleneck: nothing fires after the sum
        return x + self.drop_path(self.bn2(self.conv2(self.bn1(self.conv1(x)))))


class TimmNet(nn.Module):
    def __init__(self, drop_path: float = 0.5) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), NormAct(8)
        self.blocks = nn.Sequential(TimmBlock(8, drop_path), TimmBlock(8, drop_path))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.blocks(self.bn(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _timm_net() -> nn.Module:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"added a spiking activation at blocks\.0\.out_spike, blocks\.1\.out_spike"):
        return ws.spikify(TimmNet(), num_classes=10, key_width=40)


def test_modules_with_their_own_train_and_eval_code_keep_it_after_spikify():
    """spikify rewrites this model's call graph (a spiking head, linear bottlenecks), yet .train() and .eval() keep
    their meaning inside the modules that read self.training: batch statistics and their running averages while
    training, none of either in eval mode; stochastic depth while training, none in eval mode."""
    model = _timm_net()
    assert isinstance(model, torch.fx.GraphModule)
    assert isinstance(model.get_submodule("blocks.0.bn1.act"), ws.SpikingBReLU)  # converted inside, in place
    assert len(ws.spiking_layers(model)) == 6  # stem, 2 x (bn1, block output), head
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    statistics = model.get_submodule("blocks.1.bn2").running_mean
    model.train()
    before = statistics.clone()
    first, second = model(x), model(x)
    assert not torch.equal(statistics, before)  # running statistics move while training
    assert not torch.equal(first, second)  # stochastic depth drew other samples to drop
    model.eval()
    frozen = statistics.clone()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(statistics, frozen) and torch.equal(first, second)


def test_a_timm_style_network_deploys_spike_for_spike():
    model = _timm_net()
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    ws.set_model_sharpness(model, 1.0)
    graph = ws.to_spiking_graph(model, (3, 8, 8))
    assert "blocks.0.bn1.act" in [node.name for node in graph.spiking_nodes()]  # named by its module path
    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    result = ws.simulate(graph, images.numpy())
    with torch.no_grad():
        expected = model.double()(images.double()).argmax(1).numpy()
    assert_equal_where_decided(result.predictions, expected, result, tolerance=1e-5, min_decided=0.9)


def test_a_forward_that_branches_on_training_itself_is_refused_where_spikify_must_rewrite_it():
    class AuxiliaryHead(nn.Module):  # the branch is in the model's own forward, which spikify must rewrite here
        def __init__(self):
            super().__init__()
            self.body, self.relu, self.aux, self.fc = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10), nn.Linear(8, 10)

        def forward(self, x):
            x = self.relu(self.body(x))
            return self.fc(x) + self.aux(x) if self.training else self.fc(x)

    with pytest.raises(ws.ConversionError, match="takes another path in train than in eval mode"):
        ws.spikify(AuxiliaryHead(), num_classes=10)
    model = AuxiliaryHead()  # with nothing to rewrite, its forward is kept as written: both paths stay
    assert ws.spikify(model) is model and isinstance(model.relu, ws.SpikingBReLU)


def test_spikify_refuses_a_torchscript_module():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(ws.ConversionError, match="is a TorchScript module"):
        ws.spikify(scripted)


def test_real_values_into_synapses_are_refused_by_name_when_building_the_graph():
    """A hand-built model (spikify would have added the spike) whose second layer reads the first's real values."""
    model = ws.SpikingClassifier(
        nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 20), ws.SpikingBReLU(1.0)), ws.key_generator(10, 20)
    ).eval()
    with pytest.raises(ws.DeployError, match=r"features\.1 receives the real-valued output of 'features\.0'"):
        ws.to_spiking_graph(model, (4,))


def test_a_head_behind_an_identity_and_a_linear_subclass_convert_and_deploy():
    class TimmLinear(nn.Linear):  # timm's Linear: a subclass with a forward of its own
        def forward(self, x):
            return nn.functional.linear(x, self.weight, self.bias)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
            self.fc, self.flatten = TimmLinear(8, 10), nn.Identity()  # the classifier, then an Identity

        def forward(self, x):
            return self.flatten(self.fc(self.pool(self.relu(self.conv(x))).flatten(1)))

    torch.manual_seed(0)
    model = ws.spikify(Net(), num_classes=10, key_width=20)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 20
    ws.set_model_sharpness(model, 1.0)
    graph = ws.to_spiking_graph(model.eval(), (1, 6, 6))
    assert [n.op for n in graph.nodes] == ["input", "conv2d", "spike", "sumpool2d", "flatten", "affine", "spike"]


def test_a_squeeze_and_excitation_gate_is_one_neuron_that_fires_where_both_spike(images):
    """x * gate of spikes: the product is 1 exactly where both fire; in the graph, a neuron of threshold 1.5 over the
    two (the gate's spikes spread over every position it covers); it fires sometimes, and not everywhere."""
    _, _, graph = _converted("efficientnet-se")
    gate = graph.node("layers.0.se.mul")
    assert float(gate.threshold.min()) == float(gate.threshold.max()) == 1.5 and len(gate.inputs) == 2
    result = ws.simulate(graph, images.numpy(), record=["layers.0.se.mul"])
    fired = result.recorded["layers.0.se.mul"]
    assert 0.001 < fired.mean() < 0.99


class _RealGate(nn.Module):  # the gate multiplies batch norm's real output, which nothing else reads
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.se, self.fc = SqueezeExcite(8, 4), nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        gate = torch.sigmoid(self.se.se2(F.relu(self.se.se1(F.adaptive_avg_pool2d(h, 1)))))
        out = self.bn(self.conv(h)) * gate
        return self.fc(F.relu(out).mean((2, 3)))


class _NegativePoolNorm(PoolThenNorm):
    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.bn1.weight[3] = -1.0  # a maximum scaled by a negative number is a minimum


class _DataDependentPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        out = F.relu(self.conv(x))
        return self.fc(F.max_pool2d(out, out.size(-1)).flatten(1) * out.mean())  # a factor from the data


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (
            _RealGate,
            (
                r"mul\(\) in the forward of the model \(\S*test_dropin\.py:\d+: `out = self\.bn\(self\.conv\(h\)\) \* gate`\) "
                r"multiplies the real-valued output of 'conv'.*put a spiking activation before the product"
            ),
        ),
        (
            _NegativePoolNorm,
            (
                r"cannot fold batch norm bn1 \(\S*test_dropin\.py:\d+: `x = F\.relu\(self\.bn1\(self\.pool1.*\): it follows "
                r"the max pooling pool1 .* scales channels \[3\] by a number <= 0, which turns a maximum into a minimum: "
                r"move the batch norm before the pooling"
            ),
        ),
        (
            _DataDependentPool,
            r"mean\(\) in the forward of the model \(\S*test_dropin\.py:\d+: .*\) has no single-time-step",
        ),
    ],
)
def test_what_does_not_deploy_is_refused_in_one_line_naming_the_module_the_source_line_and_the_cause(network, message):
    torch.manual_seed(0)
    with pytest.raises(ws.DeployError, match=message) as raised:
        ws.spikify(network().eval(), num_classes=10, input_shape=SHAPE)
    assert "\n" not in str(raised.value)


def test_the_warm_start_benchmark_leaves_the_output_layer_to_calibrate_head():
    windows = _benchmark("warm_start")._windows
    args = argparse.Namespace(sharpen_epochs=10, binary_epochs=1, ramp=4.0, head_refit=True)
    hidden, head = windows(20, args)[:-1], windows(20, args)[-1]
    assert hidden == ws.ramp_schedule(19, 0, 9, 4.0) and head[0] >= 10  # the head's window after the last epoch
    args.head_refit = False
    assert windows(20, args) == ws.ramp_schedule(20, 0, 9, 4.0)
