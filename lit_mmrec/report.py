"""``lit_mmrec report``: a study file's runs, trained where missing, collected into results tables and plots.

A study file (``studies/*.yaml``) names one dataset's models, each an experiment config plus overrides, and
the seeds every model runs at::

    name: tiktok                       # the results folder: <output>/<name>
    title: TikTok (image + audio)
    seeds: [2024, 2025, 2026]
    reference: LightGCN                # paired comparisons are against this model
    models:
      LightGCN: {config: [../configs/experiment/lightgcn_tiktok.yaml]}
      DiffCL: {config: [../configs/experiment/diffcl_tiktok.yaml], args: [--model.init_args.lambda_cl=0.2]}
    vary:                              # optional: one parameter of one model, for a sensitivity curve
      model: DiffCL
      parameter: model.init_args.noise_scale
      values: [0.05, 0.1, 0.3]

Config paths are relative to the study file. Each (model, seed) is one ``lit_mmrec fit`` in its own process
(so that its peak memory is its own) in ``<output>/runs/<model>/seed-<seed>``; a finished run (its
``metrics.csv`` holds the test metrics) is skipped, an interrupted one resumes from its ``last.ckpt``.
``--jobs N`` trains N runs at a time (their seconds per epoch are then measured on a shared machine).

Written to ``<output>``: ``results.md`` and ``results.csv`` (per model: mean and sample standard deviation
over seeds of validation metrics at the best epoch and of test metrics of the best checkpoint, Recall / NDCG /
Precision at each cut-off, best epoch, seconds per training epoch, peak memory), ``pairs.md`` and
``pairs.csv`` (each model against the reference at ``pair_k``, validation and test: per seed, the paired
difference over users with its standard error and p-value, :mod:`lit_mmrec.metrics.significance`; pooled,
the same test on each user's metric averaged over the seeds), ``curves.png`` (validation ``pair_k`` recall
per epoch, mean over seeds) and, with ``vary``, ``sensitivity.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

import torch
import yaml

from lit_mmrec.metrics.significance import paired_comparison

METRICS = ("recall", "ndcg", "precision")


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Model:
    """One row of the results table: a label, its configs and overrides, and the varied value, if any."""

    label: str
    configs: tuple[Path, ...]
    args: tuple[str, ...] = ()
    varied: float | str | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")


@dataclass
class Study:
    """A parsed study file."""

    path: Path
    name: str
    title: str
    seeds: list[int]
    reference: str
    models: list[Model]
    ks: list[int] = field(default_factory=lambda: [10, 20])
    pair_k: int = 20
    vary: dict | None = None

    @classmethod
    def load(cls, path: Path) -> Study:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise StudyError(f"study file {path} cannot be read as YAML: {error}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
            raise StudyError(f"{path}: needs `models:`, a mapping of labels to {{config: [...], args: [...]}}")
        seeds = raw.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) for seed in seeds):
            raise StudyError(f"{path}: `seeds` must be a non-empty list of integers, got {seeds!r}")
        models = []
        for label, spec in raw["models"].items():
            configs = spec.get("config") if isinstance(spec, dict) else None
            configs = [configs] if isinstance(configs, str) else configs
            if not configs:
                raise StudyError(f"{path}: models.{label}.config must name at least one experiment config")
            resolved = tuple((path.parent / config).resolve() for config in configs)
            missing = [str(config) for config in resolved if not config.is_file()]
            if missing:
                raise StudyError(f"{path}: models.{label}.config: {missing[0]} does not exist")
            models.append(Model(str(label), resolved, tuple(str(a) for a in spec.get("args") or ())))
        vary = raw.get("vary")
        if vary is not None:
            base = next((m for m in models if m.label == vary.get("model")), None)
            if base is None or not vary.get("parameter") or not vary.get("values"):
                raise StudyError(f"{path}: vary needs `model` (one of {[m.label for m in models]}), `parameter` "
                                 f"(a dotted option) and `values`")
            short = str(vary["parameter"]).rsplit(".", 1)[-1]
            models += [Model(f"{base.label} {short}={value}", base.configs,
                             (*base.args, f"--{vary['parameter']}={value}"), value) for value in vary["values"]]
        reference = raw.get("reference", models[0].label)
        if reference not in [m.label for m in models]:
            raise StudyError(f"{path}: reference {reference!r} is not one of the models {[m.label for m in models]}")
        return cls(path, str(raw.get("name", path.stem)), str(raw.get("title", raw.get("name", path.stem))),
                   seeds, reference, models, list(raw.get("ks", [10, 20])), int(raw.get("pair_k", 20)), vary)


def run_folder(output: Path, model: Model, seed: int) -> Path:
    return output / "runs" / model.slug / f"seed-{seed}" / "lightning_logs" / "version_0"


def read_metrics(run: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv``, each a mapping of the columns it holds to numbers."""
    with (run / "metrics.csv").open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def is_finished(run: Path, k: int = 20) -> bool:
    return (run / "metrics.csv").is_file() and any(f"test/recall@{k}" in row for row in read_metrics(run))


