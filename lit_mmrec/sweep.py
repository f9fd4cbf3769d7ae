"""``lit_mmrec sweep``: the W&B sweep files of ``sweeps/`` run as Optuna studies, without a W&B server.

A sweep file (the same YAML ``wandb agent`` runs) is translated to an Optuna study; each trial is a
full ``lit_mmrec fit`` (the model picked by validation, then its best checkpoint tested) in its own run
folder, built from the file's ``command`` with the trial's parameters in place of ``${args}``.

* ``method``: ``grid`` -> ``GridSampler`` (every combination once, in a seeded random order);
  ``random`` -> ``RandomSampler``; ``bayes`` -> ``TPESampler(multivariate=True, constant_liar=True)``.
  W&B's ``bayes`` is a Gaussian process; TPE is used instead because it keeps parallel workers apart
  (the constant liar treats running trials as bad, so two workers do not propose the same point, which a
  GP without pending-point handling does), models categorical parameters natively (most files here are
  lists of values) and learns from pruned trials' intermediate values.
* ``parameters``: ``value``/``constant`` and ``values``/``categorical`` -> ``CategoricalDistribution``;
  ``int_uniform`` -> ``IntDistribution``; ``uniform`` -> ``FloatDistribution``; ``q_uniform`` -> the
  same with ``step=q``; ``log_uniform_values`` -> ``FloatDistribution(log=True)``; ``log_uniform``
  (bounds are exponents) -> ``FloatDistribution(e^min, e^max, log=True)``. No exact counterpart:
  ``q_log_uniform_values`` is sampled log-uniformly and rounded to a multiple of ``q`` (``IntDistribution
  (log=True)`` when ``q`` is 1 and the bounds are integers); ``normal``/``q_normal`` are sampled
  uniformly over mu +- 3 sigma, ``log_normal``/``q_log_normal`` log-uniformly over exp(mu +- 3 sigma);
  ``probabilities``, ``beta`` and ``inv_log_uniform`` are refused with a message.
* ``early_terminate: {type: hyperband, min_iter | max_iter + s, eta}`` -> ``HyperbandPruner(min_resource,
  max_resource, reduction_factor=eta)``, fed after each validation by :class:`OptunaPruning`, whose step is
  the number of validations (W&B's iterations). W&B compares a trial's best value so far (its value at
  the band with ``strict: true``); the callback reports the running best (the value itself when strict).
  A pruned trial stops training and still tests its best checkpoint.
* ``metric``: the logged metric (``val/recall@20``) and its ``goal``, the study's direction; a trial's
  value is the best the metric reached (the checkpoint validation picks), read from its ``metrics.csv``.

Storage: a journal file in ``--output`` (rerunning the command continues the study), or ``--storage
URL`` (``sqlite:///study.db``, ``postgresql://...``) shared by workers on any number of machines; start
as many ``lit_mmrec sweep`` processes as there are devices. A trial whose process was killed is marked
failed and queued again, resuming from its last checkpoint. ``<output>/trials.md`` (every trial) and
``<output>/best_config.yaml`` (the complete config of the best trial) are rewritten after each trial.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
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
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_KINDS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
          "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal")


class SweepConfigError(ValueError):
    """A sweep file that cannot be run; the message names the file, the field and the fix."""


class TrialError(RuntimeError):
    """A trial that crashed: recorded as failed, and the sweep goes on."""


def _distribution(spec: Any, where: str) -> tuple[BaseDistribution, float | None]:
    """The Optuna distribution of one W&B parameter spec, and the multiple its samples are rounded to."""
    if not isinstance(spec, dict):
        raise SweepConfigError(f"{where} must be a mapping such as `{{values: [...]}}` or `{{min: 0, max: 1}}`")
    kind = spec.get("distribution") or ("constant" if "value" in spec else "categorical" if "values" in spec
                                        else "int_uniform" if all(isinstance(spec.get(k), int) for k in ("min", "max"))
                                        else "uniform")
    q = spec.get("q", 1)
    if kind not in _KINDS:
        raise SweepConfigError(f"{where}.distribution {kind!r} has no Optuna counterpart; use uniform, "
                               f"log_uniform_values or a list of values, or run the file with `wandb agent`")
    if kind in ("constant", "categorical"):
        if "probabilities" in spec:
            raise SweepConfigError(f"{where}.probabilities: Optuna has no weighted choice; remove them "
                                   f"(uniform choice) or run the file with `wandb agent`")
        values = [spec["value"]] if kind == "constant" else spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where} needs `value` or a non-empty `values` list")
        return CategoricalDistribution(values), None
    if kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
        mu, sigma = float(spec.get("mu", 0.0)), float(spec.get("sigma", 1.0))
        low, high = mu - 3 * sigma, mu + 3 * sigma
        if kind.endswith("log_normal"):
            return FloatDistribution(math.exp(low), math.exp(high), log=True), q if kind.startswith("q_") else None
        return FloatDistribution(low, high), q if kind.startswith("q_") else None
    if "min" not in spec or "max" not in spec:
        raise SweepConfigError(f"{where}: distribution {kind!r} needs `min` and `max`")
    low, high = spec["min"], spec["max"]
    if not low < high:
        raise SweepConfigError(f"{where}: min ({low}) must be below max ({high})")
    integral = all(isinstance(v, int) for v in (low, high, q))
    if kind == "int_uniform":
        return IntDistribution(int(low), int(high)), None
    if kind == "uniform":
        return FloatDistribution(low, high), None
    if kind == "q_uniform":
        return (IntDistribution(low, high, step=q) if integral else FloatDistribution(low, high, step=q)), None
    if kind == "log_uniform":
        return FloatDistribution(math.exp(low), math.exp(high), log=True), None
    if low <= 0:
        raise SweepConfigError(f"{where}: {kind} needs min > 0 (the bounds are values, not exponents)")
    if kind == "q_log_uniform_values" and integral and q == 1:
        return IntDistribution(low, high, log=True), None
    return FloatDistribution(low, high, log=True), q if kind.startswith("q_") else None


def _grid_values(name: str, distribution: BaseDistribution, quantum: float | None, source: str) -> list:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step and quantum is None:
        steps = int(math.floor((distribution.high - distribution.low) / distribution.step + 1e-9))
        return [distribution.low + k * distribution.step for k in range(steps + 1)]
    raise SweepConfigError(f"{source}: parameters.{name}: a grid search needs a finite set of values; give it "
                           f"`values: [...]`, an int_uniform or a q_uniform range")


class Sweep:
    """A W&B sweep file translated to Optuna: search space, sampler, pruner, direction and command."""

    def __init__(self, raw: dict, source: str = "<sweep>", seed: int | None = None, startup_trials: int = 10):
        self.source, self.seed, self.startup_trials = source, seed, startup_trials
        self.method = raw.get("method")
        if self.method not in ("grid", "random", "bayes"):
            raise SweepConfigError(f"{source}: method must be grid, random or bayes, got {self.method!r}")
        metric = raw.get("metric") or {}
        if "name" not in metric or metric.get("goal", "minimize") not in ("maximize", "minimize"):
            raise SweepConfigError(f"{source}: metric needs a name (e.g. val/recall@20) and goal maximize|minimize")
        self.metric, self.direction = str(metric["name"]), metric.get("goal", "minimize")
        parameters = raw.get("parameters")
        if not isinstance(parameters, dict) or not parameters:
            raise SweepConfigError(f"{source}: parameters must map at least one parameter name to its values")
        nested = [name for name, spec in parameters.items() if isinstance(spec, dict) and "parameters" in spec]
        if nested:
            raise SweepConfigError(f"{source}: parameters.{nested[0]}: nested parameters are not supported; "
                                   f"use dotted names such as model.init_args.lambda_cl")
        self.space = {name: _distribution(spec, f"{source}: parameters.{name}") for name, spec in parameters.items()}
        self.command = [str(part) for part in raw.get("command") or ["${program}", "${args}"]]
        if "${args}" not in self.command:
            raise SweepConfigError(f"{source}: command must contain ${{args}}, where the trial's parameters go")
        self.name = str(raw.get("name", Path(source).stem))
        self.early_terminate = raw.get("early_terminate")
        self.pruner()  # refuse a bad early_terminate before any trial runs

    @classmethod
    def load(cls, path: Path, **options) -> Sweep:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepConfigError(f"sweep file {path} does not exist") from None
        except yaml.YAMLError as error:
            raise SweepConfigError(f"sweep file {path} is not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise SweepConfigError(f"sweep file {path} must be a mapping with method, metric and parameters")
        return cls(raw, str(path), **options)

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.method == "grid":
            grid = {name: _grid_values(name, *space, self.source) for name, space in self.space.items()}
            return optuna.samplers.GridSampler(grid, seed=self.seed)
        if self.method == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=self.startup_trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        spec = self.early_terminate
        if not spec:
            return optuna.pruners.NopPruner()
        eta = spec.get("eta", 3)
        if spec.get("type") != "hyperband" or eta != int(eta) or eta < 2:
            raise SweepConfigError(f"{self.source}: early_terminate must be {{type: hyperband, eta: an integer >= 2, "
                                   f"min_iter or max_iter + s}}, got {spec}")
        eta = int(eta)
        if "min_iter" in spec:
            low, high = int(spec["min_iter"]), int(spec.get("max_iter", 0)) or "auto"
        elif "max_iter" in spec:
            high = int(spec["max_iter"])
            low = max(1, int(high / eta ** int(spec.get("s", 0))))
        else:
            raise SweepConfigError(f"{self.source}: early_terminate needs min_iter, or max_iter with s")
        if low < 1:
            raise SweepConfigError(f"{self.source}: early_terminate.min_iter must be at least one validation")
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=eta)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's parameter values, as ``fit`` receives them."""
        values = {}
        for name, (distribution, quantum) in self.space.items():
            if isinstance(distribution, CategoricalDistribution) or self.method == "grid":
                value = trial.suggest_categorical(name, _grid_values(name, distribution, quantum, self.source)
                                                  if self.method == "grid" else distribution.choices)
            elif isinstance(distribution, IntDistribution):
                value = trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                          log=distribution.log)
            else:
                value = trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                            log=distribution.log)
            values[name] = value if quantum is None else round(value / quantum) * quantum
        return values

    def fit_arguments(self, params: dict[str, Any], workdir: Path) -> list[str]:
        """The ``lit_mmrec`` arguments of one trial: the command without its program, ``${args}`` expanded
        to ``--name=value``, relative ``--config`` files resolved against ``workdir``."""
        parts = [part for part in self.command if part not in ("${env}", "${interpreter}")]
        if parts and parts[0] in ("lit_mmrec", "${program}"):
            parts = parts[1:]
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

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool, strict: bool, source: str) -> None:
        self.trial, self.metric, self.maximize, self.strict, self.source = trial, metric, maximize, strict, source
        self.best: float | None = None
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.metric not in trainer.callback_metrics:
            raise SweepConfigError(f"{self.source}: metric.name {self.metric!r} is not logged; logged metrics: "
                                   f"{sorted(trainer.callback_metrics)}")
        value = float(trainer.callback_metrics[self.metric])
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        validations = (trainer.current_epoch + 1) // (trainer.check_val_every_n_epoch or 1)
        self.trial.report(value if self.strict else self.best, step=validations)
        if self.trial.should_prune():
            self.pruned = trainer.should_stop = True


