import gzip
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import whetstone as ws
from whetstone.data import datasets as wdata
from whetstone.data.datasets import DatasetError, load_dataset, read_idx
from whetstone.data.loader import TensorLoader

SHARED = os.environ.get("WHETSTONE_DATA")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def test_bundled_mini_mnist():
    train, test = load_dataset("mnist-mini", "train"), load_dataset("mnist-mini", "test")
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (1000, 1, 28, 28) and test.labels.dtype == torch.int64
    assert set(train.labels.unique().tolist()) == set(range(10))


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    tensor = read_idx(write_idx(tmp_path / "a.idx", array, compress))
    assert tensor.tolist() == array.tolist()


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + bytes(16)))
    with pytest.raises(DatasetError, match="bad magic number 08030000"):
        read_idx(path)


def test_read_idx_truncated_data_and_gzip(tmp_path):
    array = np.zeros((4, 5, 5), dtype=np.uint8)
    path = write_idx(tmp_path / "t.idx", array, compress=False)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(path)
    gz = write_idx(tmp_path / "t.gz", array)
    gz.write_bytes(gz.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_idx(gz)


def test_read_idx_wrong_dimensions(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(DatasetError, match="has 2 dimensions, expected 1"):
        read_idx(path, expected_ndim=1)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=64))
def test_read_idx_never_crashes_on_garbage(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "f.idx"
    path.write_bytes(payload)
    try:
        read_idx(path)
    except DatasetError:
        pass


def make_mnist_folder(root: Path, labels=None, image_shape=(28, 28)) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.random.randint(0, 255, (n, *image_shape)))
        values = np.arange(n) % 10 if labels is None else np.full(n, labels)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", values)
    return root


def test_data_dir_and_env_var(tmp_path, monkeypatch):
    root = make_mnist_folder(tmp_path)
    assert len(load_dataset("mnist", "test", data_dir=root)) == 10
    monkeypatch.setenv("WHETSTONE_DATA", str(root))
    assert wdata.resolve_data_dir() == root
    assert len(load_dataset("mnist", "train")) == 20


def test_missing_data_message(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz") in message
    assert "WHETSTONE_DATA" in message and "download" in message


def test_labels_out_of_range_and_wrong_shape(tmp_path):
    root = make_mnist_folder(tmp_path / "a", labels=12)
    with pytest.raises(DatasetError, match=r"labels must be in \[0, 9\], found 12..12"):
        load_dataset("mnist", "test", data_dir=root)
    root = make_mnist_folder(tmp_path / "b", image_shape=(32, 32))
    with pytest.raises(DatasetError, match=r"must be uint8 of shape \(N, 1, 28, 28\)"):
        load_dataset("mnist", "test", data_dir=root)


def test_float_labels_are_refused_not_truncated(tmp_path):
    root = make_mnist_folder(tmp_path)
    labels = np.array([2.7, 3.0] * 5, dtype=">f4")  # an IDX file of float32 labels (type 0x0D)
    header = bytes([0, 0, 0x0D, 1]) + len(labels).to_bytes(4, "big")
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))
    with pytest.raises(DatasetError, match="labels must be integers, the file holds torch.float32 values"):
        load_dataset("mnist", "test", data_dir=root)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("mnist-mini", "val")


