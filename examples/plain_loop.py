"""The Whetstone recipe of the paper's software example as a plain PyTorch loop.

No Trainer, no CLI: just the public API (model, key, decoder, sharpener hooks). Run::

    python examples/plain_loop.py --data-dir DATA          # full MNIST, ~30 s per seed
"""

import sys

import torch
from torch import nn

import whetstone as ws
from whetstone.cli.flags import COUNT, OneLineParser, run_script


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $WHETSTONE_DATA)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=COUNT, default=21)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = ws.load_dataset(args.dataset, "train", args.data_dir)
    test = ws.load_dataset(args.dataset, "test", args.data_dir)
    x_test, y_test = test.images.float() / 255, test.labels

    # Dense 784-256-64-100 with bounded-ReLU spiking activations and a 10x100 (10-hot) output key.
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), ws.SpikingBReLU(),
        nn.Linear(256, 64), ws.SpikingBReLU(),
        nn.Linear(64, 100), ws.SpikingBReLU(),
        ws.SoftmaxDecode(ws.key_generator(10, 100, overlapping=False, seed=args.seed)),
    )  # fmt: skip
    for layer in model:  # start each unit at its threshold, in the middle of the bounded ReLU's linear region
        if isinstance(layer, nn.Linear):
            nn.init.constant_(layer.bias, 0.5)

    # eps: Adadelta's first steps scale with sqrt(eps); PyTorch's default 1e-6 is far too fast at lr 4.0.
    optimizer = torch.optim.Adadelta(model.parameters(), lr=4.0, rho=0.95, eps=1e-8)
    sharpener = ws.SimpleSharpener(start_epoch=5, steps=5, bottom_up=True)
    sharpener.on_train_begin(model)
    generator = torch.Generator().manual_seed(args.seed)

    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        total = 0.0
        for batch, start in enumerate(range(0, len(order), 128)):
            index = order[start : start + 128]
            x, y = train.images[index].float() / 255, train.labels[index]
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sharpener.on_batch_end(batch, loss.item())
            total += loss.item() * len(y)
        sharpener.on_epoch_end(epoch, total / len(order))
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}  loss {total / len(order):.4f}  test {100 * accuracy:.2f}%  "
              f"sharpness {ws.model_sharpness(model)}", flush=True)  # fmt: skip
        if sharpener.done:
            break

    with torch.no_grad():
        hidden = [model[:i + 1](x_test) for i, m in enumerate(model) if isinstance(m, ws.SpikingActivation)]  # fmt: skip
    binary = all(bool(((h == 0) | (h == 1)).all()) for h in hidden)
    print(f"fully binary: {sharpener.done and binary}; test accuracy {100 * accuracy:.2f}%")


if __name__ == "__main__":
    sys.exit(run_script(main))
