"""Data sets of the user's own, named where a built-in's name goes (``--dataset``, ``RunConfig.dataset``,
``load_dataset``), each with a train and a test split:

- a folder holding ``train/<class>/*`` and ``test/<class>/*`` images (PNG, JPEG, ... as Pillow reads them),
  classes in the sorted order of their folder names, grey images as one channel;
- a NumPy ``.npz`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally ``classes``):
  images (N, H, W), (N, C, H, W) or (N, H, W, C);
- ``package.module:factory``: a function of no arguments returning ``(train, test)``, two map-style data sets
  (``len`` and ``[i]``, as a ``torch.utils.data.Dataset``) of ``(image, label)``; their ``classes`` attribute
  names the classes where they have one (torchvision's do).

Images are uint8 pixels (0-255), or floats in [0, 1] (what ``ToTensor`` gives), stored as uint8; labels are
integers from 0. A whole split is held in memory, as for the built-ins. Every check names the source and
what is wrong.
"""

from __future__ import annotations

import functools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..utils.checks import imported

__all__ = ["UserData", "is_user_source", "read_user_data"]

#: A factory's name: dotted module path, a colon, a function name.
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SPLITS = ("train", "test")
#: Above this many images in one split, a folder or factory is refused (it is held in memory as uint8).
MAX_IMAGES = 5_000_000


@dataclass(frozen=True)
class UserData:
    """Both splits of a user's data set: ``splits[name] = (images uint8 (N, C, H, W), labels int64 (N,))``."""

    splits: dict[str, tuple[Tensor, Tensor]]
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["train"][0].shape[1:])  # type: ignore[return-value]


def is_user_source(name: str) -> bool:
    """Whether ``name`` names a data set of the user's own (a path or ``package.module:factory``), not a
    built-in one."""
    return bool(_FACTORY.match(name)) or name.endswith(".npz") or "/" in name or Path(name).is_dir()


@functools.lru_cache(maxsize=4)
def read_user_data(name: str) -> UserData:
    """Read the data set ``name`` names (see the module docs), once per process. ``ValueError`` (or
    ``FileNotFoundError``) naming the source and what is wrong."""
    if _FACTORY.match(name) and not Path(name).exists():
        splits, classes = _from_factory(name)
    elif name.endswith(".npz"):
        splits, classes = _from_arrays(Path(name))
    elif Path(name).is_dir():
        splits, classes = _from_folder(Path(name))
    else:
        raise FileNotFoundError(f"{name}: no such folder or .npz file")
    shapes = {split: tuple(images.shape[1:]) for split, (images, _) in splits.items()}
    if shapes["train"] != shapes["test"]:
        raise ValueError(f"{name}: train images are {shapes['train']} but test images {shapes['test']}")
    for split, (_, labels) in splits.items():
        if len(labels) and int(labels.max()) >= len(classes):
            raise ValueError(f"{name}: {split} label {int(labels.max())} is not one of its {len(classes)} classes")
    return UserData(splits, classes)