def test_download_verifies_sha256(tmp_path, monkeypatch):
    images = np.random.randint(0, 255, (3, 28, 28))
    good = {name: write_idx(tmp_path / name, arr).read_bytes()
            for name, arr in (("x-images.gz", images), ("x-labels.gz", np.arange(3)))}  # fmt: skip
    digest = {name: hashlib.sha256(gzip.decompress(raw)).hexdigest() for name, raw in good.items()}
    split = wdata.Split("x-images.gz", "x-labels.gz", digest["x-images.gz"], digest["x-labels.gz"])
    spec = wdata.DatasetSpec("toy", "toy", (1, 28, 28), tuple("0123456789"), {"test": split}, urls=("mem://",))
    monkeypatch.setitem(wdata.DATASETS, "toy", spec)
    served = dict(good)

    def fake_urlopen(url, timeout):
        return io.BytesIO(served[url.removeprefix("mem://")])

    monkeypatch.setattr(wdata.urllib.request, "urlopen", fake_urlopen)
    assert len(load_dataset("toy", "test", tmp_path / "root", download=True)) == 3
    assert (tmp_path / "root" / "toy" / "x-images.gz").read_bytes() == good["x-images.gz"]
    served["x-labels.gz"] = gzip.compress(b"tampered")
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        load_dataset("toy", "test", tmp_path / "other", download=True)
    assert sorted(p.name for p in (tmp_path / "other" / "toy").iterdir()) == [
        "x-images.gz"
    ]  # no partial or temporary file


def test_cifar_zip_reader_mixes_the_class_folders_in_a_fixed_order(tmp_path):
    from PIL import Image

    archive = tmp_path / "cifar10-jpeg" / "cifar10-jpeg.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        names = [f"test/{kind}/{i:04d}.jpg" for kind in ("airplane", "cat") for i in range(10)] + ["train/dog/0000.jpg"]
        for name in names:
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (200 if "/cat/" in name else 0, 10, 200)).save(buffer, format="JPEG")
            zf.writestr(name, buffer.getvalue())
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.images.shape == (20, 3, 32, 32) and sorted(test.labels.tolist()) == [0] * 10 + [3] * 10
    assert set(test.labels[:6].tolist()) == {0, 3}  # the first images are not all of the first folder
    assert torch.equal(load_dataset("cifar10", "test", data_dir=tmp_path).labels, test.labels)  # one fixed order
    red = test.images[:, 0].float().mean((1, 2))
    assert torch.equal(red > 100, test.labels == 3)  # each image keeps its own label
    assert (test.images[:, 2].float().mean((1, 2)) - 200).abs().max() < 5  # blue channel kept


def test_tensor_loader_batches_and_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    loader = TensorLoader(images, labels, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0] * 255, y.float())
    assert len(TensorLoader(images, labels, 4, drop_last=True)) == 2

    shuffled = TensorLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    first, second = next(iter(shuffled))[1], next(iter(shuffled))[1]
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    shuffled.set_epoch(0)
    assert torch.equal(next(iter(shuffled))[1], first)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TensorLoader(images, labels, 0)


@pytest.mark.skipif(not SHARED, reason="WHETSTONE_DATA not set: full MNIST / Fashion-MNIST not available")
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_full_datasets_from_shared_root(name):
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().min() > 5000


def test_random_crop_flip_shifts_and_mirrors_whole_images():
    from whetstone.data.loader import random_crop_flip

    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    out = random_crop_flip(padding=2)(x.repeat(50, 1, 1, 1))
    assert out.shape == (100, 3, 8, 8)
    # Every output is the input shifted by at most 2 pixels (zeros shifted in), possibly mirrored.
    for image, source in zip(out, x.repeat(50, 1, 1, 1)):
        padded = torch.nn.functional.pad(source, (2, 2, 2, 2))
        candidates = [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(image, c) or torch.equal(image, c.flip(-1)) for c in candidates)
    assert not torch.equal(out[:2], x)  # something moved
    flipped_only = random_crop_flip(padding=0)(x.repeat(50, 1, 1, 1))
    assert {bool(torch.equal(a, b)) for a, b in zip(flipped_only, x.repeat(50, 1, 1, 1))} == {True, False}
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(padding=-1)