def run_trial(sweep: Sweep, trial: optuna.Trial, workdir: Path, output: Path, max_trials: int | None = None) -> float:
    """The objective: one ``lit_mmrec fit`` with the trial's parameters; its best validation value."""
    from lit_mmrec.lightning_cli import build_cli

    ahead = trial.study.get_trials(False, states=(*FINISHED, TrialState.RUNNING))
    if max_trials is not None and sum(t.number < trial.number for t in ahead) >= max_trials:
        trial.set_user_attr("surplus", True)  # another worker took the last trial while this one asked
        raise TrialError(f"the study already holds {max_trials} trials (--max-trials); this worker stops")
    params = sweep.suggest(trial)
    twin = next((t for t in trial.study.get_trials(False, states=FINISHED) if t.user_attrs.get("params") == params),
                None)
    run_dir = Path(trial.user_attrs.get("run_dir", output / f"trial-{trial.number:03d}"))
    trial.set_user_attr("params", params)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("run_dir", str(run_dir))
    if twin is not None:  # a trial is deterministic given its settings: running them again would repeat it
        for key in ("best_value", "best_epoch", "validations", "test", "config", "seconds"):
            trial.set_user_attr(key, twin.user_attrs.get(key))
        trial.set_user_attr("same_as", twin.number)
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        return twin.value
    spec = sweep.early_terminate or {}
    pruning = OptunaPruning(trial, sweep.metric, sweep.direction == "maximize", bool(spec.get("strict")), sweep.source)
    arguments = sweep.fit_arguments(params, workdir) + [f"--trainer.default_root_dir={run_dir}"]
    last = sorted(run_dir.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    if last:  # the retry of a trial whose process was killed continues its run
        arguments.append(f"--ckpt_path={last[-1]}")
    started = time.perf_counter()
    try:
        cli = build_cli(arguments, extra_callbacks=[pruning])
    except SweepConfigError:
        raise
    except (Exception, SystemExit) as error:
        raise TrialError(f"trial {trial.number} ({params}) failed: {type(error).__name__}: {error}") from error
    run = Path(cli.trainer.loggers[0].log_dir)
    with (run / "metrics.csv").open(newline="") as handle:
        history = [(int(row["epoch"]), float(row[sweep.metric])) for row in csv.DictReader(handle)
                   if row.get(sweep.metric)]
    if not history:
        raise TrialError(f"trial {trial.number}: {run / 'metrics.csv'} holds no {sweep.metric}")
    epoch, best = (max if sweep.direction == "maximize" else min)(history, key=lambda item: item[1])
    trial.set_user_attr("seconds", time.perf_counter() - started)
    trial.set_user_attr("best_value", best)
    trial.set_user_attr("best_epoch", epoch)
    trial.set_user_attr("validations", len(history))
    trial.set_user_attr("config", str(run / "config.yaml"))
    trial.set_user_attr("test", {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")})
    if pruning.pruned:
        raise optuna.TrialPruned()
    return best


def retry_killed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queues a trial whose process died again, with its parameters and run folder (so it resumes)."""
    attrs = {key: trial.user_attrs[key] for key in ("run_dir",) if key in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number}, skip_if_exists=False)


def _reclaim_killed(study: optuna.Study) -> None:
    """Marks running trials of dead processes on this machine failed, and queues them again."""
    for trial in study.get_trials(False, states=(TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if host == socket.gethostname() and pid is not None and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)
            retry_killed(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_outputs(sweep: Sweep, study: optuna.Study, output: Path) -> None:
    """``trials.md`` (every trial) and ``best_config.yaml`` (the best finished trial's full config)."""
    trials = study.get_trials(False)
    maximize = sweep.direction == "maximize"
    scored = [t for t in trials if t.state in FINISHED and t.user_attrs.get("best_value") is not None]
    best = (max if maximize else min)(scored, key=lambda t: t.user_attrs["best_value"]) if scored else None
    cutoff = "@" + sweep.metric.rsplit("@", 1)[-1] if "@" in sweep.metric else ""
    tests = sorted({k for t in trials for k in t.user_attrs.get("test") or {} if k.endswith(cutoff)
                    and not k.startswith("test/hit")})
    header = ["trial", *[name.rsplit(".", 1)[-1] for name in sweep.space], f"best {sweep.metric}", "epoch",
              "validations", "state", *tests, "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        a = t.user_attrs
        if a.get("surplus"):
            continue
        value = "" if a.get("best_value") is None else f"{a['best_value']:.4f}" + (" (best)" if t is best else "")
        state = t.state.name.lower() + (f" (same as {a['same_as']})" if "same_as" in a else "")
        row = [str(t.number), *[_cell((a.get("params") or t.params).get(n, "")) for n in sweep.space], value,
               str(a.get("best_epoch", "")), str(a.get("validations", "")), state,
               *[f"{a['test'][k]:.4f}" if k in (a.get("test") or {}) else "" for k in tests],
               f"{a.get('seconds', 0.0) / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    _write(output / "trials.md", "\n".join(lines) + "\n")
    if best is not None and Path(best.user_attrs["config"]).is_file():
        _write(output / "best_config.yaml", f"# best trial {best.number} of sweep {sweep.name}: {sweep.metric} = "
               f"{best.user_attrs['best_value']:.6f}\n" + Path(best.user_attrs["config"]).read_text())


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write(path: Path, text: str) -> None:
    """Replaces ``path`` at once, so concurrent workers never leave half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def open_study(sweep: Sweep, output: Path, storage_url: str | None) -> optuna.Study:
    output.mkdir(parents=True, exist_ok=True)
    if storage_url:
        storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=180,
                                             failed_trial_callback=retry_killed)
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
    while n_trials is None or done < n_trials:
        taken = len(study.get_trials(False, states=(*FINISHED, TrialState.RUNNING)))
        if max_trials is not None and taken >= max_trials:
            break
        if sweep.method == "grid" and isinstance(study.sampler, optuna.samplers.GridSampler) \
                and study.sampler.is_exhausted(study):
            break
        study.optimize(lambda trial: run_trial(sweep, trial, workdir, output, max_trials), n_trials=1, catch=(TrialError,),
                       callbacks=[lambda study, _: write_outputs(sweep, study, output)])
        done += 1
    return study


def main(argv: Sequence[str] | None = None) -> None:
    """``lit_mmrec sweep SWEEP.yaml [--n-trials N] [--max-trials T] [--output DIR] [--storage URL]``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file", type=Path, help="a W&B sweep YAML (e.g. sweeps/dasrec_tiktok_bayes.yaml)")
    parser.add_argument("--n-trials", type=int, default=None, help="trials this process runs (default: no limit)")
    parser.add_argument("--max-trials", type=int, default=None,
                        help="stop once the study holds this many finished or running trials, over all workers")
    parser.add_argument("--output", type=Path, default=None,
                        help="sweep folder (default: $LIT_MMREC_OUTPUT or ~/lit_mmrec_runs, then sweeps/<name>)")
    parser.add_argument("--storage", default=None,
                        help="Optuna RDB URL shared by workers (default: a journal file in --output)")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(),
                        help="folder that relative --config paths in the command are resolved against")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampler (give each worker its own; default: fresh entropy)")
    parser.add_argument("--startup-trials", type=int, default=10,
                        help="random trials before TPE models the results (bayes; Optuna's default)")
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