def ensure_run(output: Path, model: Model, seed: int, pair_k: int = 20) -> Path:
    """Trains (or resumes) the run of ``model`` at ``seed`` unless it finished; returns its folder."""
    run = run_folder(output, model, seed)
    if is_finished(run, pair_k):
        return run
    last, seed_folder = run / "checkpoints" / "last.ckpt", run.parent.parent
    if not last.is_file():  # nothing to resume: start the folder afresh, so that the run is version_0
        shutil.rmtree(seed_folder, ignore_errors=True)
    command = [sys.executable, "-m", "lit_mmrec.cli", "fit", *[a for c in model.configs for a in ("--config", str(c))],
               *model.args, f"--seed_everything={seed}", f"--trainer.default_root_dir={seed_folder}",
               "--trainer.enable_progress_bar=false", *([f"--ckpt_path={last}"] if last.is_file() else [])]
    print(f"report: training {model.label} at seed {seed} ({'resumed' if last.is_file() else 'new'}) in {run}")
    if subprocess.run(command).returncode != 0 or not is_finished(run, pair_k):
        raise StudyError(f"{model.label} at seed {seed} did not finish; its log is in {run} (rerun the report "
                         f"to resume it)")
    return run


@dataclass
class RunResult:
    """What the tables take from one finished run."""

    values: dict[str, float]  # val/... at the best epoch, test/..., best_epoch, seconds_per_epoch, peak_memory_mb
    curve: dict[int, float]  # epoch -> validation recall@pair_k
    best_checkpoint: Path
    config: Path


def collect(run: Path, ks: list[int], pair_k: int) -> RunResult:
    rows = read_metrics(run)
    validation = {int(row["epoch"]): row for row in rows if f"val/recall@{pair_k}" in row}
    checkpoints = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if not validation or not checkpoints:
        raise StudyError(f"{run}: no validation metrics or no best checkpoint; delete the folder to rerun it")
    best_epoch = int(next(row["val/best_epoch"] for row in reversed(rows) if "val/best_epoch" in row))
    test = next(row for row in reversed(rows) if f"test/recall@{pair_k}" in row)
    values: dict[str, float] = {"best_epoch": float(best_epoch)}
    for k in ks:
        for metric in METRICS:
            values[f"val/{metric}@{k}"] = validation[best_epoch][f"val/{metric}@{k}"]
            values[f"test/{metric}@{k}"] = test[f"test/{metric}@{k}"]
    seconds = [row["train/epoch_seconds"] for row in rows if "train/epoch_seconds" in row]
    memory = [row["train/peak_memory_mb"] for row in rows if "train/peak_memory_mb" in row]
    values["seconds_per_epoch"] = mean(seconds) if seconds else math.nan
    values["peak_memory_mb"] = max(memory) if memory else math.nan
    curve = {epoch: row[f"val/recall@{pair_k}"] for epoch, row in sorted(validation.items())}
    return RunResult(values, curve, checkpoints[-1], run / "config.yaml")


