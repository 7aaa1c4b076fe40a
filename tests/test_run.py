"""The run as an object: RunConfig (recipe + overrides, TOML, resume rules), build_run, the run folder's
files (config.toml, best.pt, history.csv), callbacks, locks and atomic writes, and the module map."""

import ast
import copy
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import whetstone as ws
from whetstone.cli.main import main
from whetstone.runs.build import build_run
from whetstone.runs.config import ConfigError, RunConfig, resume_config, saved_config
from whetstone.training.callbacks import Callback, ProgressBar, format_seconds
from whetstone.training.checkpoint import RunFolder, load_checkpoint
from whetstone.utils.files import FolderInUseError, FolderLock, atomic_write

from conftest import torch_threads

TINY = {"model": "mnist-dense", "dataset": "mnist-mini", "limit": 300, "epochs": 3, "start_epoch": 0, "steps": 1,
        "progress": False, "threads": 1}  # fmt: skip


def test_resolved_fills_only_what_was_not_given_from_the_recipe():
    config = RunConfig(model="mnist-dense", lr=0.5, out="x").resolved()
    assert (config.dataset, config.optimizer, config.lr, config.epochs, config.sharpener) == (
        "mnist",
        "adadelta",
        0.5,
        21,
        "simple",
    )
    assert config.optimizer_options() == {"rho": 0.95, "eps": 1e-8}  # the recipe's Adadelta settings
    other = RunConfig(model="mnist-dense", optimizer="sgd", weight_decay=0.01).resolved()
    assert other.optimizer_options() == {"momentum": 0.9, "weight_decay": 0.01}  # not Adadelta's
    assert RunConfig(model="mnist-dense", teacher="rel/run").resolved().teacher == str(Path("rel/run").resolve())


def test_validate_names_the_setting_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as raised:
        RunConfig(model="mnist-dense", epochs=0, out="x").resolved().validate()
    assert str(raised.value) == "epochs must be an integer >= 1, got 0" and raised.value.as_flag().startswith(
        "--epochs "
    )
    assert raised.value.setting == "epochs"


