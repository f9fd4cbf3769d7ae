"""``lit_mmrec sweep``: the W&B sweep files of ``sweeps/`` run as Optuna studies, without a W&B server.

Each trial is a full ``lit_mmrec fit`` (picked by validation, best checkpoint tested) in its own run folder,
built from the file's ``command`` with the trial's parameters in place of ``${args}``. The translation:

* ``method``: ``grid`` -> ``GridSampler`` (each combination once, seeded order), ``random`` ->
  ``RandomSampler``, ``bayes`` -> ``TPESampler(multivariate=True, constant_liar=True)``. W&B's bayes is a
  Gaussian process; TPE keeps parallel workers apart (the constant liar counts running trials as bad, where
  Optuna's GP has no pending points and two workers would propose one point), handles categorical
  parameters (most files here) natively and learns from pruned trials.
* ``parameters``: ``value``/``values`` -> ``CategoricalDistribution``; ``int_uniform`` -> ``IntDistribution``;
  ``uniform`` / ``q_uniform`` -> ``FloatDistribution`` (``step=q``; ``IntDistribution`` for integer bounds);
  ``log_uniform_values`` -> ``FloatDistribution(log=True)``; ``log_uniform`` (exponent bounds) -> the same
  over ``e^min .. e^max``. Without an exact counterpart: ``q_log_uniform_values`` is log-uniform, rounded to
  a multiple of ``q`` (``IntDistribution(log=True)`` for q = 1 and integer bounds); ``normal``/``q_normal``
  are uniform over mu +- 3 sigma, ``log_normal``/``q_log_normal`` log-uniform over exp(mu +- 3 sigma).
  ``probabilities``, ``beta`` and ``inv_log_uniform`` are refused with a message.
* ``early_terminate: {type: hyperband, min_iter | max_iter + s, eta}`` -> ``HyperbandPruner``, fed after each
  validation by :class:`OptunaPruning` (the step is the number of validations, W&B's iterations). W&B
  compares a trial's best value so far, or with ``strict`` its value at the band: the callback reports the
  one or the other. A pruned trial stops training and still tests its best checkpoint.
* ``metric``: the study's objective and direction; a trial's value is the best its run's ``metrics.csv``
  holds (the checkpoint validation picks).

Storage: a journal file in ``--output`` (rerunning the command continues the study) or ``--storage URL``
(SQLite, PostgreSQL) shared by workers on many machines. A trial whose worker was killed is failed and queued
again, and resumes from its last checkpoint. ``trials.md`` and ``best_config.yaml`` (the best trial's complete
config) are rewritten in ``--output`` after every trial.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml
from lightning.pytorch.trainer.states import TrainerFn
from optuna.distributions import CategoricalDistribution as Categorical
from optuna.distributions import FloatDistribution as Float
from optuna.distributions import IntDistribution as Int
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_KINDS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
          "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal")


class SweepConfigError(ValueError):
    """A sweep file that cannot be run; the message names the file, the field and the fix."""


class TrialError(RuntimeError):
    """A trial that crashed: recorded as failed, and the sweep goes on."""


def _distribution(spec: Any, where: str, grid: bool) -> tuple[Any, float | None]:
    """The Optuna distribution of one W&B parameter (categorical for a grid), and the multiple its samples
    are rounded to."""
    if not isinstance(spec, dict) or "parameters" in spec:
        raise SweepConfigError(f"{where} must be a mapping such as `{{values: [...]}}` or `{{min: 0, max: 1}}` "
                               f"(nested parameters: use dotted names such as model.init_args.lambda_cl)")
    kind = spec.get("distribution") or ("constant" if "value" in spec else "categorical" if "values" in spec else
                                        "int_uniform" if all(isinstance(spec.get(k), int) for k in ("min", "max"))
                                        else "uniform")
    if kind not in _KINDS or "probabilities" in spec:
        raise SweepConfigError(f"{where}: {'probabilities' if kind in _KINDS else f'distribution {kind!r}'} has no "
                               f"Optuna counterpart; use a list of values, uniform or log_uniform_values, or run "
                               f"the file with `wandb agent`")
    q = spec.get("q", 1) if kind.startswith("q_") else None
    if kind in ("constant", "categorical"):
        values = [spec["value"]] if kind == "constant" else spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where} needs `value` or a non-empty `values` list")
        return Categorical(values), None
    if kind.endswith("normal"):
        mu, sigma = float(spec.get("mu", 0.0)), float(spec.get("sigma", 1.0))
        log = kind.endswith("log_normal")
        distribution = Float(*((math.exp(mu - 3 * sigma), math.exp(mu + 3 * sigma)) if log
                               else (mu - 3 * sigma, mu + 3 * sigma)), log=log)
    else:
        low, high = spec.get("min"), spec.get("max")
        if low is None or high is None or not low < high:
            raise SweepConfigError(f"{where}: distribution {kind!r} needs min below max, got {low} and {high}")
        integral = all(isinstance(v, int) for v in (low, high, q or 1))
        if kind in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
            raise SweepConfigError(f"{where}: {kind} needs min > 0 (the bounds are values, not exponents)")
        if kind == "log_uniform":
            distribution = Float(math.exp(low), math.exp(high), log=True)
        elif kind in ("log_uniform_values", "q_log_uniform_values"):
            distribution, q = (Int(low, high, log=True), None) if integral and q == 1 else (Float(low, high, log=True), q)
        elif kind == "q_uniform":
            distribution, q = (Int if integral else Float)(low, high, step=q), None
        else:
            distribution = Int(int(low), int(high)) if kind == "int_uniform" else Float(low, high)
    if grid:
        if distribution.log or distribution.step is None:
            raise SweepConfigError(f"{where}: a grid search needs a finite set of values; give it `values: [...]`, "
                                   f"an int_uniform or a q_uniform range")
        count = int(math.floor((distribution.high - distribution.low) / distribution.step + 1e-9)) + 1
        return Categorical([distribution.low + k * distribution.step for k in range(count)]), None
    return distribution, q


class Sweep:
    """A W&B sweep file translated to Optuna: search space, sampler, pruner, direction and command."""

    def __init__(self, raw: dict, source: str = "<sweep>", seed: int | None = None, startup_trials: int = 10):
        self.source, self.seed, self.startup_trials = source, seed, startup_trials
        self.method, metric, parameters = raw.get("method"), raw.get("metric") or {}, raw.get("parameters")
        if self.method not in ("grid", "random", "bayes"):
            raise SweepConfigError(f"{source}: method must be grid, random or bayes, got {self.method!r}")
        if "name" not in metric or metric.get("goal", "minimize") not in ("maximize", "minimize"):
            raise SweepConfigError(f"{source}: metric needs a name (e.g. val/recall@20) and goal maximize|minimize")
        self.metric, self.direction = str(metric["name"]), metric.get("goal", "minimize")
        if not isinstance(parameters, dict) or not parameters:
            raise SweepConfigError(f"{source}: parameters must map at least one parameter name to its values")
        self.space = {name: _distribution(spec, f"{source}: parameters.{name}", self.method == "grid")
                      for name, spec in parameters.items()}
        self.command = [str(part) for part in raw.get("command") or ["${program}", "${args}"]]
        if "${args}" not in self.command:
            raise SweepConfigError(f"{source}: command must contain ${{args}}, where the trial's parameters go")
        self.name, self.early_terminate = str(raw.get("name", Path(source).stem)), raw.get("early_terminate") or {}
        self.pruner()  # a bad early_terminate is refused before any trial runs

    @classmethod
    def load(cls, path: Path, **options) -> Sweep:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise SweepConfigError(f"sweep file {path} cannot be read as YAML: {error}") from None
        if not isinstance(raw, dict):
            raise SweepConfigError(f"sweep file {path} must be a mapping with method, metric and parameters")
        return cls(raw, str(path), **options)

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.method == "grid":
            return optuna.samplers.GridSampler({k: d.choices for k, (d, _) in self.space.items()}, seed=self.seed)
        if self.method == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=self.startup_trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        spec, eta = self.early_terminate, self.early_terminate.get("eta", 3)
        if not spec:
            return optuna.pruners.NopPruner()
        if spec.get("type") != "hyperband" or eta != int(eta) or eta < 2 or not ({"min_iter", "max_iter"} & set(spec)):
            raise SweepConfigError(f"{self.source}: early_terminate must be {{type: hyperband, eta: an integer >= 2, "
                                   f"min_iter or max_iter + s}}, got {spec}")
        high = int(spec.get("max_iter", 0)) or "auto"
        low = int(spec["min_iter"]) if "min_iter" in spec else max(1, int(high / eta ** int(spec.get("s", 0))))
        return optuna.pruners.HyperbandPruner(min_resource=max(low, 1), max_resource=high, reduction_factor=int(eta))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's parameter values, as ``fit`` receives them."""
        values = {}
        for name, (d, quantum) in self.space.items():
            value = (trial.suggest_categorical(name, d.choices) if isinstance(d, Categorical) else
                     (trial.suggest_int if isinstance(d, Int) else trial.suggest_float)(name, d.low, d.high,
                                                                                        step=d.step, log=d.log))
            values[name] = value if quantum is None else round(value / quantum) * quantum
        return values

    def fit_arguments(self, params: dict[str, Any], workdir: Path) -> list[str]:
        """The ``lit_mmrec`` arguments of one trial: the command without its program, ``${args}`` expanded
        to ``--name=value``, relative ``--config`` files resolved against ``workdir``."""
        parts = [part for part in self.command if part not in ("${env}", "${interpreter}")]
        parts = parts[1:] if parts and parts[0] in ("lit_mmrec", "${program}") else parts
        if not parts or parts[0] != "fit":
            raise SweepConfigError(f"{self.source}: command must run `lit_mmrec fit ...`, got {self.command}")
        arguments: list[str] = []
        for index, part in enumerate(parts):
            if part == "${args}":
                arguments += [f"--{name}={_format(value)}" for name, value in params.items()]
            elif part.startswith("${"):
                raise SweepConfigError(f"{self.source}: command macro {part} is not supported; use ${{args}}")
            elif index > 0 and parts[index - 1] == "--config" and not Path(part).is_absolute():
                if not (workdir / part).is_file():
                    raise SweepConfigError(f"{self.source}: command config {part} is not a file under {workdir}; "
                                           f"run from the repository root or pass --workdir")
                arguments.append(str((workdir / part).resolve()))
            else:
                arguments.append(part)
        return arguments


