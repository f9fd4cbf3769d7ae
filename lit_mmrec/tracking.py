"""Experiment tracking: the run folder's CSV log, which a resumed run continues, and a W&B logger whose
mode follows the environment, so runs never wait for a login."""

from __future__ import annotations

import csv
import netrc
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_mmrec.compat import wandb_logger_defaults, wandb_logger_resume

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_api_key_configured() -> bool:
    """True when W&B could log in without asking: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", os.path.join(os.path.expanduser("~"), ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: WandbMode = "auto") -> str:
    """The W&B mode a run uses, as W&B users expect.

    ``WANDB_MODE`` (or ``WANDB_DISABLED=true``) in the environment wins; then an explicit ``mode``;
    with ``auto``, ``online`` when an API key is configured and ``offline`` otherwise (the run is
    written under the save directory and can be uploaded later with ``wandb sync``).
    """
    from_env = os.environ.get("WANDB_MODE", "").strip().lower()
    if from_env:
        return {"dryrun": "offline", "run": "online"}.get(from_env, from_env)
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    if mode != "auto":
        return mode
    return "online" if wandb_api_key_configured() else "offline"


class TrackedWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with the mode resolved by :func:`resolve_wandb_mode`.

    Everything a model logs (each loss term, validation and test metrics, the best validation
    metric and its epoch, learning rate, epoch time) goes to W&B, and when a run ends the CLI adds
    its top-K curves (:meth:`log_topk_curves`); the resolved CLI config is the
    run's config; ``val/<metric>`` summaries keep their maximum. ``name=None`` lets the CLI name the
    run ``<model>-<dataset>``. ``log_model=True`` uploads checkpoints as artifacts (``"all"``: every
    one). Offline runs live in ``<save_dir>/wandb/offline-run-*`` for ``wandb sync``.
    """

    def __init__(
        self,
        project: str = "lit_mmrec",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: WandbMode = "auto",
        save_dir: str | None = None,
        log_model: bool | Literal["all"] = False,
        job_type: str = "train",
    ) -> None:
        if save_dir is not None and not os.path.isabs(os.path.expanduser(save_dir)):
            raise ValueError(f"W&B save_dir must be an absolute path, got {save_dir!r}")
        self.resolved_mode = resolve_wandb_mode(mode)
        super().__init__(
            project=project, entity=entity, name=name, group=group, tags=tags, mode=self.resolved_mode,
            save_dir=os.path.expanduser(save_dir) if save_dir else None, log_model=log_model, job_type=job_type,
        )

    def set_defaults(self, name: str, save_dir: str) -> None:
        """Before the run starts: name it and place it under ``save_dir`` unless configured otherwise."""
        if self._experiment is not None:
            return
        os.makedirs(save_dir, exist_ok=True)
        wandb_logger_defaults(self, name, save_dir)

    def continue_run(self, run_folder: Path) -> str | None:
        """Before the run starts, for a fit resumed in ``run_folder``: continue the W&B run its earlier part
        wrote under ``run_folder/wandb`` (the newest ``run-*`` or ``offline-run-*``); returns its id."""
        if self._experiment is not None:
            return None
        earlier = sorted(match.groups() for match in (re.search(r"run-(\d{8}_\d{6})-([A-Za-z0-9]+)$", path.name)
                                                      for path in (run_folder / "wandb").glob("*run-*")) if match)
        if not earlier:
            return None
        run_id = earlier[-1][1]  # the newest by its start time
        wandb_logger_resume(self, run_id)
        return run_id

    def log_config(self, config: dict[str, Any]) -> None:
        """Record the resolved run configuration and make ``val/*`` summaries keep their maximum."""
        experiment = self.experiment
        experiment.config.update(config, allow_val_change=True)
        experiment.define_metric("val/*", summary="max")

    def log_topk_curves(self, metrics: Mapping[str, Any]) -> list[str]:
        """Plot each evaluated stage's metrics against the cut-off K (``val/topk_curve``,
        ``test/topk_curve``: one line per metric over K = 5, 10, 20, 50 by default) from
        ``metrics`` such as ``trainer.callback_metrics``; returns the stages plotted."""
        import wandb

        plotted = []
        for stage in ("val", "test"):
            by_name: dict[str, dict[int, float]] = {}
            for key, value in metrics.items():
                prefix, _, rest = key.partition("/")
                name, at, k = rest.partition("@")
                if prefix == stage and at and k.isdigit():
                    by_name.setdefault(name, {})[int(k)] = float(value)
            if not by_name:
                continue
            ks = sorted({k for values in by_name.values() for k in values})
            names = sorted(by_name)
            self.experiment.log({f"{stage}/topk_curve": wandb.plot.line_series(
                xs=ks, ys=[[by_name[name].get(k, float("nan")) for k in ks] for name in names], keys=names,
                title=f"{stage}: metrics at cut-off K", xname="K")})
            plotted.append(stage)
        return plotted

    def finish(self) -> None:
        """Close the W&B run (writes its summary and files; offline runs become syncable)."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish()


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer that starts from the rows of an earlier ``metrics.csv`` logged up to and
    including epoch ``through_epoch`` (the epoch of the checkpoint a run resumes from); rows of a later,
    interrupted epoch are dropped, since the resumed run logs that epoch again."""

    def __init__(self, log_dir: str, through_epoch: int) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        kept: list[dict[str, float | int]] = []
        if path.is_file():
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    values = {key: _number(text) for key, text in row.items() if key and text not in ("", None)}
                    if "epoch" in values and values["epoch"] > through_epoch:
                        continue
                    kept.append(values)
        with warnings.catch_warnings():  # the base class announces that it deletes the old file
            warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
            super().__init__(log_dir)
        for values in kept:
            step = values.pop("step", None)
            self.log_metrics(values, None if step is None else int(step))


class RunCSVLogger(CSVLogger):
    """The run's CSV log (``<save_dir>/<name>/<version>/metrics.csv``), the first logger of every run, so
    the run's folder also holds its ``config.yaml``, its ``checkpoints/`` and any W&B offline files.

    ``resume_epoch``: the epoch of the checkpoint a resumed run starts from; the folder's ``metrics.csv``
    is then continued (rows up to that epoch kept) instead of replaced.
    """

    def __init__(self, save_dir: str, name: str = "lightning_logs", version: int | str | None = None,
                 resume_epoch: int | None = None) -> None:
        super().__init__(save_dir, name=name, version=version)
        self.resume_epoch = resume_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            if self.resume_epoch is None:
                self._experiment = ExperimentWriter(log_dir=self.log_dir)
            else:
                self._experiment = _ContinuedWriter(self.log_dir, self.resume_epoch)
        return self._experiment
