"""Local hyper-parameter sweeps from the same YAML files that W&B agents run (``lit_mmrec sweep``).

``lit_mmrec sweep sweeps/dasrec_tiktok_bayes.yaml --count 8 --output runs/sweep`` runs trials one after
another in this process, each a full ``lit_mmrec fit`` built from the file's ``command`` with the
trial's parameters in place of ``${args}``. It follows W&B's sweep semantics so that a file behaves
the same locally and with ``wandb agent``:

* ``method``: ``grid`` (every combination, in file order), ``random`` (independent draws) or
  ``bayes`` (a Gaussian process on the unit cube of the parameters, Matern-5/2 kernel, expected
  improvement over random candidates; the first two trials are random draws);
* ``parameters``: ``value``, ``values`` (optionally ``probabilities``), ``min``/``max`` and the
  distributions ``constant``, ``categorical``, ``int_uniform``, ``uniform``, ``q_uniform``,
  ``log_uniform`` (bounds are exponents), ``log_uniform_values``, ``q_log_uniform_values``, ``normal``,
  ``q_normal``, ``log_normal`` and ``q_log_normal``;
* ``metric``: the logged metric to optimise (``val/recall@20``) and its ``goal``; a trial's value is
  the best one it reached, i.e. the value of the checkpoint that validation picks;
* ``early_terminate: {type: hyperband, min_iter | max_iter + s, eta, strict}``: after each
  validation, a trial whose best value so far is outside the top ``1/eta`` of all trials' values at
  the last band it passed is stopped (W&B's hyperband rule, ``strict`` compares the value at the band).

Every finished trial is appended to ``<output>/trials.jsonl`` (so a rerun of the same command resumes
where the sweep stopped and feeds the finished trials to the search), the table of all trials is
rewritten to ``<output>/trials.md``, and the complete config of the best trial to
``<output>/best_config.yaml``, which ``lit_mmrec fit --config`` takes as it is. Relative ``--config``
paths in the command are resolved against ``--workdir`` (default: the current directory), which is
where ``wandb agent`` would run the command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.trainer.states import TrainerFn
from scipy import stats

log = logging.getLogger(__name__)

METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal",
)
_EDGE = 1e-6  # keeps unit coordinates off 0 and 1 for the normal quantile


class SweepConfigError(ValueError):
    """A sweep file that cannot be run; the message names the file, the field and the fix."""


# ----------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class Parameter:
    """One swept parameter and the map between its values and a coordinate ``u`` in [0, 1].

    Random search draws ``u`` uniformly (so a ``normal`` parameter comes out normal, through the
    quantile function); Bayesian search models the metric as a function of these coordinates.
    """

    name: str
    distribution: str
    values: tuple = ()
    probabilities: tuple[float, ...] | None = None
    low: float = 0.0
    high: float = 1.0
    mu: float = 0.0
    sigma: float = 1.0
    q: float | None = None

    def _category_edges(self) -> np.ndarray:
        """[0, p_1, p_1 + p_2, ..., 1]: each category's share of [0, 1] (uniform unless ``probabilities``)."""
        n = len(self.values)
        return np.concatenate([[0.0], np.cumsum(self.probabilities or [1.0 / n] * n)])

    def _quantise(self, value: float) -> float:
        return value if self.q is None else round(value / self.q) * self.q

    def from_unit(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        kind = self.distribution
        if kind == "constant":
            return self.values[0]
        if kind == "categorical":
            upper = self._category_edges()[1:]
            return self.values[min(int(np.searchsorted(upper, u, side="right")), len(self.values) - 1)]
        if kind == "int_uniform":
            span = int(self.high) - int(self.low) + 1
            return int(self.low) + min(int(u * span), span - 1)
        if kind in ("uniform", "q_uniform"):
            return self._quantise(self.low + u * (self.high - self.low))
        if kind == "log_uniform":
            return math.exp(self.low + u * (self.high - self.low))
        if kind in ("log_uniform_values", "q_log_uniform_values"):
            return self._quantise(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        z = float(stats.norm.ppf(min(max(u, _EDGE), 1.0 - _EDGE)))
        if kind in ("normal", "q_normal"):
            return self._quantise(self.mu + self.sigma * z)
        return self._quantise(math.exp(self.mu + self.sigma * z))  # log_normal, q_log_normal

    def to_unit(self, value: Any) -> float:
        kind = self.distribution
        if kind == "constant":
            return 0.5
        if kind == "categorical":
            index, edges = self.values.index(value), self._category_edges()
            return float((edges[index] + edges[index + 1]) / 2)
        if kind == "int_uniform":
            span = int(self.high) - int(self.low) + 1
            return (int(value) - int(self.low) + 0.5) / span
        if kind in ("uniform", "q_uniform"):
            return (float(value) - self.low) / (self.high - self.low)
        if kind == "log_uniform":
            return (math.log(value) - self.low) / (self.high - self.low)
        if kind in ("log_uniform_values", "q_log_uniform_values"):
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        z = (float(value) - self.mu) / self.sigma if kind in ("normal", "q_normal") else (math.log(value) - self.mu) / self.sigma
        return float(stats.norm.cdf(z))

    def grid(self) -> list:
        """The finite list of values a grid search enumerates."""
        if self.distribution in ("constant", "categorical"):
            return list(self.values)
        if self.distribution == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.distribution == "q_uniform":
            steps = int(math.floor((self.high - self.low) / self.q + 1e-9))
            return [self._quantise(self.low + step * self.q) for step in range(steps + 1)]
        raise SweepConfigError(
            f"parameter {self.name!r}: a grid search needs a finite set of values, but its distribution is "
            f"{self.distribution!r}; give it `values: [...]`, an int_uniform or a q_uniform range"
        )


def parse_parameter(name: str, spec: Any, source: str) -> Parameter:
    where = f"{source}: parameters.{name}"
    if not isinstance(spec, dict):
        raise SweepConfigError(f"{where} must be a mapping such as `{{values: [...]}}` or `{{min: 0, max: 1}}`")
    if "parameters" in spec:
        raise SweepConfigError(f"{where}: nested parameters are not supported locally; flatten them to "
                               f"dotted names such as `model.init_args.lambda_cl`")
    distribution = spec.get("distribution")
    if distribution is None:  # W&B's inference
        if "value" in spec:
            distribution = "constant"
        elif "values" in spec:
            distribution = "categorical"
        elif "min" in spec and "max" in spec:
            distribution = "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else "uniform"
        else:
            raise SweepConfigError(f"{where} needs `value`, `values`, `min`/`max` or a `distribution`")
    if distribution not in DISTRIBUTIONS:
        raise SweepConfigError(f"{where}.distribution {distribution!r} is not supported locally; use one of "
                               f"{', '.join(DISTRIBUTIONS)}")
    if distribution == "constant":
        if "value" not in spec:
            raise SweepConfigError(f"{where}: a constant needs `value`")
        return Parameter(name, distribution, values=(spec["value"],))
    if distribution == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where}.values must be a non-empty list")
        probabilities = spec.get("probabilities")
        if probabilities is not None and (len(probabilities) != len(values) or abs(sum(probabilities) - 1) > 1e-6):
            raise SweepConfigError(f"{where}.probabilities must have one entry per value and sum to 1")
        return Parameter(name, distribution, values=tuple(values),
                         probabilities=tuple(probabilities) if probabilities is not None else None)
    q = spec.get("q", 1.0 if distribution.startswith("q_") else None)
    if distribution in ("normal", "q_normal", "log_normal", "q_log_normal"):
        return Parameter(name, distribution, mu=float(spec.get("mu", 0.0)), sigma=float(spec.get("sigma", 1.0)), q=q)
    if "min" not in spec or "max" not in spec:
        raise SweepConfigError(f"{where}: distribution {distribution!r} needs `min` and `max`")
    low, high = spec["min"], spec["max"]
    if not low < high:
        raise SweepConfigError(f"{where}: min ({low}) must be below max ({high})")
    if distribution in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
        raise SweepConfigError(f"{where}: {distribution} needs min > 0 (the bounds are values, not exponents)")
    return Parameter(name, distribution, low=float(low), high=float(high), q=q)


# ----------------------------------------------------------------------------------------------
# the sweep file


@dataclass(frozen=True)
class EarlyTermination:
    """W&B's hyperband rule; ``bands`` are the numbers of validations at which trials are compared."""

    bands: tuple[int, ...]
    eta: float
    strict: bool = False

    @classmethod
    def from_spec(cls, spec: dict, source: str) -> EarlyTermination:
        if spec.get("type") != "hyperband":
            raise SweepConfigError(f"{source}: early_terminate.type {spec.get('type')!r} is not supported; use hyperband")
        eta = float(spec.get("eta", 3))
        if eta <= 1:
            raise SweepConfigError(f"{source}: early_terminate.eta must be above 1, got {eta}")
        if "min_iter" in spec:
            bands = tuple(int(spec["min_iter"] * eta**k) for k in range(32))
        elif "max_iter" in spec:
            band, bands = float(spec["max_iter"]), []
            for _ in range(int(spec.get("s", 0))):
                band /= eta
                if band < 1:
                    break
                bands.append(int(band))
            bands = tuple(sorted(bands))
        else:
            raise SweepConfigError(f"{source}: early_terminate needs `min_iter`, or `max_iter` with `s`")
        if not bands or bands[0] < 1:
            raise SweepConfigError(f"{source}: early_terminate gives no band of at least one validation; "
                                   f"raise min_iter (or max_iter/s)")
        return cls(bands, eta, bool(spec.get("strict", False)))

    def should_stop(self, history: Sequence[float], all_histories: Sequence[Sequence[float]], maximize: bool) -> bool:
        """Whether the trial with metric ``history`` stops, given every trial's history (its own included)."""
        sign = -1.0 if maximize else 1.0  # compare as losses: lower is better
        passed = [band for band in self.bands if band <= len(history)]
        if not passed:
            return False
        band = passed[-1]
        at_band = sorted(sign * h[band - 1] for h in all_histories if len(h) >= band)
        threshold = at_band[int(len(at_band) / self.eta)]
        value = sign * history[band - 1] if self.strict else min(sign * v for v in history)
        return value > threshold


@dataclass(frozen=True)
class SweepSpec:
    """A parsed W&B sweep file."""

    source: str
    name: str
    method: str
    metric: str
    maximize: bool
    parameters: tuple[Parameter, ...]
    command: tuple[str, ...]
    early_termination: EarlyTermination | None = None

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepConfigError(f"sweep file {path} does not exist") from None
        except yaml.YAMLError as error:
            raise SweepConfigError(f"sweep file {path} is not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise SweepConfigError(f"sweep file {path} must be a mapping with method, metric, parameters")
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<sweep>") -> SweepSpec:
        method = raw.get("method")
        if method not in METHODS:
            raise SweepConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
        metric = raw.get("metric") or {}
        if "name" not in metric:
            raise SweepConfigError(f"{source}: metric.name is required (e.g. val/recall@20)")
        goal = metric.get("goal", "minimize")
        if goal not in ("maximize", "minimize"):
            raise SweepConfigError(f"{source}: metric.goal must be maximize or minimize, got {goal!r}")
        parameters = raw.get("parameters") or {}
        if not isinstance(parameters, dict) or not parameters:
            raise SweepConfigError(f"{source}: parameters must map at least one parameter name to its values")
        command = raw.get("command") or ["${program}", "${args}"]
        if "${args}" not in command:
            raise SweepConfigError(f"{source}: command must contain ${{args}}, where the trial's parameters go")
        early = raw.get("early_terminate")
        return cls(
            source=source,
            name=str(raw.get("name", Path(source).stem)),
            method=method,
            metric=str(metric["name"]),
            maximize=goal == "maximize",
            parameters=tuple(parse_parameter(name, spec, source) for name, spec in parameters.items()),
            command=tuple(str(part) for part in command),
            early_termination=EarlyTermination.from_spec(early, source) if early else None,
        )

    def grid_size(self) -> int:
        return math.prod(len(parameter.grid()) for parameter in self.parameters)

    def fit_arguments(self, params: dict[str, Any], workdir: Path) -> list[str]:
        """The ``lit_mmrec`` argument list of one trial: the command without the program, ``${args}``
        expanded to ``--name=value``, relative ``--config`` files resolved against ``workdir``."""
        parts = [part for part in self.command if part not in ("${env}", "${interpreter}")]
        if parts and parts[0] in ("lit_mmrec", "${program}"):
            parts = parts[1:]
        if not parts or parts[0] != "fit":
            raise SweepConfigError(f"{self.source}: command must run `lit_mmrec fit ...`, got {list(self.command)}")
        arguments: list[str] = []
        for index, part in enumerate(parts):
            if part == "${args}":
                arguments += [f"--{name}={_format(value)}" for name, value in params.items()]
            elif part.startswith("${"):
                raise SweepConfigError(f"{self.source}: command macro {part} is not supported locally; "
                                       f"use ${{args}}")
            elif index > 0 and parts[index - 1] == "--config" and not Path(part).is_absolute():
                resolved = (workdir / part).resolve()
                if not resolved.is_file():
                    raise SweepConfigError(f"{self.source}: command config {part} is not a file under {workdir}; "
                                           f"run from the repository root or pass --workdir")
                arguments.append(str(resolved))
            else:
                arguments.append(part)
        return arguments


def _format(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


# ----------------------------------------------------------------------------------------------
# search


def _matern52(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    distance = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0)) / lengthscale
    root5 = math.sqrt(5.0) * distance
    return (1.0 + root5 + 5.0 / 3.0 * distance**2) * np.exp(-root5)


def expected_improvement_proposal(
    observed: np.ndarray, values: np.ndarray, rng: np.random.Generator, n_candidates: int = 4096,
    noise: float = 1e-4, lengthscales: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    accept: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """The unit-cube point with the largest expected improvement under a GP fitted to (``observed``,
    ``values``); values are maximised. The lengthscale is the one of ``lengthscales`` with the
    highest marginal likelihood; candidates are uniform draws plus perturbations of the best point.
    With ``accept``, the best candidate it accepts (the best overall if it accepts none)."""
    mean, scale = values.mean(), values.std() or 1.0
    y = (values - mean) / scale
    best_fit = None
    for lengthscale in lengthscales:
        kernel = _matern52(observed, observed, lengthscale) + noise * np.eye(len(observed))
        chol = np.linalg.cholesky(kernel)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
        log_likelihood = -0.5 * y @ alpha - np.log(np.diag(chol)).sum()
        if best_fit is None or log_likelihood > best_fit[0]:
            best_fit = (log_likelihood, lengthscale, chol, alpha)
    _, lengthscale, chol, alpha = best_fit
    dim = observed.shape[1]
    incumbent = observed[np.argmax(y)]
    candidates = np.concatenate([
        rng.random((n_candidates, dim)),
        np.clip(incumbent + 0.05 * rng.standard_normal((n_candidates // 4, dim)), 0.0, 1.0),
    ])
    cross = _matern52(candidates, observed, lengthscale)
    mu = cross @ alpha
    solved = np.linalg.solve(chol, cross.T)
    sigma = np.sqrt(np.maximum(1.0 + noise - (solved**2).sum(0), 1e-12))
    improvement = mu - y.max()
    z = improvement / sigma
    expected = improvement * stats.norm.cdf(z) + sigma * stats.norm.pdf(z)
    order = np.argsort(-expected, kind="stable")
    if accept is not None:
        for position in order:
            if accept(candidates[position]):
                return candidates[position]
    return candidates[order[0]]


def propose(spec: SweepSpec, index: int, finished: Sequence[TrialRecord], seed: int) -> dict[str, Any] | None:
    """Parameters of trial ``index`` (0-based); ``None`` when a grid is exhausted."""
    if spec.method == "grid":
        combinations = itertools.product(*(parameter.grid() for parameter in spec.parameters))
        combination = next(itertools.islice(combinations, index, None), None)
        if combination is None:
            return None
        return {parameter.name: value for parameter, value in zip(spec.parameters, combination)}
    rng = np.random.default_rng([seed, index])  # trial i's draws do not depend on how the sweep got there

    def settings(unit: np.ndarray) -> dict[str, Any]:
        return {parameter.name: _plain(parameter.from_unit(u)) for parameter, u in zip(spec.parameters, unit)}

    scored = [record for record in finished if record.value is not None]
    if spec.method == "bayes" and len(scored) >= 2:
        observed = np.array([[p.to_unit(record.params[p.name]) for p in spec.parameters] for record in scored])
        values = np.array([record.value for record in scored], dtype=np.float64)
        # a trial is deterministic given its settings, so a point already run (categorical and
        # quantised parameters map many unit points to one setting) would only repeat its result
        tried = {_settings_key(record.params) for record in finished}
        unit = expected_improvement_proposal(observed, values if spec.maximize else -values, rng,
                                             accept=lambda u: _settings_key(settings(u)) not in tried)
    else:
        unit = rng.random(len(spec.parameters))
    return settings(unit)


def _settings_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------
# running trials


@dataclass
class TrialRecord:
    """What the sweep keeps of one trial (one line of ``trials.jsonl``)."""

    index: int
    params: dict[str, Any]
    status: str = "running"  # finished | stopped (early termination) | failed
    value: float | None = None
    best_epoch: int | None = None
    history: list[float] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: str = ""
    error: str = ""


class TrialMonitor(L.Callback):
    """Feeds each validation's metric to the sweep and stops the trial when hyperband says so."""

    def __init__(self, record: TrialRecord, spec: SweepSpec, others: Sequence[TrialRecord]) -> None:
        self.record, self.spec, self.others = record, spec, others

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.spec.metric not in trainer.callback_metrics:
            raise SweepConfigError(f"{self.spec.source}: metric.name {self.spec.metric!r} is not logged; "
                                   f"logged metrics: {sorted(trainer.callback_metrics)}")
        value = float(trainer.callback_metrics[self.spec.metric])
        record = self.record
        record.history.append(value)
        better = record.value is None or (value > record.value if self.spec.maximize else value < record.value)
        if better:
            record.value, record.best_epoch = value, trainer.current_epoch
        rule = self.spec.early_termination
        if rule is not None and trainer.state.fn == TrainerFn.FITTING:
            histories = [other.history for other in self.others if other.history] + [record.history]
            if rule.should_stop(record.history, histories, self.spec.maximize):
                log.info("trial %d stopped by hyperband after %d validations", record.index, len(record.history))
                record.status = "stopped"
                trainer.should_stop = True


def run_trial(spec: SweepSpec, record: TrialRecord, others: Sequence[TrialRecord], workdir: Path) -> str:
    """Runs one trial through the real CLI (fit, then test of the best checkpoint); returns its
    complete config as YAML, as LightningCLI saves it."""
    from lightning.pytorch.cli import SaveConfigCallback

    from lit_mmrec.lightning_cli import build_cli

    arguments = spec.fit_arguments(record.params, workdir) + [f"--trainer.default_root_dir={record.run_dir}"]
    started = time.perf_counter()
    cli = build_cli(arguments, extra_callbacks=[TrialMonitor(record, spec, others)])
    record.seconds = time.perf_counter() - started
    if record.status == "running":
        record.status = "finished"
    record.test = {name: float(value) for name, value in cli.trainer.callback_metrics.items()
                   if name.startswith("test/")}
    saver = next(callback for callback in cli.trainer.callbacks if isinstance(callback, SaveConfigCallback))
    return saver.parser.dump(saver.config, skip_none=False)


def load_records(path: Path) -> list[TrialRecord]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(TrialRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                raise SweepConfigError(f"{path}, line {number}: not a trial record ({error}); "
                                       f"remove the line or start the sweep in a new --output") from None
    return records


def trial_table(spec: SweepSpec, records: Sequence[TrialRecord]) -> str:
    """A Markdown table of every trial: parameters, best metric (and epoch), test metrics, time."""
    cutoff = "@" + spec.metric.rsplit("@", 1)[-1] if "@" in spec.metric else ""
    test_names = sorted({name for record in records for name in record.test
                         if name.endswith(cutoff) and not name.startswith("test/hit")})
    header = ["trial", *[p.name.rsplit(".", 1)[-1] for p in spec.parameters], f"best {spec.metric}", "epoch",
              "validations", "status", *test_names, "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = best_record(spec, records)
    for record in records:
        value = "" if record.value is None else f"{record.value:.4f}" + (" (best)" if record is best else "")
        row = [str(record.index), *[_cell(record.params.get(p.name, "")) for p in spec.parameters], value,
               "" if record.best_epoch is None else str(record.best_epoch), str(len(record.history)),
               record.status + (f": {record.error}" if record.error else ""),
               *[f"{record.test[name]:.4f}" if name in record.test else "" for name in test_names],
               f"{record.seconds / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_record(spec: SweepSpec, records: Sequence[TrialRecord]) -> TrialRecord | None:
    scored = [record for record in records if record.value is not None]
    if not scored:
        return None
    return (max if spec.maximize else min)(scored, key=lambda record: record.value)


def run_sweep(spec: SweepSpec, count: int, output: Path, workdir: Path, seed: int = 0) -> list[TrialRecord]:
    """Runs trials until ``count`` are recorded in ``output`` (earlier ones are reused) or a grid ends."""
    output.mkdir(parents=True, exist_ok=True)
    journal = output / "trials.jsonl"
    records = load_records(journal)
    while len(records) < count:
        index = len(records)
        params = propose(spec, index, records, seed)
        if params is None:
            log.info("grid exhausted after %d trials", index)
            break
        record = TrialRecord(index=index, params=params, run_dir=str(output / f"trial-{index:03d}"))
        log.info("trial %d of %d: %s", index + 1, count, params)
        try:
            config = run_trial(spec, record, records, workdir)
        except SweepConfigError:
            raise
        except (Exception, SystemExit) as error:  # a trial that crashes is recorded, the sweep goes on
            record.status, record.error = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:200]
            log.exception("trial %d failed", index)
            config = None
        records.append(record)
        with journal.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(record)) + "\n")
        if config is not None and best_record(spec, records) is record:
            (output / "best_config.yaml").write_text(
                f"# best trial {record.index} of sweep {spec.name}: {spec.metric} = {record.value:.6f}\n"
                + config, encoding="utf-8")
        (output / "trials.md").write_text(trial_table(spec, records), encoding="utf-8")
    if best_record(spec, records) is None:
        raise RuntimeError(f"no trial of {spec.source} produced {spec.metric}; see {output / 'trials.md'}")
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """``lit_mmrec sweep SWEEP.yaml [--count N] [--output DIR] [--workdir DIR] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file", type=Path, help="a W&B sweep YAML (e.g. sweeps/dasrec_tiktok_bayes.yaml)")
    parser.add_argument("--count", type=int, default=None,
                        help="total number of trials (default: the grid's size; required for random/bayes)")
    parser.add_argument("--output", type=Path, default=None,
                        help="sweep directory (default: $LIT_MMREC_OUTPUT or ~/lit_mmrec_runs, then sweeps/<name>)")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(),
                        help="directory that relative --config paths in the command are resolved against")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random and Bayesian proposals")
    options = parser.parse_args(argv)
    try:
        spec = SweepSpec.load(options.sweep_file.expanduser().resolve())
        count = options.count
        if count is None:
            if spec.method != "grid":
                raise SweepConfigError(f"{spec.source}: a {spec.method} sweep needs --count N")
            count = spec.grid_size()
        root = Path(os.environ.get("LIT_MMREC_OUTPUT", Path.home() / "lit_mmrec_runs"))
        output = (options.output or root / "sweeps" / spec.name).expanduser().resolve()
        records = run_sweep(spec, count, output, options.workdir.expanduser().resolve(), options.seed)
    except SweepConfigError as error:
        sys.exit(f"lit_mmrec sweep: {error}")
    print(trial_table(spec, records))
    print(f"best config: {output / 'best_config.yaml'}")