def test_toml_round_trip_and_config_files(tmp_path, capsys):
    config = RunConfig(
        model="cifar-conv-bn", model_options={"base": 8, "pool_first": True}, lr=3e-3, surrogate=0.0, out="o"
    )
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert RunConfig.from_toml(path) == config
    # --config, with a flag over it; --print-config prints the resolved settings and writes nothing.
    assert main(["train", "--config", str(path), "--lr", "0.01", "--out", str(tmp_path / "run"), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert (
        'model = "cifar-conv-bn"' in printed
        and "lr = 0.01" in printed
        and "model_options = { base = 8, pool_first = true }" in printed
    )
    assert not (tmp_path / "run").exists()


def test_a_runs_config_toml_trains_the_same_run_again(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    argv = ["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "2", "--lr", "0.7",
            "--no-progress", "--threads", "1", "--deterministic"]  # fmt: skip
    assert main([*argv, "--out", str(first)]) in (0, 1)
    text = (first / "config.toml").read_text()
    assert "out =" not in text and "lr = 0.7" in text
    assert main(["train", "--config", str(first / "config.toml"), "--out", str(second)]) in (0, 1)
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["run"]["config"] == {**b["run"]["config"], "out": str(first)}


def test_resume_takes_runtime_settings_refuses_contradictions_and_reads_old_checkpoints():
    saved = RunConfig(model="mnist-dense", lr=0.5, epochs=4, out="runs/a").resolved()
    config, changed = resume_config(saved, {"epochs": 6, "threads": 2, "device": "cpu", "lr": 0.5}, "runs/a")
    assert (config.epochs, config.threads, config.device, changed) == (6, 2, "cpu", ["device", "epochs", "threads"])
    with pytest.raises(
        ConfigError, match=r"--lr 0.1 \(the run has 0.5\); --model mnist-conv \(the run has mnist-dense\) contradict"
    ):
        resume_config(saved, {"lr": 0.1, "model": "mnist-conv"}, "runs/a")
    cosine = saved.replace(lr_schedule="cosine")
    with pytest.raises(ConfigError, match="cosine schedule ends at epoch 4"):
        resume_config(cosine, {"epochs": 5}, "runs/a")
    old = {
        "run": {
            "args": {
                "model": "mnist-dense",
                "lr": 0.5,
                "model_option": ["batch_norm=true"],
                "no_progress": True,
                "epochs": 4,
            }
        }
    }
    restored = saved_config(old, "old.pt")
    assert (restored.model, restored.lr, restored.model_options, restored.progress) == (
        "mnist-dense",
        0.5,
        {"batch_norm": True},
        False,
    )


def test_build_run_assembles_a_run_that_keeps_its_best_binary_epoch(tmp_path):
    config = RunConfig(**{**TINY, "epochs": 6, "surrogate": 0.0}, out=str(tmp_path))  # binary after 3 epochs, trains on
    run = build_run(config)
    assert isinstance(run.trainer, ws.Trainer) and run.config.optimizer == "adadelta" and len(run.train_loader) == 3
    with torch_threads(1):
        result = run.fit()
    history = result.history
    binary = [r for r in history if r.sharpness == [1.0, 1.0, 1.0]]
    assert len(history) == 6 and len(binary) == 4
    best = load_checkpoint(result.best)
    assert best["record"]["eval_accuracy"] == max(r.eval_accuracy for r in binary)
    assert best["record"]["epoch"] == max(binary, key=lambda r: r.eval_accuracy).epoch  # the first of any equals
    model = ws.model_from_checkpoint(best, "best.pt")
    assert ws.model_sharpness(model) == [1.0, 1.0, 1.0]
    csv = (tmp_path / "history.csv").read_text().splitlines()
    # Epochs counted from 1 and layers named by module path, as the console, the plot and every report do.
    names = history[-1].layers
    assert names == [path for path, m in run.trainer.module.named_modules() if isinstance(m, ws.SpikingActivation)]
    assert csv[0].split(",")[-3:] == [f"sharpness {name}" for name in names] and len(csv) == 7
    assert csv[0].split(",")[0] == "epoch" and [line.split(",")[0] for line in csv[1:]] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    assert load_checkpoint(tmp_path)["run"]["config"]["surrogate"] == 0.0


def test_lr_scaling_follows_the_batch_size_from_the_recipes(tmp_path):
    base = RunConfig(
        model="mnist-conv-bn", batch_size=512, out=str(tmp_path)
    ).resolved()  # recipe: adam 3e-3, batch 128
    assert base.scaled_lr() == 3e-3
    assert base.replace(lr_scaling="linear").scaled_lr() == pytest.approx(12e-3)
    assert base.replace(lr_scaling="sqrt").scaled_lr() == pytest.approx(6e-3)
    assert base.replace(lr_scaling="sqrt", batch_size=128).scaled_lr() == pytest.approx(3e-3)
    assert base.replace(lr=1e-2, lr_scaling="sqrt", batch_size=32).scaled_lr() == pytest.approx(5e-3)  # --lr scaled too
    run = build_run(RunConfig(**{**TINY, "batch_size": 32, "lr_scaling": "linear"}, out=str(tmp_path / "run")))
    assert run.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(run.config.lr * 32 / 128)
    with pytest.raises(ws.ConfigError, match="lr_scaling must be one of none, linear, sqrt, got 'cube'"):
        base.replace(lr_scaling="cube").validate()


def test_compiled_training_step_trains_the_same_network(tmp_path):
    """--compile: inductor compiles one graph per pattern of binary layers (4 for 3 layers, whatever the
    per-batch sharpness values), and trains what the eager step trains, up to float rounding."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    settings = {**TINY, "epochs": 4, "steps": 3, "per": "batch", "surrogate": 0.0}  # 3 batches an epoch
    with torch_threads(1):
        compiled = build_run(RunConfig(**settings, compile=True, out=str(tmp_path / "compiled"))).fit()
        eager = build_run(RunConfig(**settings, out=str(tmp_path / "eager"))).fit()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 5  # and once for the shorter last batch
    assert compiled.fully_binary and eager.fully_binary
    for ours, theirs in zip(compiled.history, eager.history, strict=True):
        assert ours.sharpness == theirs.sharpness
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=0.02)
        assert abs(ours.eval_accuracy - theirs.eval_accuracy) <= 0.03


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_but_reports_the_deployed_float32_network(tmp_path, precision):
    """Autocast changes the training arithmetic only: the accuracy a run reports, the binary check and best.pt
    are the float32 network's, the one that is deployed (test_deploy checks the simulator against it)."""
    config = RunConfig(**{**TINY, "epochs": 4}, precision=precision, out=str(tmp_path))
    with torch_threads(1):
        result = build_run(config).fit()
        assert result.fully_binary
        model = ws.model_from_checkpoint(load_checkpoint(tmp_path), str(tmp_path)).eval()
        test = ws.load_dataset("mnist-mini", "test")
        reported = result.history[-1].eval_accuracy
        assert ws.evaluate(model, ws.TensorLoader.from_dataset(test, 1000))[1] == reported  # float32, no autocast
    assert load_checkpoint(tmp_path)["run"]["config"]["precision"] == precision


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("begin")

    def on_epoch_begin(self, trainer, epoch, start_batch):
        self.calls.append(f"epoch {epoch}")

    def on_batch_end(self, trainer, batch, loss):
        self.calls.append("batch")

    def on_epoch_end(self, trainer, record):
        self.calls.append(f"end {record.epoch}")

    def on_train_end(self, trainer, result):
        self.calls.append(f"done {result.fully_binary}")


def test_callbacks_see_every_hook_in_order():
    recorder = Recorder()
    model = ws.create_model("mnist-dense")
    train = ws.load_dataset("mnist-mini", "train")
    loader = ws.TensorLoader(train.images[:200], train.labels[:200], 100)
    ws.Trainer(model, torch.optim.Adam(model.parameters()), callbacks=[recorder], progress=False).fit(loader, 2)
    assert recorder.calls == [
        "begin",
        "epoch 0",
        "batch",
        "batch",
        "end 0",
        "epoch 1",
        "batch",
        "batch",
        "end 1",
        "done False",
    ]


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    model = ws.create_model("mnist-dense")
    train = ws.load_dataset("mnist-mini", "train")
    loader = ws.TensorLoader(train.images[:300], train.labels[:300], 100)
    for terminal in (False, True):
        stream = io.StringIO()
        bar = ProgressBar(interval=0.0, stream=stream, terminal=terminal)
        ws.Trainer(model, torch.optim.Adam(model.parameters()), callbacks=[bar], progress=False).fit(loader, 2)
        text = stream.getvalue()
        if terminal:
            assert "\r" in text and "epoch 2/2" in text
        else:
            lines = text.splitlines()
            assert "\r" not in text and len(lines) == 6 and lines[-1].startswith("  epoch 2/2  batch 3/3  loss ")
            assert "run left <= " in lines[0]
    assert (format_seconds(7.25), format_seconds(75), format_seconds(4000)) == ("7.2s", "1m15s", "1h06m")


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="optional dependency 'tensorboard' is not installed (pip install -e '.[tensorboard]')"
    )
    from whetstone.training.callbacks import TensorBoard

    config = RunConfig(**{**TINY, "epochs": 1, "sharpener": "none", "tensorboard": True}, out=str(tmp_path))
    build_run(config).fit()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100
    assert TensorBoard  # importable where the package is


def test_folder_lock_keeps_a_second_owner_out_and_takes_over_a_stale_one(tmp_path, caplog):
    lock = FolderLock(tmp_path).acquire()
    with pytest.raises(FolderInUseError, match=rf"{tmp_path} is in use by process {os.getpid()} on "):
        FolderLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".whetstone.lock").exists()
    (tmp_path / ".whetstone.lock").write_text("process 4242 on gone (since then)")  # its holder died: no flock
    import logging

    with caplog.at_level(logging.INFO, logger="whetstone.utils.files"), FolderLock(tmp_path):
        assert "took over the stale lock of process 4242" in caplog.text


def test_atomic_write_follows_a_link_and_writes_a_device_as_a_stream(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert link.is_symlink() and link.resolve() == target and target.read_text() == "new"  # the link stays
    read, write = os.pipe()
    atomic_write(f"/dev/fd/{write}", "through a pipe")  # as --json /dev/stdout would
    os.close(write)
    with os.fdopen(read) as stream:
        assert stream.read() == "through a pipe"


def test_a_consumers_scratch_folder_left_by_a_killed_process_is_removed_by_the_next(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from whetstone.utils.files import scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that is gone, as after a SIGKILL
    orphan, live = tmp_path / f"whetstone-akida-{dead.pid}-x1", tmp_path / f"whetstone-akida-{os.getpid()}-x2"
    for folder in (orphan, live):
        folder.mkdir()
        (folder / "model.fbz").write_text("half written")
    with scratch_folder("akida") as folder:
        assert folder.is_dir() and folder.name.startswith(f"whetstone-akida-{os.getpid()}-")
    assert not orphan.exists() and live.exists() and not folder.exists()


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write(path, "old")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_write_that_must_not_replace_loses_the_race_to_a_file_written_meanwhile(tmp_path, monkeypatch):
    """Two exports to one path without --overwrite: each checked that the path was free, then both wrote. The
    second writer's final step finds the first's file there and fails, leaving it whole and no temporary file."""
    path = tmp_path / "model.nir"
    real_fsync = os.fsync

    def another_process_writes_first(fd):
        real_fsync(fd)
        if not path.exists():
            path.write_text("the other process's file")

    monkeypatch.setattr(os, "fsync", another_process_writes_first)
    with pytest.raises(OSError, match=r"model.nir: a file appeared there meanwhile \(another process\?\)"):
        atomic_write(path, "mine", replace=False)
    assert path.read_text() == "the other process's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nir"]
    atomic_write(path, "mine")  # replace=True (the default, and --overwrite) replaces it
    assert path.read_text() == "mine"
    atomic_write(tmp_path / "new.nir", "fresh", replace=False)  # where nothing is in the way, it just writes
    assert (tmp_path / "new.nir").read_text() == "fresh"


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    """SIGKILL mid-write leaves a temporary file that no handler can remove; the next write of the same file
    removes it (its writer's process id is in its name), and leaves a live writer's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".checkpoint.pt.{dead.pid}.x1y2.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.a3b4.tmp"  # this process is alive: could be writing it
    orphan.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    atomic_write(tmp_path / "checkpoint.pt", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_sigterm_whose_exception_a_destructor_swallowed_still_stops_the_block(monkeypatch):
    """Python ignores an exception raised in __del__ (or a weakref callback, which garbage collection runs
    anywhere): a SIGTERM landing there must still stop the run, at the next safe point."""
    import signal
    import sys

    from whetstone.utils.files import Terminated, raise_if_terminated, sigterm_raises

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the Python-level handler runs here, and its exception is ignored
                pass

    reached = []
    with pytest.raises(Terminated), sigterm_raises():
        SignalledWhileCollected()  # collected at once
        reached.append("after the swallowed signal")
        raise_if_terminated()
        reached.append("never")
    assert reached == ["after the swallowed signal"]
    assert ignored == [Terminated]  # Python did swallow the handler's exception
    raise_if_terminated()  # outside the block nothing is pending


def test_run_folder_claim_refuses_a_run_unless_resumed_or_overwritten(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run"):
        folder.claim()
    folder.claim(resume=True).release()
    folder.claim(overwrite=True).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only the run's own files were removed


SOURCE = Path(ws.__file__).parent


def _imports_of_every_module() -> dict[str, set[str]]:
    """For each module of the package, the package's modules it imports: every import statement, at the top,
    inside functions and under TYPE_CHECKING alike (a lazy import that dodges a cycle is still a cycle),
    and each package whose ``__init__`` such an import runs (but not the importer's own packages)."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                prefixes = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
                edges[name] |= {prefix for prefix in prefixes if prefix in modules and prefix not in own}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(edges[module]):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def _folder(module: str) -> str:
    """The folder (layer) of a dotted module name; "" for the package root's own modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (SOURCE / parts[-1]).is_dir() else ""


def test_module_map_layers_no_cycles_and_a_thin_cli():
    """What docs/architecture.md promises: folders as layers, each importing only from itself and the folders
    listed before it; no import cycle of any kind (function-level imports included); every module's job
    written down in import order; nothing but __main__ imports the CLI, and cli/main.py stays thin."""
    edges = _imports_of_every_module()
    assert "whetstone.convert.graph_builder" in edges["whetstone.convert.spikify"]  # the finder sees what it must
    assert "whetstone.export" in edges["whetstone.targets.base"]  # (a package's __init__ runs on import)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    assert sorted(name for name, imported in edges.items() if "whetstone.cli.main" in imported) == [
        "whetstone.__main__"
    ]
    assert len((SOURCE / "cli" / "main.py").read_text().splitlines()) < 350
    documented = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()

    # The layers: every folder listed once, bottom up; an import never climbs to a folder listed later.
    layers = re.findall(r"^\| `(\w+)/` \|", documented, flags=re.MULTILINE)
    folders = sorted({path.parent.name for path in SOURCE.glob("*/*.py")})
    assert sorted(layers) == folders and len(layers) == len(set(layers))
    rank = {folder: i for i, folder in enumerate(layers)} | {"": len(layers)}  # the root sits on top
    upward = sorted(
        f"{a} -> {b}" for a, imported in edges.items() for b in imported if rank[_folder(b)] > rank[_folder(a)]
    )
    assert not upward, f"imports from a lower folder to a higher one: {upward}"

    # The modules: each listed with its job, bottom up (each imports only modules listed before it).
    listed = re.findall(r"^\| `([\w/]+\.py)` \|", documented, flags=re.MULTILINE)
    modules = {path.relative_to(SOURCE).as_posix(): path for path in SOURCE.rglob("*.py")}
    name = {
        path: "whetstone." + path.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for path in modules
    }
    name["__init__.py"] = "whetstone"
    silent = {path for path in modules if path.endswith("/__init__.py") and not edges[name[path]]}
    assert sorted(listed) == sorted(set(modules) - silent), "docs/architecture.md lists other modules than there are"
    order = {name[path]: i for i, path in enumerate(listed)}
    for module, position in order.items():
        above = sorted(m for m in edges[module] if m in order and order[m] > position)
        assert not above, f"{module} imports {above}, listed after it in docs/architecture.md"


def test_no_module_over_600_lines():
    """One job per file: no module of the package or the benchmarks grows past 600 lines."""
    root = Path(__file__).parents[1]
    sizes = {
        path: len(path.read_text().splitlines())
        for folder in ("src", "benchmarks")
        for path in (root / folder).rglob("*.py")
    }
    assert not {str(path.relative_to(root)): n for path, n in sizes.items() if n > 600}


def test_history_json_is_what_the_checkpoint_holds(tmp_path):
    config = RunConfig(**TINY, out=str(tmp_path))
    build_run(config).fit()
    assert json.loads((tmp_path / "history.json").read_text()) == load_checkpoint(tmp_path)["history"]


def test_channels_last_trains_the_same_network_in_another_memory_layout(tmp_path, mini_test):
    """--channels-last changes only how tensors are laid out: the model is NHWC while training, computes what
    the default layout computes (forward passes agree to float rounding; training then drifts apart only as
    far as rounding at the bounded ReLU's corners lets it), and its checkpoint loads into an ordinary model."""
    torch.manual_seed(0)
    model = ws.create_model("mnist-conv-small").eval()
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = mini_test[0][:64]
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=0, atol=1e-4)
    accuracy = {}
    for layout in (False, True):
        config = ws.RunConfig(model="mnist-conv-small", dataset="mnist-mini", limit=2000, epochs=5, start_epoch=2, steps=1, per="epoch",
                              seed=0, threads=1, progress=False, out=str(tmp_path / f"cl{layout}"), channels_last=layout)  # fmt: skip
        run = ws.build_run(config)
        if layout:
            conv = run.model.features[4].weight  # the second conv: 12 input channels
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        accuracy[layout] = run.fit().history[-1].eval_accuracy
        trained = ws.model_from_checkpoint(ws.load_checkpoint(tmp_path / f"cl{layout}"))
        assert trained.features[4].weight.is_contiguous()  # an ordinary model again
    assert accuracy[False] > 0.8 and abs(accuracy[True] - accuracy[False]) < 0.03
    with pytest.raises(ws.ConfigError, match="channels_last"):
        ws.RunConfig(model="mnist-dense", channels_last="yes").validate()


def test_limit_and_holdout_draw_a_seeded_sample_of_every_class(tmp_path):
    """Files may be sorted by class (the CIFAR-10 zip is): --limit and --holdout draw with the run's seed."""

    def split(seed: int, **settings) -> tuple[torch.Tensor, torch.Tensor]:
        run = build_run(
            RunConfig(**{**TINY, "seed": seed, **settings}, out=str(tmp_path / f"{seed}{sorted(settings)}"))
        )
        return run.train_loader.labels, run.eval_loader.labels

    train, held = split(0, limit=1000, holdout=0.2)
    assert len(train) == 800 and len(held) == 200 and set(held.tolist()) == set(range(10))
    again, held_again = split(0, limit=1000, holdout=0.2)
    assert torch.equal(train, again) and torch.equal(held, held_again)  # the same seed draws the same sample
    other, _ = split(1, limit=1000, holdout=0.2)
    assert not torch.equal(train, other)
    full, _ = split(0, limit=None)  # neither setting: the files' own order, untouched
    assert torch.equal(full, ws.load_dataset("mnist-mini", "train").labels)


def test_a_run_writes_its_config_and_a_run_that_cannot_start_leaves_no_folder(tmp_path, capsys):
    config = RunConfig(**TINY, out=str(tmp_path / "api"))
    build_run(config).fit()  # the Python API writes config.toml too, as the README says
    again = RunConfig.from_toml(tmp_path / "api" / "config.toml")
    assert again.replace(out=config.out).resolved() == config.resolved()
    argv = ["train", "--model", "mnist-dense", "--dataset", "mnist", "--data-dir", str(tmp_path / "no-data"),
            "--out", str(tmp_path / "failed"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "mnist" in capsys.readouterr().err and not (tmp_path / "failed").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before is left, empty, as it was
    assert main([*argv[:-3], str(tmp_path / "mine"), "--no-progress"]) == 2
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_a_last_batch_of_one_sample_is_left_out_so_batch_norm_trains(tmp_path):
    config = RunConfig(model="mnist-conv-small", dataset="mnist-mini", limit=129, epochs=1, batch_size=64, seed=0,
                       threads=1, progress=False, sharpener="none", out=str(tmp_path / "run"))  # fmt: skip
    run = build_run(config)
    assert len(run.train_loader) == 2  # 64 + 64; the 129th sample would be a batch of one
    run.fit()  # batch norm would refuse that batch: "expected more than 1 value per channel when training"
