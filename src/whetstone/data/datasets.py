"""Datasets read from their files and checked, held in memory as uint8 tensors (batched by ``loader.py``).

Where the files come from, in order: the ``data_dir`` argument (``--data-dir`` on the command line),
the ``WHETSTONE_DATA`` environment variable, then ``~/.cache/whetstone/data``. Layout under that root::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    fashion-mnist/  (same names)
    cifar10-jpeg/cifar10-jpeg.zip   (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg)

MNIST and Fashion-MNIST can be downloaded with ``download=True``; files are verified by the SHA-256 of
their uncompressed content. ``mnist-mini`` (4,000 train + 1,000 test MNIST digits) ships inside the
package so examples and tests run offline.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..utils.files import atomic_write
from .user_data import is_user_source, read_user_data

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "ImageDataset",
    "Split",
    "check_available",
    "check_holds",
    "load_dataset",
    "read_idx",
    "resolve_data_dir",
]

_PACKAGE_DATA = Path(__file__).parent  # mnist-mini/ beside this file
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


class DatasetError(RuntimeError):
    """A dataset file is missing, unreadable or not what was expected."""


@dataclass(frozen=True)
class Split:
    images: str
    labels: str
    images_sha256: str | None = None  # of the uncompressed content
    labels_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and what it must look like."""

    name: str
    folder: str
    image_shape: tuple[int, int, int]  # (channels, height, width)
    classes: tuple[str, ...]
    splits: dict[str, Split] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    how_to_get: str = ""
    crop_padding: int = 2  # training augmentation: random crop after zero-padding by this many pixels
    mirror: bool = False  # training augmentation: a left-right mirror keeps the class (not for digits)


