"""Command line: ``whetstone train | eval | export | verify | fit | simulate | sweep | demo | models``.

argv -> settings -> the library -> printed results; nothing else lives here. Errors in what the user gave
(a bad name, a missing file, a value out of range) print one line and exit with status 2; ``--debug``
shows the traceback instead. SIGTERM unwinds like Ctrl-C: the last complete checkpoint stays, no
temporary file is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ..graph.simulator import TIE_BREAKS
from ..models.zoo import list_models, models_table
from ..runs.build import build_run, check_before_workers
from ..runs.config import (
    COSINE_SCHEDULES,
    ConfigError,
    RunConfig,
    describe_change,
    parse_model_options,
    resumed_config,
)
from ..targets import CHIPS, TARGETS
from ..training import distributed
from ..training.callbacks import PrintSummary
from ..training.checkpoint import RunFolder, check_output_path, load_checkpoint
from ..utils.files import Terminated, atomic_write, sigterm_raises
from ..utils.logs import console
from .flags import (
    BITS,
    COUNT,
    FRACTION,
    USER_ERRORS,
    OneLineParser,
    add_run_settings,
    dataset_name,
    number,
    one_line,
    stopped_line,
)

_RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TARGET_NAMES = sorted([*TARGETS, *(alias for target in TARGETS.values() for alias in target.aliases)])


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="whetstone", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"whetstone-snn {metadata.version('whetstone-snn')}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser("train", help="train a model and sharpen it to fully binary")
    add_run_settings(train)
    train.add_argument("--config", metavar="FILE", help="settings from a TOML file (a run's config.toml), under the flags")  # fmt: skip
    train.add_argument("--print-config", action="store_true", help="print the resolved settings as TOML and exit")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint and settings")
    train.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", help="data root (default: $WHETSTONE_DATA, else ~/.cache/whetstone/data)")
    data.add_argument("--download", action="store_true", help="download missing MNIST/Fashion-MNIST files")
    bits = {"type": BITS, "help": "quantize weights and thresholds to integers of this many bits (2-16)"}

    ev = commands.add_parser("eval", parents=[data], help="evaluate a checkpoint and check it is fully binary")
    ev.add_argument("checkpoint", help="checkpoint.pt (or best.pt) or its run directory")
    ev.add_argument("--dataset", type=dataset_name, help="default: the dataset it was trained on")
    ev.add_argument("--batch-size", type=COUNT, default=1000)

    ex = commands.add_parser("export", parents=[data], help="export a fully sharpened checkpoint for a target")
    ex.add_argument("checkpoint", help="checkpoint.pt (or best.pt) or its run directory")
    formats = "fbz: an Akida model (--target akida); py: a PyNN script (--target pynn)"
    ex.add_argument("--format", choices=["nir", "onnx", "fbz", "py"], help=f"default: the target's, or --out's; {formats}")  # fmt: skip
    ex.add_argument("--target", choices=_TARGET_NAMES, help="the software or chip the file is for (default: generic)")
    ex.add_argument("--out", help="file to write (default: model.nir / model.onnx in the run's folder)")
    ex.add_argument("--bits", **bits)
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file (never a run's own files)")
    ex.add_argument("--verify", action="store_true", help="then run the file in the target's software on the test set")
    ex.add_argument("--limit", type=COUNT, help="--verify on the first N test images")
    ex.add_argument("--no-progress", action="store_true")

    ve = commands.add_parser("verify", parents=[data], help="run a NIR file in a consumer's software, against the simulator")  # fmt: skip
    ve.add_argument("file", help="a file export wrote (.nir, .py, .onnx, .fbz)")
    ve.add_argument("--run", help="the run a file other than .nir was exported from (default: the file's folder)")
    ve.add_argument("--consumer", choices=_TARGET_NAMES, required=True)
    ve.add_argument("--dataset", type=dataset_name, help="default: the one its run (beside it, or --run) trained on")
    ve.add_argument("--split", choices=["train", "test"], default="test")
    ve.add_argument("--limit", type=COUNT, help="only the first N images")
    ve.add_argument("--no-progress", action="store_true")

    fit = commands.add_parser("fit", parents=[data], help="check a trained network against a chip's published limits")
    fit.add_argument("checkpoint", help="checkpoint.pt (or best.pt) or its run directory")
    chips = [*CHIPS, *(alias for name in CHIPS for alias in TARGETS[name].aliases)]
    fit.add_argument("--chip", choices=chips, required=True)

    sim = commands.add_parser("simulate", parents=[data], help="run a checkpoint or NIR file in the simulator")
    sim.add_argument("source", help="checkpoint.pt, its run directory, or a .nir file")
    sim.add_argument("--dataset", type=dataset_name, help="default: the checkpoint's (needed for a .nir file)")
    sim.add_argument("--split", choices=["train", "test"], default="test")
    sim.add_argument("--limit", type=COUNT, help="simulate only the first N images")
    sim.add_argument("--plot", action="store_true", help="draw 8 images' spikes per layer and every unit's rate: "
                     "spikes.png in the run's folder (NAME.spikes.png beside a .nir file)")  # fmt: skip
    sim.add_argument("--bits", **bits)
    sim.add_argument("--arithmetic", choices=["fp32", "int8"], help="energy figures (default: int8 with --bits)")
    sim.add_argument("--batch-size", type=COUNT, default=256)
    sim.add_argument("--tie-break", choices=TIE_BREAKS, default="lowest",
                     help="classes whose decode scores tie: the lowest index, or the one the output membranes support most")  # fmt: skip
    sim.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    sim.add_argument("--no-progress", action="store_true")

    sweep = commands.add_parser("sweep", parents=[data], help="tune optimizer and sharpener with Optuna")
    sweep.add_argument("--model", required=True, choices=list_models(), help="the model to tune")
    sweep.add_argument("--dataset", type=dataset_name, help="default: the model's")
    sweep.add_argument("--trials", type=COUNT, default=20)
    sweep.add_argument("--epochs", type=COUNT, default=10, help="epochs per trial")
    sweep.add_argument("--out", required=True, help="folder for study.db and one run folder per trial")
    sweep.add_argument("--holdout", type=FRACTION, default=0.1, help="fraction of the training set to score on")
    sweep.add_argument("--limit", type=COUNT, help="use only the first N training samples")
    sweep.add_argument("--seed", type=number(int, 0), default=0)

    demo = commands.add_parser("demo", help="mnist-dense on bundled digits, with and without sharpening")
    demo.add_argument("--out", default="runs/demo", help="folder of the demo's two runs (replacing an earlier demo)")
    demo.add_argument("--epochs", type=COUNT, default=21)
    demo.add_argument("--no-progress", action="store_true")

    commands.add_parser("models", help="list the model names")
    return parser


# -- train ---------------------------------------------------------------------------------------
def _train_settings(args: argparse.Namespace) -> tuple[RunConfig, bool]:
    """The run's config from the flags given (over ``--config``, or over the saved run with ``--resume``),
    and whether the run is resumed."""
    given = {name: getattr(args, name) for name in _RUN_FIELDS if hasattr(args, name)}
    if "model_options" in given:
        given["model_options"] = parse_model_options(given["model_options"])
    if not args.resume:
        base = RunConfig.from_toml(args.config) if args.config else RunConfig()
        return base.replace(**given), False
    if args.config or args.overwrite:
        raise ValueError("--resume continues a run with its saved settings: it takes neither --config nor --overwrite")
    config, changed = resumed_config(args.resume, given)
    if changed:
        print("resuming with " + ", ".join(describe_change(name, getattr(config, name)) for name in changed))
    return config, True


def cmd_train(args: argparse.Namespace) -> int:
    config, resumed = _train_settings(args)
    config = config.resolved().validate()
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    in_group = distributed.init_from_env()  # under torchrun: this is one rank of several
    launching = config.nproc > 1 and not in_group
    if launching:
        check_before_workers(config)
    folder = RunFolder(config.out)
    existed = folder.path.exists()
    lock = folder.claim(resume=resumed, overwrite=args.overwrite) if distributed.rank() == 0 else None
    try:
        if lock is not None:
            print(f"config: {config.describe()}")
        if launching:
            return distributed.launch(_train_process, config.nproc, config, resumed)
        return _train_process(config, resumed)
    except BaseException:
        if lock is not None and not resumed and not folder.holds_run():  # stopped before its first checkpoint
            folder.config.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            lock.release()
            if not existed and folder.path.is_dir() and not any(folder.path.iterdir()):
                folder.path.rmdir()  # a run that never started leaves no folder either


def _train_process(config: RunConfig, resumed: bool) -> int:
    """Train (or continue) the run in this process; with torch.distributed, one rank's share."""
    run = build_run(config, load_checkpoint(config.out) if resumed else None, callbacks=[PrintSummary()])
    if resumed and distributed.rank() == 0:
        epoch, batch = run.trainer.position
        print(f"resuming {config.out} at epoch {epoch + 1}, batch {batch}", flush=True)
    result = run.fit()
    if result.fully_binary or config.sharpener == "none":
        return 0
    if distributed.rank() == 0:
        more = ("train it again with more --epochs (a cosine schedule cannot be extended)" if config.lr_schedule in COSINE_SCHEDULES
                else f"continue it with whetstone train --resume {config.out} --epochs N")  # fmt: skip
        print(f"whetstone: {config.out} did not end fully binary within {config.epochs} epochs (exit status 1); {more}",
              file=sys.stderr)  # fmt: skip
    return 1