def _from_folder(root: Path) -> tuple[dict[str, tuple[Tensor, Tensor]], tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    missing = [split for split in _SPLITS if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root}: no {' or '.join(missing)} folder (it holds train/<class>/* and test/<class>/*)"
        )
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"{root}: train/ holds no class folders")
    splits = {}
    for split in _SPLITS:
        others = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and p.name not in classes)
        if others:
            raise ValueError(f"{root}: {split}/{others[0]} is not a class of train/ ({', '.join(classes)})")
        files = [(path, label) for label, name in enumerate(classes)
                 for path in sorted((root / split / name).glob("*")) if path.is_file()]  # fmt: skip
        if not files:
            raise ValueError(f"{root}: {split}/ holds no images")
        if len(files) > MAX_IMAGES:
            raise ValueError(f"{root}: {split}/ holds {len(files):,} files, more than {MAX_IMAGES:,}")
        pixels = []
        for path, _ in files:
            try:
                with Image.open(path) as image:
                    pixels.append(
                        np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16", "I", "F") else "RGB"))
                    )
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{root}: {path.relative_to(root)} is not a readable image ({error})") from None
        sizes = {array.shape for array in pixels}
        if len(sizes) > 1:
            first, other = pixels[0].shape, next(a.shape for a in pixels if a.shape != pixels[0].shape)
            raise ValueError(f"{root}: images differ in size ({first} and {other}); resize them to one size")
        labels = np.array([label for _, label in files], dtype=np.int64)
        splits[split] = (_as_images(np.stack(pixels), f"{root} {split}"), torch.from_numpy(labels))
    return splits, classes


def _from_arrays(path: Path) -> tuple[dict[str, tuple[Tensor, Tensor]], tuple[str, ...]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .npz file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .npz file (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            held = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile):  # a damaged member, or pickled objects (never loaded)
        raise ValueError(f"{path}: a .npz file whose arrays cannot be read (damaged, or Python objects)") from None
    needed = [f"{axis}_{split}" for split in _SPLITS for axis in ("x", "y")]
    missing = [key for key in needed if key not in held]
    if missing:
        raise ValueError(f"{path}: no array {', '.join(missing)} (it holds {', '.join(sorted(held)) or 'none'})")
    splits = {split: (_as_images(held[f"x_{split}"], f"{path} x_{split}"),
                      _as_labels(held[f"y_{split}"], len(held[f"x_{split}"]), f"{path} y_{split}"))
              for split in _SPLITS}  # fmt: skip
    return splits, _classes(held.get("classes"), splits, f"{path}")


def _from_factory(name: str) -> tuple[dict[str, tuple[Tensor, Tensor]], tuple[str, ...]]:
    function_name = name.partition(":")[2]
    made = imported(name, name)()
    if not (isinstance(made, (tuple, list)) and len(made) == 2):
        raise ValueError(f"{name}: {function_name}() must return (train, test) data sets, got {type(made).__name__}")
    splits = {}
    for split, data in zip(_SPLITS, made, strict=True):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise ValueError(f"{name}: its {split} set is a {type(data).__name__}, not a map-style data set")
        if len(data) > MAX_IMAGES:
            raise ValueError(f"{name}: its {split} set holds {len(data):,} samples, more than {MAX_IMAGES:,}")
        pairs = [data[index] for index in range(len(data))]
        if not pairs or not all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in pairs):
            raise ValueError(f"{name}: each {split} sample must be (image, label)")
        images = np.stack([np.asarray(image) for image, _ in pairs])
        labels = np.array([int(label) for _, label in pairs])
        splits[split] = (
            _as_images(images, f"{name} {split}"),
            _as_labels(labels, len(images), f"{name} {split}"),
        )
    return splits, _classes(getattr(made[0], "classes", None), splits, f"{name}")


def _as_images(array: Any, where: str) -> Tensor:
    """uint8 (N, C, H, W) from (N, H, W), (N, C, H, W) or (N, H, W, C) pixels, uint8 or floats in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or not len(array):
        raise ValueError(f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{where}: float images must be finite and in [0, 1], got values from "
                             f"{np.nanmin(array):g} to {np.nanmax(array):g}")  # fmt: skip
        pixels = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype.kind in "iub" and array.min() >= 0 and array.max() <= 255:
        pixels = array.astype(np.uint8)
    else:
        raise ValueError(f"{where}: images must be uint8 pixels (0-255) or floats in [0, 1], got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _as_labels(array: Any, count: int, where: str) -> Tensor:
    labels = np.asarray(array)
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"{where}: labels must be one per image ({count}), got shape {labels.shape}")
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise ValueError(f"{where}: labels must be integers from 0, got {labels.dtype} from {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def _classes(named: Any, splits: dict[str, tuple[Tensor, Tensor]], where: str) -> tuple[str, ...]:
    count = 1 + max(int(labels.max()) for _, labels in splits.values())
    if named is None:
        return tuple(str(index) for index in range(count))
    names = tuple(str(name) for name in np.asarray(named).ravel())
    if len(names) < count:
        raise ValueError(f"{where}: {len(names)} class names for labels up to {count - 1}")
    return names
