"""The settings of a training run: :class:`RunConfig` (recipe + overrides), its checks, TOML, and the
rules of resuming.

A config holds only what the user chose; :meth:`RunConfig.resolved` fills the rest from the model's
recipe (see :func:`whetstone.models.zoo.recipe`) and :meth:`RunConfig.validate` checks every setting, naming
it, its value and what is allowed. The resolved config is saved in the run's checkpoint (and as
``config.toml`` beside it, :func:`write_config`), so a run resumes with exactly its own settings.
:func:`whetstone.runs.build.build_run` assembles the run a config describes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import DATASET_CHOICES, DATASETS, dataset_spec, is_dataset_name
from ..models.zoo import list_models, recipe
from ..nn.quantization_aware import TARGET_WEIGHTS
from ..training.checkpoint import CONFIG_HEADER, CONFIG_NAME, load_checkpoint
from ..training.trainer import PRECISIONS
from ..utils.checks import int_at_least, int_in, is_number, positive_number
from ..utils.files import atomic_write

__all__ = [
    "COSINE_SCHEDULES",
    "LR_SCALINGS",
    "OPTIMIZERS",
    "SHARPENERS",
    "ConfigError",
    "RunConfig",
    "describe_change",
    "flag_of",
    "parse_model_options",
    "parse_schedule",
    "resolve_device",
    "resume_config",
    "resumed_config",
    "saved_config",
    "setting_type",
    "write_config",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
#: Options an optimizer gets unless the recipe gives its own: ``sgd`` means SGD with momentum 0.9.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {"sgd": {"momentum": 0.9}}
SHARPENERS = ("simple", "scheduled", "adaptive", "none")
#: How --lr follows --batch-size (see RunConfig.scaled_lr).
LR_SCALINGS = ("none", "linear", "sqrt")
#: The learning-rate schedules along half a cosine: lowered every epoch, or every batch.
COSINE_SCHEDULES = ("cosine", "cosine-batch")


#: The largest --config file read: a run's config.toml is about 1 kB.
MAX_CONFIG_BYTES = 1_000_000


class ConfigError(ValueError):
    """A setting of a run is out of range or contradicts another; ``setting`` names it (a field of
    :class:`RunConfig`) and the message says what is allowed."""

    def __init__(self, setting: str, message: str) -> None:
        self.separator = "" if message.startswith(":") else " "
        super().__init__(f"{setting}{self.separator}{message}")
        self.setting, self.problem = setting, message

    def as_flag(self) -> str:
        """The message with the setting written as its command-line flag (``lr`` -> ``--lr``)."""
        return f"{flag_of(self.setting)}{self.separator}{self.problem}"


def flag_of(setting: str) -> str:
    """The command-line flag of a :class:`RunConfig` field."""
    return {"model_options": "--model-option", "progress": "--no-progress"}.get(
        setting, "--" + setting.replace("_", "-")
    )


def describe_change(setting: str, value: Any) -> str:
    """A setting changed on resuming, as the user reads it: ``--epochs 8``; a switch as on or off (``progress
    off``: its flag ``--no-progress`` followed by False would read as the opposite)."""
    if isinstance(value, bool):
        return f"{setting.replace('_', ' ')} {'on' if value else 'off'}"
    return f"{flag_of(setting)} {value}"


def _setting(default: Any = None, help: str = "", runtime: bool = False, choices: Sequence[str] | None = None,
             metavar: str | None = None) -> Any:  # fmt: skip
    """A :class:`RunConfig` field with its command-line help. ``runtime`` settings say how to run, not
    what to train: a resumed run may change them, and they are not part of its identity."""
    metadata = {"help": help, "runtime": runtime, "choices": choices, "metavar": metavar}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """The settings of a training run; ``None`` means "the model's recipe decides" (see
    :meth:`resolved`). Every field is also a ``whetstone train`` flag (``lr`` -> ``--lr``)."""

    # What is trained, on what.
    model: str | None = _setting(help="the model's registry name (see `whetstone models`), or package.module:factory")
    dataset: str | None = _setting(help=f"the dataset (default: the model's): {', '.join(DATASETS)}, or your own: a folder "
                                   "(train/<class>/*, test/<class>/*), a .npz file (x_train, y_train, x_test, "
                                   "y_test) or package.module:factory")  # fmt: skip
    model_options: dict[str, Any] = _setting({}, "extra option of the model's constructor as NAME=VALUE, e.g. base=128 "
                                             "for cifar-conv-bn, pool_first=true for any net that max-pools spikes (repeatable)",
                                             metavar="NAME=VALUE")  # fmt: skip
    activation: str = _setting("brelu", "spiking activation", choices=("brelu", "sigmoid"))
    key_width: int | None = _setting(help="output units of the N-hot code (default 10 per class)")
    seed: int = _setting(0, "seed of the weights, the key and the shuffle order")
    limit: int | None = _setting(help="train on N training samples only, drawn with --seed (quick trials)", metavar="N")
    holdout: float | None = _setting(
        help="evaluate on this fraction of the training set, drawn with --seed, instead of the test set",
        metavar="FRACTION",
    )
    # Optimisation.
    optimizer: str | None = _setting(help="the optimizer (default: the recipe's)", choices=tuple(OPTIMIZERS))
    lr: float | None = _setting(help="learning rate (default: the recipe's)")
    weight_decay: float | None = _setting(help="the optimizer's weight decay (decoupled for adamw)")
    batch_size: int | None = _setting(help="samples per optimizer step, over all processes (a last batch of one sample "
                                       "is left out of each epoch: batch norm cannot train on it)")  # fmt: skip
    lr_scaling: str = _setting("none", "scale --lr (read as the rate for the recipe's batch) with --batch-size: linear "
                               "(x batch / recipe batch, for SGD), sqrt (x its square root, for the Adam family) or none",
                               choices=LR_SCALINGS)  # fmt: skip
    epochs: int | None = _setting(help="maximum epochs (training stops once fully binary, unless --surrogate)")
    lr_schedule: str | None = _setting(help="cosine: the learning rate falls along half a cosine to lr/100 at --epochs, "
                                       "lowered every epoch; cosine-batch: the same curve, lowered every batch",
                                       choices=("constant", *COSINE_SCHEDULES))  # fmt: skip
    logit_scale: float | None = _setting(help="train on the cross-entropy of this times the decoder's logits")
    augment: bool | None = _setting(help="random crop of zero-padded training batches, and a left-right mirror where the "
                                    "dataset allows it (default: the recipe's)")  # fmt: skip
    # Sharpening.
    sharpener: str | None = _setting(help="how sharpness rises (default: the recipe's)", choices=SHARPENERS)
    start_epoch: int | None = _setting(
        help="simple sharpener: epochs trained before sharpening starts (5: from the "
        "6th epoch, as the epoch lines count)"
    )
    steps: int | None = _setting(help="simple sharpener: steps per layer")
    per: str | None = _setting(help="simple sharpener: step per epoch or batch", choices=("epoch", "batch"))
    uniform: bool = _setting(False, "sharpen all layers together, not bottom-up")
    schedule: str | None = _setting(help="scheduled sharpener: start:stop epochs per layer, e.g. 0:2,2:4")
    min_init_epochs: int = _setting(10, "adaptive sharpener: epochs before sharpening may start")
    surrogate: float | None = _setting(help="binary layers keep learning: forward the exact step, backpropagate the slope of "
                                       "the activation at sharpness S in [0, 1); training then runs all --epochs",
                                       metavar="S")  # fmt: skip
    # Distillation.
    teacher: str | None = _setting(
        help="distil from this trained run (its folder or checkpoint; same dataset)", metavar="RUN"
    )
    distill_weight: float | None = _setting(help="with --teacher: loss = (1 - W) cross-entropy + W distillation (default 1)",
                                            metavar="W")  # fmt: skip
    distill_temperature: float | None = _setting(help="with --teacher: softmax temperature of the distillation (default 1)",
                                                 metavar="T")  # fmt: skip
    # The chip's precision.
    bits: int | None = _setting(help="train for integer weights of N bits (2-16), per channel as export writes them, from "
                                "--start-epoch on (quantization-aware; export with the same --bits)", metavar="N")  # fmt: skip
    target: str | None = _setting(help="train for this chip target's weights: its bits and scheme (akida: 4 bits, an 8-bit "
                                  "input layer)", choices=tuple(TARGET_WEIGHTS))  # fmt: skip
    deterministic: bool = _setting(False, "deterministic algorithms only (a resumed run is then bit-identical)")
    precision: str = _setting("fp32", "training arithmetic: bf16 or fp16 autocast for the forward pass (evaluation, the "
                              "binary check and the reported accuracy stay float32: the deployed network's)",
                              choices=PRECISIONS)  # fmt: skip
    # Where and how it runs (may change when a run is resumed).
    out: str | None = _setting(
        help="the run folder: checkpoints, config.toml, history, plot", runtime=True, metavar="DIR"
    )
    checkpoint_every: int | None = _setting(help="also checkpoint every N batches", runtime=True, metavar="N")
    device: str = _setting("auto", "auto (a GPU if there is one), cpu, cuda or cuda:N", runtime=True)
    threads: int | None = _setting(help="torch CPU threads", runtime=True, metavar="N")
    channels_last: bool = _setting(False, "conv nets: activations and weights channels-last (NHWC), faster on CPUs "
                                   "with oneDNN and on GPUs (1.1-1.2x a step on this project's CPU)", runtime=True)  # fmt: skip
    compile: bool = _setting(False, "compile the training step with torch.compile (inductor): the first step of each "
                             "pattern of binary layers compiles (~20 s on a CPU); evaluation stays eager float32",
                             runtime=True)  # fmt: skip
    sync_every: int = _setting(1, "read training losses back from the device every N batches (1: every batch); a "
                               "larger N lets a GPU run ahead of the CPU; progress shows each window's mean loss",
                               runtime=True, metavar="N")  # fmt: skip
    nproc: int = _setting(1, "processes for distributed data parallel training (gloo on CPU, nccl on GPU)",
                          runtime=True, metavar="N")  # fmt: skip
    data_dir: str | None = _setting(help="data root (default: $WHETSTONE_DATA, else ~/.cache/whetstone/data)",
                                    runtime=True, metavar="DIR")  # fmt: skip
    download: bool = _setting(False, "download missing MNIST/Fashion-MNIST files", runtime=True)
    progress: bool = _setting(True, "show progress (a bar on a terminal, periodic lines otherwise)", runtime=True)
    tensorboard: bool = _setting(
        False, "also log scalars for TensorBoard in the run's tensorboard/ folder", runtime=True
    )

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> RunConfig:
        """A config from plain values (a TOML file, a checkpoint); unknown names are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(unknown[0], f"is not a setting ({source}); settings are: {', '.join(sorted(names))}")
        return cls(**dict(values))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> RunConfig:
        """Read a config written by :meth:`to_toml` (or by hand)."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        path = Path(path)
        try:
            with path.open("rb") as stream:  # bounded: a path that never ends (/dev/zero) is not read forever
                raw = stream.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                raise ValueError(
                    f"--config {path}: larger than {MAX_CONFIG_BYTES:,} bytes; a run's settings fit in a few kB"
                )
            values = tomllib.loads(raw.decode())
        except FileNotFoundError:
            raise FileNotFoundError(f"--config {path}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"--config {path}: not a readable TOML file: {error}") from None
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain values of every field (what checkpoints store)."""
        return dataclasses.asdict(self)

    def to_toml(self, exclude: Sequence[str] = ()) -> str:
        """The config as TOML (``None`` settings left out: the recipe decides them), without ``exclude``."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "model_options" and not value) or f.name in exclude:
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """The settings that define the run (not where or how it runs), as ``name=value`` on one line."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if _shown(getattr(self, f.name)) and not f.metadata["runtime"])  # fmt: skip

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> RunConfig:
        """A copy with every recipe setting left as None filled from the model's recipe."""
        if not self.model:
            raise ConfigError("model", "is required (or --resume DIR); choose one of " + ", ".join(list_models()))
        if ":" not in self.model and self.model not in list_models():
            raise ConfigError("model", f"{self.model!r} is not a model; choose one of {', '.join(list_models())}, "
                                       "or package.module:factory")  # fmt: skip
        try:
            defaults = recipe(self.model)  # package.module:factory is imported here
        except ValueError as error:
            raise ConfigError("model", f": {error}") from None
        filled = {name: getattr(defaults, name) for name in _RECIPE_SETTINGS if getattr(self, name) is None}
        if self.teacher and isinstance(self.teacher, str):  # saved absolute: the run resumes from any folder
            filled["teacher"] = _absolute(self.teacher)
        user_data = isinstance(self.dataset, str) and self.dataset not in DATASETS and Path(self.dataset).exists()
        if user_data:  # saved absolute: eval and simulate find it from anywhere (a built-in's name stays a name)
            filled["dataset"] = _absolute(self.dataset)
        if self.data_dir and isinstance(self.data_dir, str):  # absolute: eval and simulate find it from anywhere
            filled["data_dir"] = _absolute(self.data_dir)
        return self.replace(**filled)

    def scaled_lr(self) -> float:
        """The learning rate the optimizer gets: ``lr`` times ``batch_size / b`` (``lr_scaling="linear"``) or
        its square root (``"sqrt"``), ``b`` the batch size of the model's recipe; ``lr`` itself under "none"."""
        if self.lr is None:
            raise ConfigError("lr", "is unset: call scaled_lr() on a resolved() config")
        if self.lr_scaling == "none" or self.batch_size is None:
            return self.lr
        ratio = self.batch_size / recipe(self.model).batch_size
        return self.lr * (ratio if self.lr_scaling == "linear" else math.sqrt(ratio))

    def optimizer_options(self) -> dict[str, Any]:
        """Constructor options of the optimizer: the recipe's when it is the recipe's optimizer, and the
        weight decay."""
        defaults = recipe(self.model) if self.model in list_models() or ":" in (self.model or "") else None
        options = dict(OPTIMIZER_DEFAULTS.get(self.optimizer or "", {}))
        if defaults is not None and self.optimizer == defaults.optimizer:
            options.update(defaults.optimizer_options)
        if self.weight_decay is not None:
            options["weight_decay"] = self.weight_decay
        return options

    # -- checking ------------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check every setting of a :meth:`resolved` config; returns it. ``ConfigError`` names the first
        bad one, its value and what is allowed."""
        for f in dataclasses.fields(self):
            choices, kind, value = f.metadata.get("choices"), setting_type(f), getattr(self, f.name)
            if value is None:
                continue
            wrong = isinstance(value, bool) and kind is not bool  # bool is an int to Python, not to a user
            if wrong or not isinstance(value, (int, float) if kind is float else kind):
                raise ConfigError(f.name, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
            if choices and value not in choices:
                raise ConfigError(f.name, f"must be one of {', '.join(choices)}, got {value!r}")
        _positive(self, "lr")
        _positive(self, "logit_scale")
        _at_least(self, "batch_size", 1)
        _at_least(self, "epochs", 1)
        _at_least(self, "start_epoch", 0)
        _at_least(self, "steps", 1)
        _at_least(self, "min_init_epochs", 0)
        _at_least(self, "seed", 0, 2**63 - 1)
        _at_least(self, "limit", 1)
        _at_least(self, "checkpoint_every", 1)
        _at_least(self, "threads", 1, 1024)
        _at_least(self, "sync_every", 1)
        _at_least(self, "nproc", 1)
        _at_least(self, "key_width", 2, 2**20)
        _at_least(self, "bits", 2, 16)
        if self.bits is not None and self.target is not None:
            raise ConfigError("bits", f"and --target {self.target} both set the weights' precision: give one")
        taken = sorted(set(self.model_options) & set(_SET_BY_THE_RUN))
        if taken:
            raise ConfigError(
                "model_options", f"{taken[0]} is set by {_SET_BY_THE_RUN[taken[0]]}, not by a model option"
            )
        if self.weight_decay is not None and not (is_number(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            raise ConfigError("weight_decay", f"must be a finite number >= 0, got {self.weight_decay!r}")
        if self.holdout is not None and not (is_number(self.holdout) and 0 < self.holdout < 1):
            raise ConfigError("holdout", f"must be a fraction in (0, 1), got {self.holdout!r}")
        if self.surrogate is not None and not (is_number(self.surrogate) and 0 <= self.surrogate < 1):
            raise ConfigError("surrogate", f"must be a sharpness in [0, 1), got {self.surrogate!r}")
        if self.dataset and not is_dataset_name(self.dataset):
            raise ConfigError("dataset", f"{self.dataset!r} is not a dataset; {DATASET_CHOICES}")
        try:
            classes = len(dataset_spec(self.dataset).classes) if self.dataset else 10
        except (ValueError, OSError) as error:  # the user's own data, read and found wrong: "path: what is wrong"
            raise ConfigError("dataset", " ".join(str(error).split())) from None
        if self.key_width is not None and self.key_width < classes:
            raise ConfigError(
                "key_width", f"must be at least the {classes} classes of {self.dataset}, got {self.key_width}"
            )
        if self.sharpener == "scheduled":
            if not self.schedule:
                raise ConfigError("schedule", "is needed by --sharpener scheduled, e.g. '0:2,2:4,4:6'")
            parse_schedule(self.schedule)
        if self.teacher is None and (self.distill_weight is not None or self.distill_temperature is not None):
            raise ConfigError("distill_weight", "and --distill-temperature need --teacher RUN")
        if self.distill_weight is not None and not (is_number(self.distill_weight) and 0 <= self.distill_weight <= 1):
            raise ConfigError("distill_weight", f"must be in [0, 1], got {self.distill_weight!r}")
        if self.distill_temperature is not None:
            _positive(self, "distill_temperature")
        if self.batch_size is not None and self.batch_size % self.nproc:
            raise ConfigError(
                "batch_size", f"must be divisible by the {self.nproc} processes (--nproc), got {self.batch_size}"
            )
        if not self.out:
            raise ConfigError("out", "is required: the folder the run writes into (or --resume DIR)")
        resolve_device(self.device)
        return self


_KIND_NAMES = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table of NAME = VALUE",
}
_RECIPE_SETTINGS = ("dataset", "optimizer", "lr", "batch_size", "epochs", "sharpener", "start_epoch", "steps", "per",
                    "logit_scale", "augment", "lr_schedule", "surrogate")  # fmt: skip


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _shown(value: Any) -> bool:
    """Whether a setting is worth a word in a summary: not unset, empty or off (0 is a value: start_epoch=0)."""
    return value is not None and value is not False and value != {}


def _checked(config: RunConfig, name: str, check: Callable[..., Any], *limits: int, why: str = "") -> None:
    """Run one of :mod:`~whetstone.utils.checks` on a set setting, as a :class:`ConfigError` naming its flag."""
    value = getattr(config, name)
    if value is None:
        return
    try:
        check(value, name, *limits)
    except ValueError as error:
        raise ConfigError(name, str(error).removeprefix(f"{name} ") + why) from None


def _positive(config: RunConfig, name: str) -> None:
    _checked(config, name, positive_number)


def _at_least(config: RunConfig, name: str, minimum: int, maximum: int | None = None) -> None:
    _checked(config, name, int_at_least, minimum)
    if maximum is not None:
        _checked(config, name, int_in, minimum, maximum, why=_LIMITS[name])


#: Why a setting has an upper limit (torch's own limits, or what a process can hold).
_LIMITS = {
    "seed": " (a 64-bit generator seed)",
    "threads": " (torch crashes asked for more threads than it can start)",
    "key_width": " (output units: a larger code does not fit in memory)",
    "bits": " (the integer weights quantize() writes)",
}
#: create_model's own arguments, which a run sets from other settings, never from --model-option.
_SET_BY_THE_RUN = {"num_classes": "the dataset", "activation": "--activation", "key_width": "--key-width",
                   "key_seed": "--seed", "input_shape": "the dataset"}  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ValueError(f"cannot write {value!r} as TOML")


def setting_type(f: dataclasses.Field) -> type:
    """The Python type of a :class:`RunConfig` field (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(RunConfig)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


# -- resuming ------------------------------------------------------------------------------------
def saved_config(checkpoint: Mapping[str, Any], source: str) -> RunConfig:
    """The config a checkpoint was trained with (also from checkpoints of earlier versions, which saved
    their command-line arguments instead)."""
    run = checkpoint.get("run")
    if not isinstance(run, dict):
        raise ValueError(f"{source} holds no run settings to resume with")
    if isinstance(run.get("config"), dict):
        return RunConfig.from_dict(run["config"], source=source)
    args = run.get("args")
    if not isinstance(args, dict):
        raise ValueError(f"{source} holds no run settings to resume with")
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {name: value for name, value in args.items() if name in names and value is not None}
    values["model_options"] = parse_model_options(args.get("model_option") or [])
    values["progress"] = not args.get("no_progress", False)
    return RunConfig(**values)


def resumed_config(folder: str | os.PathLike, given: Mapping[str, Any]) -> tuple[RunConfig, list[str]]:
    """The config to continue the run in ``folder`` with, given these settings now (see :func:`resume_config`)."""
    checkpoint = load_checkpoint(folder)
    config, changed = resume_config(saved_config(checkpoint, str(Path(folder))), given, str(folder))
    try:
        config.resolved().validate()
    except ConfigError as error:
        if error.setting in given:  # a flag given now: said as that flag
            raise
        raise ValueError(  # the checkpoint's own setting, not a flag the user gave
            f"{folder}: the run's saved setting {error.setting} {error.problem.lstrip(': ')}; this run cannot "
            "continue (start a new one with --out)"
        ) from None
    return config, changed


def resume_config(saved: RunConfig, given: Mapping[str, Any], folder: str) -> tuple[RunConfig, list[str]]:
    """The config of a resumed run: the saved one, with the runtime settings given now (device, threads,
    data folder, ...) and ``epochs`` (to extend or shorten it). Any other given setting must equal the
    saved one: a contradiction is refused (``ConfigError``), never silently ignored. Returns the config
    and the names of the given settings that changed it."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    changes, contradictions = {}, []
    for name, value in given.items():
        before = getattr(saved, name)
        if name == "teacher" and value:
            value = _absolute(value)
        if name == "out":
            if Path(value).resolve() != Path(folder).resolve():
                contradictions.append(f"--out {value} (the run is in {folder})")
        elif name == "epochs" and saved.lr_schedule in COSINE_SCHEDULES and value != before:
            contradictions.append(f"--epochs {value} (its cosine schedule ends at epoch {before})")
        elif fields[name].metadata["runtime"] or name == "epochs":
            if value != before:
                changes[name] = value
        elif value != before:
            contradictions.append(f"{flag_of(name)} {value} (the run has {before})")
    if contradictions:
        raise ConfigError(
            "resume",
            f"{folder}: "
            + "; ".join(contradictions)
            + f" {'contradicts' if len(contradictions) == 1 else 'contradict'} "
            "the saved run: drop it to continue the run, or start a new run (another --out, or --overwrite)",
        )
    return saved.replace(**changes, out=str(folder)), sorted(changes)


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """``"0:2,2:4,4:6"`` -> ``[(0, 2), (2, 4), (4, 6)]`` (one start:stop window per spiking layer, in
    epochs; fractions allowed: ``"0:1.5,1.5:4"``)."""
    try:
        windows = [tuple(_epoch(part) for part in window.split(":")) for window in text.split(",")]
    except ValueError:
        windows = []
    if not windows or any(len(window) != 2 for window in windows):
        raise ConfigError("schedule", f"must look like '0:2,2:4' (start:stop epochs per layer), got {text!r}")
    for index, (start, stop) in enumerate(windows):
        if not 0 <= start < stop:
            raise ConfigError(
                "schedule", f"window {index} ({start}:{stop}) must start at 0 or later and stop after it starts"
            )
    return windows  # type: ignore[return-value]


def _epoch(text: str) -> float:
    """An epoch of a schedule: an int where written as one (saved configs read back the same)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_model_options(items: Sequence[str]) -> dict[str, Any]:
    """``["base=128", "kernel=7"]`` -> ``{"base": 128, "kernel": 7}`` (ints, floats, true/false, else text)."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise ConfigError("model_options", f"must look like NAME=VALUE (e.g. base=128), got {item!r}")
        value: Any = text
        for convert in (int, float):
            try:
                value = convert(text)
                break
            except ValueError:
                pass
        else:
            if text.lower() in ("true", "false"):
                value = text.lower() == "true"
        options[name] = value
    return options


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the current GPU if CUDA is available, else the CPU; otherwise ``torch.device(name)``,
    checked to exist."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("device", f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def write_config(config: RunConfig) -> Path:
    """Save ``config`` as ``config.toml`` in its run folder, without the folder itself: ``whetstone train
    --config RUN/config.toml --out NEW`` trains the same run again."""
    return atomic_write(
        Path(config.out) / CONFIG_NAME,
        CONFIG_HEADER + config.to_toml(exclude=("out",)),
    )
