"""Hyperparameter sweeps over the sharpener and the optimizer, on Optuna (optional extra ``sweep``).

``whetstone sweep --model NAME --trials N --out DIR`` runs an Optuna study whose trials are ordinary
``whetstone train`` runs (each in ``DIR/trial-K``), scored on a held-out part of the training set (never
the test set). The study lives in ``DIR/study.db`` (SQLite), so an interrupted sweep continues where it
stopped, and several processes may share it.

The score is the held-out accuracy of the *fully binary* network; a trial that does not end fully binary
scores its accuracy minus 1, so it always ranks below every one that does.

On a Ray cluster the same objective runs under Ray Tune with Optuna as the searcher::

    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
    from whetstone.runs.sweep import train_trial

    def trainable(settings):
        return {"score": train_trial(base_config.replace(**settings, out=f"runs/tune/{tune.get_context().get_trial_id()}"))}

    tune.Tuner(trainable, param_space=RAY_SPACE, tune_config=tune.TuneConfig(
        search_alg=OptunaSearch(metric="score", mode="max"), num_samples=100)).fit()

where ``RAY_SPACE`` mirrors :func:`suggest` (``tune.choice`` / ``tune.loguniform`` / ``tune.randint``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..training.checkpoint import RunFolder
from ..utils.checks import install_hint
from .build import build_run
from .config import ConfigError, RunConfig, flag_of

__all__ = ["run_sweep", "suggest", "train_trial"]

#: Learning-rate ranges per optimizer (log-uniform).
LR_RANGES = {"adam": (1e-4, 1e-2), "adadelta": (0.1, 10.0), "rmsprop": (1e-4, 1e-2), "sgd": (1e-3, 0.3)}


def _optuna():
    try:
        import optuna
    except ImportError as error:
        raise ImportError(f"whetstone sweep needs optuna: {install_hint('sweep', 'optuna')}") from error
    return optuna


def suggest(trial: Any, epochs: int) -> dict[str, Any]:
    """The search space: optimizer and learning rate, and the simple sharpener's first epoch and steps
    per layer (bounded so that sharpening can finish within ``epochs``)."""
    optimizer = trial.suggest_categorical("optimizer", sorted(LR_RANGES))
    low, high = LR_RANGES[optimizer]
    config = {
        "optimizer": optimizer,
        "lr": trial.suggest_float(f"lr_{optimizer}", low, high, log=True),
        "start_epoch": trial.suggest_int("start_epoch", 0, max(0, epochs // 2)),
    }
    config["steps"] = trial.suggest_int("steps", 1, max(1, (epochs - config["start_epoch"]) // 2))
    return config


def train_trial(config: RunConfig) -> float:
    """Train one trial's run; returns its score (held-out accuracy if fully binary, else that minus 1).
    A trial folder left by an interrupted sweep is replaced: the study records only finished trials."""
    with RunFolder(config.out).claim(overwrite=True):
        result = build_run(config).fit()
    accuracy = result.history[-1].eval_accuracy or 0.0
    return accuracy if result.fully_binary else accuracy - 1.0


def _check_same_study(study: Any, base: RunConfig, epochs: int, database: Path) -> None:
    """A study continues only with the settings it began with (model, data, seed, ...): trials of another
    model would be mixed into its ranking."""
    settings = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if not f.metadata["runtime"]}
    settings = json.loads(json.dumps({**settings, "epochs": epochs}))  # as the study stores it
    saved = study.user_attrs.get("whetstone_settings")
    if saved is None:
        study.set_user_attr("whetstone_settings", settings)
        return
    changed = [name for name in sorted(settings) if saved.get(name) != settings[name]]
    if changed:
        said = "; ".join(f"{flag_of(name)} {settings[name]} (the study has {saved.get(name)})" for name in changed)
        raise ConfigError(
            "out", f"{database}: {said}: continue the study with its own settings, or sweep into another --out"
        )


def run_sweep(base: RunConfig, out: str | Path, trials: int, epochs: int, seed: int = 0) -> Any:
    """Run (or continue) the study in ``out/study.db`` over ``base`` (a config whose ``holdout`` keeps
    the test set out of tuning); returns the ``optuna.Study``."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our epoch lines say what happens; errors come as one line
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    database = out / "study.db"
    try:
        study = optuna.create_study(
            study_name="whetstone",
            direction="maximize",
            storage=f"sqlite:///{database}",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
    except Exception as error:  # noqa: BLE001 - not SQLite, another schema, locked: one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{database} is not a study whetstone can continue: {reason[:200]}") from None
    _check_same_study(study, base, epochs, database)

    def objective(trial: Any) -> float:
        settings = suggest(trial, epochs)
        config = base.replace(sharpener="simple", epochs=epochs, out=str(out / f"trial-{trial.number}"), **settings)
        return train_trial(config)

    study.optimize(objective, n_trials=trials)
    return study