def _format(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


class OptunaPruning(L.Callback):
    """Reports the metric to the trial after each validation; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, sweep: Sweep) -> None:
        self.trial, self.sweep, self.best, self.pruned = trial, sweep, None, False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.sweep.metric not in trainer.callback_metrics:
            raise SweepConfigError(f"{self.sweep.source}: metric.name {self.sweep.metric!r} is not logged; logged "
                                   f"metrics: {sorted(trainer.callback_metrics)}")
        value = float(trainer.callback_metrics[self.sweep.metric])
        if self.best is None or (value > self.best) == (self.sweep.direction == "maximize"):
            self.best = value
        validations = (trainer.current_epoch + 1) // (trainer.check_val_every_n_epoch or 1)
        self.trial.report(value if self.sweep.early_terminate.get("strict") else self.best, step=validations)
        if self.trial.should_prune():
            self.pruned = trainer.should_stop = True


def run_trial(sweep: Sweep, trial: optuna.Trial, workdir: Path, output: Path, max_trials: int | None = None) -> float:
    """The objective: one ``lit_mmrec fit`` with the trial's parameters; its best validation value."""
    from lit_mmrec.lightning_cli import build_cli

    study = trial.study
    if max_trials is not None and sum(t.number < trial.number for t in study.get_trials(
            False, states=(*FINISHED, TrialState.RUNNING))) >= max_trials:
        trial.set_user_attr("surplus", True)  # another worker took the last trial while this one asked
        raise TrialError(f"the study already holds {max_trials} trials (--max-trials); this worker stops")
    params, run_dir = sweep.suggest(trial), trial.user_attrs.get("run_dir", str(output / f"trial-{trial.number:03d}"))
    _set(trial, params=params, host=socket.gethostname(), pid=os.getpid(), run_dir=run_dir)
    twin = next((t for t in study.get_trials(False, states=FINISHED) if t.user_attrs.get("params") == params), None)
    if twin is not None:  # the same settings would train the same model again: take the earlier trial's result
        _set(trial, same_as=twin.number, seconds=0.0,
             **{k: v for k, v in twin.user_attrs.items() if k not in trial.user_attrs and k != "seconds"})
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        return twin.value
    pruning = OptunaPruning(trial, sweep)
    arguments = sweep.fit_arguments(params, workdir) + [f"--trainer.default_root_dir={run_dir}"]
    last = sorted(Path(run_dir).glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    arguments += [f"--ckpt_path={last[-1]}"] if last else []  # a killed trial's retry continues its run
    started = time.perf_counter()
    try:
        cli = build_cli(arguments, extra_callbacks=[pruning])
    except SweepConfigError:
        raise
    except (Exception, SystemExit) as error:
        raise TrialError(f"trial {trial.number} ({params}) failed: {type(error).__name__}: {error}") from error
    run = Path(cli.trainer.loggers[0].log_dir)
    with (run / "metrics.csv").open(newline="") as handle:
        curve = [(int(row["epoch"]), float(row[sweep.metric])) for row in csv.DictReader(handle)
                 if row.get(sweep.metric)]
    if not curve:
        raise TrialError(f"trial {trial.number}: {run / 'metrics.csv'} holds no {sweep.metric}")
    epoch, best = (max if sweep.direction == "maximize" else min)(curve, key=lambda item: item[1])
    _set(trial, seconds=time.perf_counter() - started, best_value=best, best_epoch=epoch, validations=len(curve),
         config=str(run / "config.yaml"),
         test={k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")})
    if pruning.pruned:
        raise optuna.TrialPruned()
    return best


def _set(trial: optuna.Trial, **attrs: Any) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def retry_killed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queues a trial whose worker died again, with its parameters and run folder (so that it resumes)."""
    run_dir = {"run_dir": trial.user_attrs["run_dir"]} if "run_dir" in trial.user_attrs else {}
    study.enqueue_trial(trial.params, user_attrs={**run_dir, "retry_of": trial.number}, skip_if_exists=False)


def _reclaim_killed(study: optuna.Study) -> None:
    """Fails the running trials of dead workers on this machine, and queues them again."""
    for trial in study.get_trials(False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == socket.gethostname() and pid is not None:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                study.tell(trial.number, state=TrialState.FAIL)
                retry_killed(study, trial)
            except PermissionError:  # alive, another user's
                pass


def write_outputs(sweep: Sweep, study: optuna.Study, output: Path) -> None:
    """``trials.md`` (every trial) and ``best_config.yaml`` (the complete config of the best trial)."""
    trials = [t for t in study.get_trials(False) if not t.user_attrs.get("surplus")]
    scored = [t for t in trials if t.state in FINISHED and t.user_attrs.get("best_value") is not None]
    best = (max if sweep.direction == "maximize" else min)(scored, key=lambda t: t.user_attrs["best_value"]) \
        if scored else None
    cutoff = "@" + sweep.metric.rsplit("@", 1)[-1] if "@" in sweep.metric else ""
    tests = sorted({k for t in trials for k in t.user_attrs.get("test") or {}
                    if k.endswith(cutoff) and not k.startswith("test/hit")})
    header = ["trial", *[name.rsplit(".", 1)[-1] for name in sweep.space], f"best {sweep.metric}", "epoch",
              "validations", "state", *tests, "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        a, test = t.user_attrs, t.user_attrs.get("test") or {}
        value = f"{a['best_value']:.4f}" + (" (best)" if t is best else "") if "best_value" in a else ""
        row = [t.number, *[_cell((a.get("params") or t.params).get(n, "")) for n in sweep.space], value,
               a.get("best_epoch", ""), a.get("validations", ""),
               t.state.name.lower() + (f" (same as {a['same_as']})" if "same_as" in a else ""),
               *[f"{test[k]:.4f}" if k in test else "" for k in tests], f"{a.get('seconds', 0.0) / 60:.1f}"]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    _write(output / "trials.md", "\n".join(lines) + "\n")
    if best is not None and Path(best.user_attrs["config"]).is_file():
        _write(output / "best_config.yaml", f"# best trial {best.number} of sweep {sweep.name}: {sweep.metric} = "
               f"{best.user_attrs['best_value']:.6f}\n" + Path(best.user_attrs["config"]).read_text())


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write(path: Path, text: str) -> None:
    """Replaces ``path`` at once, so that concurrent workers never leave half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def open_study(sweep: Sweep, output: Path, storage_url: str | None) -> optuna.Study:
    """The sweep's study in ``storage_url`` or in ``<output>/study.journal``, created on first use."""
    output.mkdir(parents=True, exist_ok=True)
    if storage_url:
        from sqlalchemy.exc import SQLAlchemyError

        for attempt in range(5):  # workers started together race to create the database's tables
            try:
                storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=180,
                                                     failed_trial_callback=retry_killed)
                break
            except SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random() * 2 ** attempt)
    else:
        from optuna.storages.journal import JournalFileBackend
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(output / "study.journal")))
    return optuna.create_study(storage=storage, study_name=sweep.name, direction=sweep.direction,
                               sampler=sweep.sampler(), pruner=sweep.pruner(), load_if_exists=True)


