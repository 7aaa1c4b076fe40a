"""Convert your own model: a ResNet-18 written the way torchvision writes it (one shared nn.ReLU per block,
downsample shortcuts, adaptive average pooling, an fc head), from nn.Module to a fully binary spiking
network and a NIR file, in one page.

    python examples/convert_your_model.py --data-dir DATA            # full MNIST (docs/results.md)
    python examples/convert_your_model.py --dataset mnist-mini --epochs 1 1    # the bundled digits, a minute
    python examples/convert_your_model.py --network densenet --data-dir DATA   # a DenseNet instead:
        # concatenations of spikes and of convolutions, batch norm after them, average-pooled transitions

1. Train the ordinary ReLU network (or load yours).
2. ``ws.spikify(model, num_classes=10, calibrate=batches)``: every activation call site becomes a spiking
   activation, the fc head an N-hot spiking head; the trained weights are kept, and a few training batches
   give each spiking layer the range of its ReLU activations, so the converted network starts where the
   trained one is (without ``calibrate`` every layer would clip at 1).
3. Fine-tune while sharpening, bottom-up, to binary spikes.
4. ``ws.to_spiking_graph``: batch norm and the average pooling folded into the weights; run it in the
   event-driven simulator on the whole test set and write the NIR file.
5. What a chip's integer weights cost it: the 8-bit network written for Loihi 2 against the float one.
"""

import sys
import time
from pathlib import Path

import torch
from torch import nn

import whetstone as ws
from whetstone.cli.flags import COUNT, OneLineParser, run_script
from whetstone.graph.precision import precision_cost
from whetstone.targets import export, get_target


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock, as written there
    def __init__(self, inplanes, planes, stride=1, downsample=None):
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


class ResNet18(nn.Module):  # torchvision's layout [2, 2, 2, 2]; a 3x3 stem without max pooling for small images
    def __init__(self, width=16, channels=1, num_classes=10):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(2 * width, 2)
        self.layer3 = self._make_layer(4 * width, 2)
        self.layer4 = self._make_layer(8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):  # DenseNet: each layer reads the concatenation of every earlier output
    def __init__(self, inputs: int, growth: int, width: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(inputs), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inputs, width * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(width * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        joined = torch.cat(features, 1)  # batch norm after a concatenation of spikes and of convolutions
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(joined))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, inputs: int, growth: int, width: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(inputs + i * growth, growth, width) for i in range(layers)})

    def forward(self, init):
        features = [init]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):  # torchvision's layout, small: growth 4, two blocks of two layers
    def __init__(self, growth=4, blocks=(2, 2), init=8, channels=1, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, init, 3, padding=1, bias=False),
            nn.BatchNorm2d(init),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        channels = init
        for index, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{index + 1}", DenseBlock(layers, channels, growth, 2))
            channels += layers * growth
            if index != len(blocks) - 1:  # a transition: batch norm, ReLU, 1x1 conv, average pooling (linear output)
                self.features.add_module(f"transition{index + 1}", nn.Sequential(
                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2, 2)))  # fmt: skip
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = nn.functional.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1))


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder holding mnist/ (default: $WHETSTONE_DATA)")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "mnist-mini", "cifar10"])
    parser.add_argument("--network", default="resnet18", choices=["resnet18", "densenet"])
    parser.add_argument(
        "--width",
        type=COUNT,
        default=16,
        help="ResNet: channels of the first stage (torchvision: 64); DenseNet: the growth rate (torchvision: 32)",
    )
    parser.add_argument("--epochs", type=COUNT, nargs=2, default=[4, 6], metavar=("RELU", "SHARPEN"))
    parser.add_argument("--out", default="runs/convert", help="folder for the NIR file")
    parser.add_argument("--threads", type=COUNT, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = (
        ws.load_dataset(args.dataset, "train", args.data_dir),
        ws.load_dataset(args.dataset, "test", args.data_dir),
    )
    shape = tuple(train.images.shape[1:])
    loader = ws.TensorLoader.from_dataset(train, 128, shuffle=True, seed=args.seed)
    test_loader = ws.TensorLoader.from_dataset(test, 1000)
    started = time.perf_counter()

    # 1. The ordinary network: plain PyTorch training (any trained model of yours would do).
    if args.network == "densenet":
        model = DenseNet(args.width, (4, 4, 4), 2 * args.width, channels=shape[0], num_classes=len(train.classes))
    else:
        model = ResNet18(args.width, channels=shape[0], num_classes=len(train.classes))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    ws.Trainer(model, optimizer, progress=False).fit(loader, args.epochs[0])
    relu_accuracy = ws.evaluate(model, test_loader)[1]
    print(f"1. ReLU {args.network} (width {args.width}): {relu_accuracy:.2%} after {args.epochs[0]} epochs", flush=True)

    # 2. Convert: one spiking activation per call site (17 in the ResNet), an N-hot spiking head, and each layer's
    #    range calibrated on a few training batches.
    batches = [x for _, (x, _) in zip(range(8), loader)]
    spiking = ws.spikify(model, num_classes=len(train.classes), key_width=10 * len(train.classes), calibrate=batches)
    layers = ws.spiking_layers(spiking)
    print(f"2. spikified: {len(layers)} spiking layers; before sharpening {ws.evaluate(spiking, test_loader)[1]:.2%}")

    # 3. Sharpen bottom-up, a little every batch, while the binary layers keep learning (surrogate gradients).
    steps = max(1, (args.epochs[1] - 1) * len(loader) // len(layers))  # binary one epoch before the end
    ws.set_model_surrogate(spiking, 0.0)
    trainer = ws.Trainer(spiking, torch.optim.Adam(spiking.parameters(), 1e-3), ws.SimpleSharpener(0, steps=steps, per="batch"),
                         progress=False)  # fmt: skip
    result = trainer.fit(loader, args.epochs[1], test_loader)
    binary_accuracy = result.history[-1].eval_accuracy
    print(f"3. sharpened: {binary_accuracy:.2%}, fully binary: {result.fully_binary}", flush=True)

    # 4. Deploy: fold, simulate event by event on the whole test set, write NIR.
    spiking.eval()  # batch norm with its running statistics, as deployed
    graph = ws.to_spiking_graph(spiking, shape)
    images = test.images.float().numpy() / 255
    simulated = ws.simulate(graph, images)
    with torch.no_grad():
        predictions = torch.cat([spiking(x).argmax(1) for x, _ in test_loader]).numpy()
    agreement = (simulated.predictions == predictions).mean()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = export(graph, Path(args.out) / f"{args.network}.nir")  # the generic NIR file
    print(f"4. simulator: {simulated.accuracy(test.labels.numpy()):.2%}, the same class as PyTorch on {agreement:.2%} of "
          f"{len(images):,} test images; {simulated.synaptic_ops()[1]:,.0f} synaptic events per image; wrote {path}")  # fmt: skip
    # 5. At a chip's precision: the 8-bit integer network Loihi 2 would hold, against the float one.
    cost = precision_cost(graph, get_target("loihi2").prepare(graph), images, test.labels.numpy())
    print(f"5. Loihi 2's {cost.line()}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(run_script(main))