def test_augmentation_mirrors_only_where_the_class_survives():
    from whetstone.data.loader import augmentation

    torch.manual_seed(0)
    x = torch.arange(1 * 8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8).repeat(200, 1, 1, 1) + 1
    digits, clothes = augmentation("mnist")(x), augmentation("fashion-mnist")(x)

    def mirrored(images):
        padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
        shifts = [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        return [any(torch.equal(image, s.flip(-1)) for s in shifts) and not any(torch.equal(image, s) for s in shifts)
                for image in images]  # fmt: skip

    assert not any(mirrored(digits))  # a mirrored digit is another symbol (or none)
    assert any(mirrored(clothes))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        augmentation("imagenet")


def test_idx_bombs_are_refused_before_they_are_unpacked(tmp_path):
    header = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(header + bytes(10) + bytes(8 << 20)))  # 10 labels, then 8 MB more
    with pytest.raises(DatasetError, match="holds more data bytes but its header"):
        read_idx(path)
    huge = bytes([0, 0, 0x08, 3]) + b"".join((1 << 16).to_bytes(4, "big") for _ in range(3))  # 2^48 bytes declared
    path.write_bytes(gzip.compress(huge))
    with pytest.raises(DatasetError, match=r"its header declares \(65536, 65536, 65536\), .* whetstone reads at most"):
        read_idx(path)


def _cifar_zip(tmp_path: Path, member: bytes, patch=None) -> Path:
    """A CIFAR-10 zip with one test member; ``patch(raw zip bytes) -> bytes`` crafts its headers."""
    archive = tmp_path / "cifar10-jpeg" / "cifar10-jpeg.zip"
    archive.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("test/cat/0000.jpg", member)  # PNG bytes under a .jpg name: Pillow reads either
    raw = bytearray(buffer.getvalue())
    archive.write_bytes(bytes(patch(raw) if patch else raw))
    return tmp_path