def per_user(result: RunResult, split: str, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics of a run's best checkpoint on ``split``, cached beside the checkpoint."""
    cache = result.best_checkpoint.with_name(f"{result.best_checkpoint.stem}.{split}@{k}.pt")
    if not cache.is_file():
        from lit_mmrec.compare import per_user_metrics

        torch.save(per_user_metrics(result.config, result.best_checkpoint, split, k), cache)
    return torch.load(cache, weights_only=True)


def _spread(values: list[float]) -> float:
    """The sample standard deviation over seeds; 0 for a single seed."""
    return stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float], digits: int = 4) -> str:
    if any(math.isnan(v) for v in values):
        return ""
    spread = f" +- {_spread(values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean(values):.{digits}f}{spread}"


def write_results(study: Study, results: dict[str, list[RunResult]], output: Path) -> None:
    columns = [f"{split}/{metric}@{k}" for split in ("val", "test") for k in study.ks for metric in METRICS]
    extra = ["best_epoch", "seconds_per_epoch", "peak_memory_mb"]
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "seeds", *[f"{c}_{s}" for c in columns + extra for s in ("mean", "std")]])
        for label, runs in results.items():
            cells = []
            for column in columns + extra:
                values = [run.values[column] for run in runs]
                cells += [mean(values), _spread(values)]
            writer.writerow([label, len(runs), *cells])
    header = ["model", "seeds", *columns, "best epoch", "s / epoch", "peak MiB"]
    lines = [f"## {study.title}", "", f"Mean +- sample std over seeds {', '.join(map(str, study.seeds))}; "
             f"validation at the best epoch, test of the best-validation checkpoint. `lit_mmrec report --study "
             f"{study.path.name}`.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in results.items():
        row = [label, str(len(runs)), *[_cell([run.values[c] for run in runs]) for c in columns],
               _cell([run.values["best_epoch"] for run in runs], 1),
               _cell([run.values["seconds_per_epoch"] for run in runs], 1),
               _cell([run.values["peak_memory_mb"] for run in runs], 0)]
        lines.append("| " + " | ".join(row) + " |")
    (output / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pairs(study: Study, results: dict[str, list[RunResult]], output: Path) -> None:
    """Every model against the reference, on both splits, per seed and pooled over seeds."""
    k = study.pair_k
    reference = {split: [per_user(run, split, k) for run in results[study.reference]] for split in ("val", "test")}
    rows = []
    for label, runs in results.items():
        if label == study.reference:
            continue
        for split in ("val", "test"):
            a, b = reference[split], [per_user(run, split, k) for run in runs]
            for metric in METRICS:
                for seed, left, right in zip(study.seeds, a, b):
                    if not torch.equal(left["users"], right["users"]):
                        raise StudyError(f"{label} and {study.reference} at seed {seed} evaluated different users")
                    rows.append((label, split, metric, str(seed), paired_comparison(left[metric], right[metric])))
                pooled_a = torch.stack([r[metric].double() for r in a]).mean(0)
                pooled_b = torch.stack([r[metric].double() for r in b]).mean(0)
                rows.append((label, split, metric, "pooled", paired_comparison(pooled_a, pooled_b)))
    with (output / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "reference", "split", "metric", "seed", "users", "reference_mean", "model_mean",
                         "difference", "standard_error", "p_value"])
        for label, split, metric, seed, r in rows:
            writer.writerow([label, study.reference, split, f"{metric}@{k}", seed, r.n_users, r.mean_a, r.mean_b,
                             r.difference, r.standard_error, r.p_value])
    header = ["model - " + study.reference, "split", "metric", *[f"seed {s}" for s in study.seeds], "pooled"]
    lines = [f"Paired differences over users at @{k} (standard error, two-sided p); pooled: each user's metric "
             f"averaged over the seeds.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells: dict[tuple, list[str]] = {}
    for label, split, metric, _, r in rows:
        cells.setdefault((label, split, metric), []).append(f"{r.difference:+.4f} ({r.standard_error:.4f}, "
                                                            f"p {r.p_value:.3f})")
    for (label, split, metric), values in cells.items():
        lines.append("| " + " | ".join([label, split, f"{metric}@{k}", *values]) + " |")
    (output / "pairs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def base_value(config: Path, parameter: str) -> float | None:
    """The number a run's saved ``config.yaml`` holds at the dotted ``parameter``, or ``None``."""
    try:
        node = yaml.safe_load(config.read_text())
        for key in parameter.split("."):
            node = node[key]
        return float(node)
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def write_plots(study: Study, results: dict[str, list[RunResult]], output: Path) -> list[Path]:
    """``curves.png`` and, with ``vary``, ``sensitivity.png``; none (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed (pip install matplotlib); no plots written")
        return []
    k, written = study.pair_k, []
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, runs in results.items():
        epochs = sorted(set.intersection(*[set(run.curve) for run in runs]))
        axes.plot(epochs, [mean(run.curve[e] for run in runs) for e in epochs], label=label)
    axes.set(xlabel="epoch", ylabel=f"validation Recall@{k} (mean over seeds)", title=study.title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output / "curves.png", dpi=120)
    written.append(output / "curves.png")
    plt.close(figure)
    if study.vary:
        points = {float(m.varied): m.label for m in study.models if m.varied is not None}
        base = base_value(results[study.vary["model"]][0].config, study.vary["parameter"])
        if base is not None:  # the varied model's own setting, read from its saved config
            points.setdefault(base, study.vary["model"])
        xs = sorted(points)
        figure, axes = plt.subplots(figsize=(6, 4))
        for split in ("val", "test"):
            values = [[run.values[f"{split}/recall@{k}"] for run in results[points[x]]] for x in xs]
            axes.errorbar(xs, [mean(v) for v in values], yerr=[_spread(v) for v in values], marker="o", capsize=3,
                          label=split)
        axes.set(xlabel=study.vary["parameter"], ylabel=f"Recall@{k} (mean +- std over seeds)", title=study.title)
        axes.legend()
        figure.tight_layout()
        figure.savefig(output / "sensitivity.png", dpi=120)
        written.append(output / "sensitivity.png")
        plt.close(figure)
    return written


def main(argv: list[str] | None = None) -> None:
    """``lit_mmrec report --study FILE [--output DIR] [--no-train] [--jobs N]``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a study file (e.g. studies/tiktok.yaml)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results folder (default: $LIT_MMREC_OUTPUT or ~/lit_mmrec_runs, then studies/<name>)")
    parser.add_argument("--no-train", action="store_true", help="collect finished runs only; train nothing")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (their seconds per epoch then share the machine)")
    options = parser.parse_args(argv)
    try:
        study = Study.load(options.study.expanduser().resolve())
        root = Path(os.environ.get("LIT_MMREC_OUTPUT", Path.home() / "lit_mmrec_runs"))
        output = (options.output or root / "studies" / study.name).expanduser().resolve()
        output.mkdir(parents=True, exist_ok=True)
        pairs = [(model, seed) for model in study.models for seed in study.seeds]
        if not options.no_train:
            with ThreadPoolExecutor(max(1, options.jobs)) as pool:  # each run is its own process
                list(pool.map(lambda pair: ensure_run(output, *pair, study.pair_k), pairs))
        unfinished = [(m, s) for m, s in pairs if not is_finished(run_folder(output, m, s), study.pair_k)]
        if unfinished:
            model, seed = unfinished[0]
            raise StudyError(f"{model.label} at seed {seed} has not finished ({run_folder(output, model, seed)}); "
                             f"run without --no-train")
        results = {model.label: [collect(run_folder(output, model, seed), study.ks, study.pair_k)
                                 for seed in study.seeds] for model in study.models}
        write_results(study, results, output)
        write_pairs(study, results, output)
        write_plots(study, results, output)
    except StudyError as error:
        sys.exit(f"lit_mmrec report: {error}")
    print((output / "results.md").read_text() + "\n" + (output / "pairs.md").read_text())
    print(f"written to {output}")