_MNIST_SPLITS = {
    "train": Split(
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test": Split(
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}  # fmt: skip
_FASHION_SPLITS = {
    "train": Split(
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test": Split(
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}  # fmt: skip
_DIGITS = tuple(str(d) for d in range(10))

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        "mnist",
        (1, 28, 28),
        _DIGITS,
        _MNIST_SPLITS,
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        how_to_get="pass download=True (--download), or copy the four IDX .gz files there",
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "fashion-mnist",
        (1, 28, 28),
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
        _FASHION_SPLITS,
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        how_to_get="pass download=True (--download), or copy the four IDX .gz files there",
        mirror=True,
    ),
    "mnist-mini": DatasetSpec(
        "mnist-mini",
        "mnist-mini",
        (1, 28, 28),
        _DIGITS,
        {
            "train": Split("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": Split("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        },
        how_to_get="it ships with the package; reinstall whetstone-snn",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "cifar10-jpeg",
        (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        {"train": Split("cifar10-jpeg.zip", ""), "test": Split("cifar10-jpeg.zip", "")},
        how_to_get="place cifar10-jpeg.zip (train/<class>/*.jpg, test/<class>/*.jpg) there",
        crop_padding=4,
        mirror=True,
    ),
}


@dataclass
class ImageDataset:
    """A whole split in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir``, else ``$WHETSTONE_DATA``, else ``~/.cache/whetstone/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("WHETSTONE_DATA"):
        return Path(os.environ["WHETSTONE_DATA"]).expanduser()
    return Path.home() / ".cache" / "whetstone" / "data"


#: The most data bytes an IDX file may declare (full MNIST's images are 47 MB): a crafted header or a gzip
#: bomb is refused before anything that large is decompressed or allocated.
_MAX_IDX_BYTES = 2**32


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> Tensor:
    """Read an IDX file (optionally gzip-compressed) into a tensor, checking its header and length. The
    file is decompressed as a stream and never past the length its header declares."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            shape, dtype, data = _read_idx_stream(stream, path, expected_ndim)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DatasetError(f"cannot read {path}: {error} (the file is corrupt or truncated)") from None
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _read_idx_stream(
    stream: io.BufferedIOBase, path: Path, expected_ndim: int | None
) -> tuple[tuple[int, ...], np.dtype, bytes]:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file: bad magic number {magic.hex() or '(empty)'} "
            "(expected 0000 then a type code such as 08 and the number of dimensions)"
        )
    ndim = magic[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"{path} has {ndim} dimensions, expected {expected_ndim}")
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DatasetError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    expected = math.prod(shape) * dtype.itemsize
    if expected > _MAX_IDX_BYTES:
        raise DatasetError(
            f"{path}: its header declares {shape}, {expected:,} bytes; whetstone reads at most {_MAX_IDX_BYTES:,}"
        )
    data = stream.read(expected)
    if len(data) != expected or stream.read(1):
        held = f"{len(data)} data bytes" if len(data) != expected else "more data bytes"
        raise DatasetError(
            f"{path} holds {held} but its header {shape} says {expected} (the file is truncated or corrupt)"
        )
    return shape, dtype, data


def _download(spec: DatasetSpec, split: Split, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(
            f"--download cannot create the data folder {folder}: {error.strerror or error}; pass --data-dir DIR (or set "
            "WHETSTONE_DATA) to a folder you can write"
        ) from None
    for filename, digest in ((split.images, split.images_sha256), (split.labels, split.labels_sha256)):
        target = folder / filename
        if target.exists() and _content_sha256(target.read_bytes()) == digest:
            continue
        errors = []
        for base in spec.urls:
            try:
                with urllib.request.urlopen(base + filename, timeout=60) as response:
                    payload = response.read()
            except OSError as error:
                errors.append(f"{base + filename}: {error}")
                continue
            if _content_sha256(payload) != digest:
                errors.append(f"{base + filename}: SHA-256 mismatch")
                continue
            atomic_write(target, payload)
            break
        else:
            raise DatasetError(f"could not download {filename} for {spec.name}: " + "; ".join(errors))


def _content_sha256(payload: bytes) -> str | None:
    """SHA-256 of ``payload``'s content (gunzipped if gzip), read as a stream; None if it is corrupt or would
    unpack to more than an IDX file may hold (a gzip bomb)."""
    digest, total = hashlib.sha256(), 0
    try:
        with (
            gzip.GzipFile(fileobj=io.BytesIO(payload)) if payload[:2] == b"\x1f\x8b" else io.BytesIO(payload) as stream
        ):
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > _MAX_IDX_BYTES + 64:
                    return None
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _check_images_labels(spec: DatasetSpec, split: str, images: Tensor, labels: Tensor, where: Path) -> None:
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != spec.image_shape:
        raise DatasetError(
            f"{where}: {spec.name} {split} images must be uint8 of shape (N, {', '.join(map(str, spec.image_shape))}), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dim() != 1 or len(labels) != len(images):
        raise DatasetError(f"{where}: {len(images)} images but labels of shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(spec.classes)):
        raise DatasetError(
            f"{where}: labels must be in [0, {len(spec.classes) - 1}], found {int(labels.min())}..{int(labels.max())}"
        )


def _load_idx_split(spec: DatasetSpec, split: Split, folder: Path) -> tuple[Tensor, Tensor]:
    images = read_idx(folder / split.images, expected_ndim=3).unsqueeze(1)
    labels = read_idx(folder / split.labels, expected_ndim=1)
    if labels.is_floating_point():  # class indices are integers: never truncate 2.7 to 2
        raise DatasetError(f"{folder / split.labels}: labels must be integers, the file holds {labels.dtype} values")
    return images, labels.long()


#: The largest CIFAR-10 zip member read (each is a 32x32 JPEG of about 1 KB).
_MAX_MEMBER_BYTES = 1 << 20


def _load_cifar_zip(spec: DatasetSpec, split: str, path: Path) -> tuple[Tensor, Tensor]:
    from PIL import Image  # Pillow comes with matplotlib; imported only for CIFAR-10

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    with archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg"))
        if not names:
            raise DatasetError(f"{path} has no {split}/<class>/*.jpg images")
        # The zip holds one class folder after another; a fixed mixed order (the same on every machine) makes
        # "the first N images" (--limit, --holdout) a sample of every class, as in the IDX files.
        names = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
        images = np.empty((len(names), 32, 32, 3), dtype=np.uint8)
        labels = np.empty(len(names), dtype=np.int64)
        for index, name in enumerate(names):
            class_name = name.split("/")[1]
            if class_name not in spec.classes:
                raise DatasetError(f"{path}: {name} is in unknown class folder {class_name!r}")
            labels[index] = spec.classes.index(class_name)
            if archive.getinfo(name).file_size > _MAX_MEMBER_BYTES:  # a 32x32 JPEG is about 1 KB
                raise DatasetError(f"{path}: member {name} unpacks to {archive.getinfo(name).file_size:,} bytes, not "
                                   "a 32x32 image")  # fmt: skip
            try:
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    if image.size != (32, 32):  # checked before decoding: a huge image is never decompressed
                        raise DatasetError(
                            f"{path}: member {name} is {image.size[0]}x{image.size[1]} pixels, expected 32x32"
                        )
                    pixels = np.asarray(image.convert("RGB"))
            except DatasetError:
                raise
            # CRC error, not an image, truncated, encrypted, an unknown compression method, a decompression bomb
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                    Image.DecompressionBombError) as error:  # fmt: skip
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise DatasetError(f"{path}: member {name} is unreadable: {reason}") from None
            images[index] = pixels
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


#: What a data set's name may be, as every message that refuses one says it.
DATASET_CHOICES = (f"choose one of {', '.join(sorted(DATASETS))}, or give a folder (train/<class>/*, test/<class>/*), "
                   "a .npz file (x_train, y_train, x_test, y_test) or package.module:factory")  # fmt: skip


def is_dataset_name(name: object) -> bool:
    """Whether ``name`` names a built-in data set or one of the user's own (nothing is read)."""
    return name in DATASETS or (isinstance(name, str) and is_user_source(name))


def unknown_dataset(name: object) -> ValueError:
    """The error for a data set name that is neither built in nor one of the user's own."""
    return ValueError(f"unknown dataset {name!r}; {DATASET_CHOICES}")


def dataset_spec(name: str) -> DatasetSpec:
    """What the data set ``name`` looks like: a built-in's spec, or one read from the user's own data (see
    :mod:`~whetstone.data.user_data`; read once). ``ValueError`` for a name that is neither."""
    if name in DATASETS:
        return DATASETS[name]
    if not is_dataset_name(name):
        raise unknown_dataset(name)
    data = read_user_data(name)
    return DatasetSpec(name, name, data.image_shape, data.classes, {split: Split("", "") for split in data.splits})


def _files(name: str, split: str, data_dir: str | os.PathLike | None) -> tuple[DatasetSpec, Split, Path]:
    if name not in DATASETS:
        raise unknown_dataset(name)
    spec = DATASETS[name]
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for {name}; choose one of {', '.join(spec.splits)}")
    root = _PACKAGE_DATA if name == "mnist-mini" else resolve_data_dir(data_dir)
    return spec, spec.splits[split], root / spec.folder


def check_holds(dataset: str, shape: tuple[int, ...], source: object) -> None:
    """``ValueError`` unless each image of ``dataset`` holds as many values as one sample of ``shape``, what
    ``source`` (a file, named in the message) takes: an image read row by row holds its steps' values."""
    has = dataset_spec(dataset).image_shape
    if math.prod(has) != math.prod(shape):
        shapes = ["x".join(map(str, dims)) for dims in (has, shape)]
        raise ValueError(f"--dataset {dataset} has {shapes[0]} images but {source} takes {shapes[1]}")


def check_available(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                    splits: tuple[str, ...] = ("train", "test")) -> None:  # fmt: skip
    """``DatasetError`` (saying where it looked and how to get them) unless the files of ``splits`` of
    dataset ``name`` are present, or can be downloaded. Cheap: nothing is read (but a data set of the user's
    own, which is read once to be checked)."""
    if name not in DATASETS:
        dataset_spec(name)
        return
    for split in splits:
        spec, files, folder = _files(name, split, data_dir)
        missing = [f for f in (files.images, files.labels) if f and not (folder / f).is_file()]
        if missing and not (download and spec.urls):
            raise DatasetError(
                f"{spec.name} {split} data not found: looked for {', '.join(str(folder / f) for f in missing)}. "
                f"Set --data-dir or WHETSTONE_DATA to the folder that holds '{spec.folder}/', or {spec.how_to_get}."
            )


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = False
) -> ImageDataset:
    """Load a whole split into memory.

    Args:
        name: one of :data:`DATASETS` (``mnist``, ``fashion-mnist``, ``mnist-mini``, ``cifar10``), or a data set
            of the user's own: a folder, a ``.npz`` file or ``package.module:factory`` (see
            :mod:`~whetstone.data.user_data`).
        split: ``"train"`` or ``"test"``.
        data_dir: the data root (see the module docs); ignored for the bundled ``mnist-mini``.
        download: fetch missing MNIST / Fashion-MNIST files (verified by SHA-256) into the root.
    """
    if name not in DATASETS:  # the user's own: see user_data
        spec = dataset_spec(name)
        if split not in spec.splits:
            raise ValueError(f"unknown split {split!r} for {name}; choose one of {', '.join(spec.splits)}")
        images, labels = read_user_data(name).splits[split]
        return ImageDataset(name, split, images, labels, spec.classes)
    spec, files, folder = _files(name, split, data_dir)
    if download and spec.urls:
        _download(spec, files, folder)
    check_available(name, data_dir, splits=(split,))
    if name == "cifar10":
        images, labels = _load_cifar_zip(spec, split, folder / files.images)
    else:
        images, labels = _load_idx_split(spec, files, folder)
    _check_images_labels(spec, split, images, labels, folder)
    return ImageDataset(name, split, images, labels, spec.classes)


def make_mini_subset(source: str | os.PathLike, target: str | os.PathLike, train: int = 4000, test: int = 1000) -> None:
    """Write the first ``train`` / ``test`` MNIST digits of ``source`` as IDX .gz files into ``target``
    (how the bundled ``mnist-mini`` was made)."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            name = f"{split}-{kind}-ubyte.gz"
            array = read_idx(source / name, expected_ndim=ndim)[:count].numpy()
            header = bytes([0, 0, 0x08, ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.GzipFile(target / name, "wb", compresslevel=9, mtime=0) as handle:
                handle.write(header + array.tobytes())