def run_sweep(sweep: Sweep, output: Path, workdir: Path, n_trials: int | None, max_trials: int | None,
              storage_url: str | None = None) -> optuna.Study:
    """Runs trials in this process until it ran ``n_trials``, the study holds ``max_trials`` finished or
    running trials, or a grid is exhausted."""
    study = open_study(sweep, output, storage_url)
    _reclaim_killed(study)
    done = 0
    while (n_trials is None or done < n_trials) and not (
            max_trials is not None and len(study.get_trials(False, states=(*FINISHED, TrialState.RUNNING))) >= max_trials
            or isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study)):
        study.optimize(lambda trial: run_trial(sweep, trial, workdir, output, max_trials), n_trials=1,
                       catch=(TrialError,), callbacks=[lambda study, _: write_outputs(sweep, study, output)])
        done += 1
    return study


def main(argv: Sequence[str] | None = None) -> None:
    """``lit_mmrec sweep SWEEP.yaml [--n-trials N] [--max-trials T] [--output DIR] [--storage URL]``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec sweep", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("sweep_file", type=Path, help="a W&B sweep YAML (e.g. sweeps/dasrec_tiktok_bayes.yaml)")
    add("--n-trials", type=int, default=None, help="trials this process runs (default: no limit)")
    add("--max-trials", type=int, default=None, help="stop once the study holds this many trials, over all workers")
    add("--output", type=Path, default=None,
        help="sweep folder (default: $LIT_MMREC_OUTPUT or ~/lit_mmrec_runs, then sweeps/<name>)")
    add("--storage", default=None, help="Optuna RDB URL shared by workers (default: a journal file in --output)")
    add("--workdir", type=Path, default=Path.cwd(), help="folder that the command's relative --config paths are in")
    add("--seed", type=int, default=None, help="the sampler's seed (give each worker its own; default: random)")
    add("--startup-trials", type=int, default=10, help="bayes: random trials before TPE (Optuna's default 10)")
    options = parser.parse_args(argv)
    try:
        sweep = Sweep.load(options.sweep_file.expanduser().resolve(), seed=options.seed,
                           startup_trials=options.startup_trials)
        if sweep.method != "grid" and options.n_trials is None and options.max_trials is None:
            raise SweepConfigError(f"{sweep.source}: a {sweep.method} sweep needs --n-trials N or --max-trials T")
        root = Path(os.environ.get("LIT_MMREC_OUTPUT", Path.home() / "lit_mmrec_runs"))
        output = (options.output or root / "sweeps" / sweep.name).expanduser().resolve()
        study = run_sweep(sweep, output, options.workdir.expanduser().resolve(), options.n_trials,
                          options.max_trials, options.storage)
    except SweepConfigError as error:
        sys.exit(f"lit_mmrec sweep: {error}")
    write_outputs(sweep, study, output)
    print((output / "trials.md").read_text() if (output / "trials.md").is_file() else "no trial finished")
    print(f"best config: {output / 'best_config.yaml'}")