# -- eval, export, simulate ----------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from ..runs.report import evaluate_run

    figures = evaluate_run(args.checkpoint, args.dataset, args.batch_size, args.data_dir, args.download)
    print(json.dumps(figures, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..runs.report import precision_on_run
    from ..runs.restore import graph_from_checkpoint, quantized_as_trained, recorded_data_dir
    from ..targets import export, target_and_format, verify_on_dataset

    target, args.format = target_and_format(args.target, args.format, args.out)
    if args.limit and not args.verify:
        raise ValueError("--limit counts the images --verify runs: pass --verify too")
    if args.verify and target.run is None:  # said before anything is written
        raise ValueError(f"--verify: {target.consumer} cannot run here: {target.unavailable}")
    source = Path(args.checkpoint)
    stem = f"model{f'-{target.name}' if target.name not in ('generic', 'onnx') else ''}{f'-int{args.bits}' if args.bits else ''}"
    default = (source if source.is_dir() else source.parent) / f"{stem}.{args.format}"
    out = check_output_path(args.out or default, "--out", args.overwrite, example=f"model.{args.format}")
    if out.suffix != f".{args.format}":
        raise ValueError(f"--out {out}: a {args.format.upper()} file's name ends in .{args.format}, e.g. {out.stem}.{args.format}")  # fmt: skip
    trained, _, checkpoint = graph_from_checkpoint(args.checkpoint)
    graph = quantized_as_trained(trained, checkpoint, args.bits)
    prepared = target.prepare(graph)
    written = prepared.metadata.get("quantized_bits")
    if args.bits and written != args.bits:  # a chip's precision, not the one asked for: say so, write nothing
        raise ValueError(f"--bits {args.bits}: --target {target.name} holds at most {written}-bit weights")
    print(precision_on_run(trained, prepared, checkpoint, args.data_dir, args.download, args.limit), end="")
    export(graph, out, target.name, replace=args.overwrite)
    print(graph.summary())
    print(f"wrote {args.format.upper()} {out} for {target.name} ({target.summary}; {out.stat().st_size:,} bytes)")
    if target.fit is not None:
        print(target.fit(graph).table())
    if args.verify:
        reference = target.prepare(graph) if args.format != "nir" else None  # other formats do not hold the key
        dataset = checkpoint["run"].get("dataset")
        data_dir = args.data_dir or recorded_data_dir(checkpoint)
        try:
            result = verify_on_dataset(out, target.name, dataset, limit=args.limit, data_dir=data_dir, download=args.download,
                                       reference=reference, progress=not args.no_progress)  # fmt: skip
        except USER_ERRORS as error:
            raise ValueError(f"{out} is written (and kept), but --verify failed: {one_line(error)}") from None
        print(result.line())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..runs.restore import dataset_of_file, reference_of_file
    from ..targets import verify_on_dataset

    reference = reference_of_file(args.file, args.consumer, args.run)
    result = verify_on_dataset(args.file, args.consumer, args.dataset or dataset_of_file(args.file, args.run), args.split, args.limit, args.data_dir,
                               args.download, reference, progress=not args.no_progress)  # fmt: skip
    print(result.line())
    return 0 if result.classes_equal == result.samples else 1


def cmd_fit(args: argparse.Namespace) -> int:
    from ..runs.report import precision_on_run
    from ..runs.restore import graph_from_checkpoint
    from ..targets import fit_report, get_target

    graph, _, checkpoint = graph_from_checkpoint(args.checkpoint)
    report = fit_report(graph, args.chip)
    print(report.table())
    print(precision_on_run(graph, get_target(args.chip).prepare(graph), checkpoint, args.data_dir, args.download), end="")  # fmt: skip
    return 0 if report.fits else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..runs.report import simulate_run, simulation_text

    if args.json_out:
        check_output_path(args.json_out, "--json", args.overwrite, example="report.json")
    arithmetic = args.arithmetic or ("int8" if args.bits else "fp32")
    result, figures = simulate_run(args.source, args.dataset, args.split, args.limit, args.bits, arithmetic,
                                   args.batch_size, args.data_dir, args.download, progress=not args.no_progress,
                                   tie_break=args.tie_break, plot=args.plot)  # fmt: skip
    print(simulation_text(result, figures, arithmetic))
    if args.json_out:
        atomic_write(args.json_out, json.dumps(figures, indent=1), replace=args.overwrite)
    return 0


# -- sweep, demo, models -------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from ..runs.sweep import run_sweep

    base = RunConfig(model=args.model, dataset=args.dataset, holdout=args.holdout, seed=args.seed, limit=args.limit,
                     data_dir=args.data_dir, download=args.download, progress=False, out=args.out)  # fmt: skip
    base.resolved().validate()
    study = run_sweep(base, args.out, args.trials, args.epochs, args.seed)
    best = study.best_trial
    print(f"best of {len(study.trials)} trials: #{best.number} score {best.value:.4f} with {best.params}")
    print(f"study: {Path(args.out) / 'study.db'} (rerun the same command to add trials)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..runs.demo import run_demo

    return 0 if run_demo(args.out, args.epochs, progress=not args.no_progress).fully_binary else 1


def cmd_models(args: argparse.Namespace) -> int:
    print(models_table())
    return 0


_HANDLERS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "verify": cmd_verify, "fit": cmd_fit,
             "simulate": cmd_simulate, "sweep": cmd_sweep, "demo": cmd_demo, "models": cmd_models}  # fmt: skip
#: What a user can cause: reported in one line, never as a traceback.


def _print_warning(message: Warning | str, *_: object, **__: object) -> None:
    """A warning as the command line says it: one line on stderr, without the library's source line."""
    print(f"whetstone: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed in one line
        return int(stop.code or 0)
    try:
        with sigterm_raises(), warnings.catch_warnings(), console():
            warnings.showwarning = _print_warning
            return _HANDLERS[args.command](args)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.as_flag() if isinstance(error, ConfigError) else one_line(error)
        print(f"whetstone: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"whetstone: {stopped_line(stop, args)}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