def _png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (its pixels are a 1x1 image's: never decoded)."""
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _set_header_field(raw: bytearray, local: int, central: int, value: bytes) -> bytearray:
    start = raw.index(b"PK\x03\x04")
    raw[start + local : start + local + len(value)] = value
    start = raw.index(b"PK\x01\x02")
    raw[start + central : start + central + len(value)] = value
    return raw


@pytest.mark.parametrize(
    "member,patch,message",
    [
        (_png(60000, 60000), None, "test/cat/0000.jpg"),  # 3.6 billion pixels declared
        (_png(32, 32), lambda raw: _set_header_field(raw, 6, 8, b"\x01\x00"), "is encrypted"),
        (_png(32, 32), lambda raw: _set_header_field(raw, 8, 10, b"\x63\x00"), "compression method"),
        (
            _png(32, 32),
            lambda raw: _set_header_field(raw, 22, 24, (10**9).to_bytes(4, "little")),
            "unpacks to 1,000,000,000 bytes",
        ),
    ],
    ids=["decompression-bomb", "encrypted", "unknown-method", "zip-bomb"],
)
def test_cifar_members_that_are_not_small_images_are_refused_in_one_line(tmp_path, member, patch, message):
    root = _cifar_zip(tmp_path, member, patch)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("cifar10", "test", data_dir=root)
    assert "\n" not in str(info.value)


def _bars(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 12x12 images of one bright vertical bar (left, middle or right) over noise: three classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 50, (count, 12, 12)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[:, 4 * label : 4 * label + 4] += 200
    return images, labels


def test_a_data_set_of_your_own_trains_from_the_command_line_as_a_folder_arrays_or_a_factory(
    tmp_path, monkeypatch, capsys
):
    """The same images as a .npz file, a folder of PNGs per class and a factory of map-style data sets load
    alike (float pixels in [0, 1] stored back as the same uint8), train to binary from the CLI, and the run
    names its data so that simulate finds it from another folder."""
    from PIL import Image

    from whetstone.cli.main import main

    (x_train, y_train), (x_test, y_test) = _bars(400, 0), _bars(150, 1)
    np.savez(tmp_path / "bars.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array(["left", "middle", "right"]))  # fmt: skip
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "bars" / split / ("left", "middle", "right")[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:04d}.png")
    (tmp_path / "my_bars.py").write_text(
        "import numpy as np, torch\n"
        f"_d = np.load({str(tmp_path / 'bars.npz')!r})\n"
        "def data():\n"
        "    pairs = lambda x, y: [(torch.tensor(i, dtype=torch.float32)[None] / 255, int(c)) for i, c in zip(x, y)]\n"
        "    return pairs(_d['x_train'], _d['y_train']), pairs(_d['x_test'], _d['y_test'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    npz, folder = ws.load_dataset(str(tmp_path / "bars.npz"), "test"), ws.load_dataset(str(tmp_path / "bars"), "test")
    factory = ws.load_dataset("my_bars:data", "test")
    assert npz.classes == folder.classes == ("left", "middle", "right") and factory.classes == ("0", "1", "2")
    order = np.argsort(y_test, kind="stable")  # the folder lists its images class by class
    assert torch.equal(folder.images[:, 0], torch.from_numpy(x_test[order])) and torch.equal(
        folder.labels, torch.from_numpy(y_test[order])
    )
    assert torch.equal(npz.images, factory.images) and npz.images.shape == (150, 1, 12, 12)
    monkeypatch.chdir(tmp_path)
    for name in ("bars.npz", "bars", "my_bars:data"):
        out = tmp_path / f"run-{name.replace(':', '-')}"
        code = main(["train", "--model", "mnist-dense", "--dataset", name, "--epochs", "5", "--start-epoch", "1",
                     "--steps", "1", "--no-progress", "--threads", "1", "--out", str(out)])  # fmt: skip
        printed = capsys.readouterr().out
        assert code == 0 and "fully binary: every spiking unit" in printed, printed
        accuracy = float(printed.split("final test accuracy: ")[1].split("%")[0])
        assert accuracy > 80, printed
    (tmp_path / "mnist-mini").mkdir()  # a folder named as a built-in data set: the name still means the built-in
    assert ws.RunConfig(model="mnist-dense", dataset="mnist-mini").resolved().dataset == "mnist-mini"
    monkeypatch.chdir(tmp_path / "bars")  # the run saved where its data is: found from anywhere
    assert main(["simulate", str(tmp_path / "run-bars.npz"), "--no-progress"]) == 0
    assert f"150 {tmp_path / 'bars.npz'} test images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: np.savez(p / "d.npz", x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.zeros(4, int)), "d.npz: no array x_test, y_test (it holds x_train, y_train)"),
        (lambda p: np.savez(p / "d.npz", x_train=np.full((4, 5, 5), 2.0), y_train=np.zeros(4, int), x_test=np.zeros((2, 5, 5)), y_test=np.zeros(2, int)),
         "d.npz x_train: float images must be finite and in [0, 1], got values from 2 to 2"),
        (lambda p: np.savez(p / "d.npz", x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.zeros(3, int), x_test=np.zeros((2, 5, 5), np.uint8), y_test=np.zeros(2, int)),
         "d.npz y_train: labels must be one per image (4), got shape (3,)"),
        (lambda p: np.savez(p / "d.npz", x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.zeros(4, int), x_test=np.zeros((2, 6, 6), np.uint8), y_test=np.zeros(2, int)),
         "d.npz: train images are (1, 5, 5) but test images (1, 6, 6)"),
        (lambda p: (p / "d.npz").write_text("not a zip"), "d.npz: not a .npz file (a zip of .npy arrays, as numpy.savez writes)"),
        (lambda p: (p / "d" / "train" / "a").mkdir(parents=True), "d: no test folder (it holds train/<class>/* and test/<class>/*)"),
    ],
    ids=["missing-arrays", "floats-above-1", "labels-of-another-length", "splits-of-other-sizes", "not-a-zip", "no-test-folder"],
)  # fmt: skip
def test_a_data_set_of_your_own_that_is_wrong_is_named_with_what_is_wrong(tmp_path, make, message):
    make(tmp_path)
    name = str(tmp_path / ("d.npz" if (tmp_path / "d.npz").exists() else "d"))
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        ws.load_dataset(name)
    assert str(raised.value) == str(tmp_path / message) and "\n" not in str(raised.value)
