"""LightningCLI over any RecommenderModule and the RecDataModule: the ``fit`` / ``validate`` / ``test`` /
``predict`` subcommands of ``lit_mmrec``, and the run folders they write."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from lit_mmrec.data import RecDataModule
from lit_mmrec.metrics import (
    BestAndLastCheckpoint,
    RandomStateCheckpoint,
    RankingEvaluator,
    TopKPredictionWriter,
    TrainingTelemetry,
)
from lit_mmrec.models import RecommenderModule
from lit_mmrec.tracking import RunCSVLogger, TrackedWandbLogger

MONITOR = "val/recall@20"


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config as ``config.yaml`` into the run folder; ``predict`` has no run folder."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            super().setup(trainer, pl_module, stage)


class RecommenderCLI(LightningCLI):
    """LightningCLI with the evaluation, checkpoint, early-stopping and prediction callbacks always on.

    * ``evaluation.*`` configures :class:`RankingEvaluator` (cut-offs ``ks``);
    * ``checkpoint.*`` / ``early_stopping.*`` monitor ``val/recall@20`` (maximised) by default,
      so the model is always picked by validation; ``last.ckpt`` follows every training epoch, so an
      interrupted run resumes with the epoch after it (:class:`BestAndLastCheckpoint`);
    * ``prediction_writer.output_path`` is where ``predict`` writes each user's top-K;
    * ``test_after_fit`` (default true) makes ``fit`` end by testing the best-validation checkpoint;
    * ``n_users``, ``n_items`` and ``feature_dims`` are linked from the data module into the model;
    * ``train/epoch_seconds`` and ``train/lr`` are logged every epoch;
    * each run has one folder (``<default_root_dir>/lightning_logs/version_N``) with its ``config.yaml``,
      ``metrics.csv``, ``checkpoints/`` and, with the W&B logger, ``wandb/`` (the run is named
      ``<model>-<dataset>`` unless configured); ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues
      that folder, its best checkpoint and score, early stopping's patience, the random state and its W&B
      run, so the resumed run ends as the uninterrupted one would have; ``predict`` writes only its predictions.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RankingEvaluator, "evaluation")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": MONITOR, "early_stopping.mode": "max",
                             "early_stopping.patience": 20})
        parser.add_lightning_class_args(TopKPredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(TrainingTelemetry, "telemetry")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, evaluate the best-validation checkpoint on the test split")
        parser.link_arguments("data.n_users", "model.init_args.n_users", apply_on="instantiate")
        parser.link_arguments("data.n_items", "model.init_args.n_items", apply_on="instantiate")
        parser.link_arguments("data.feature_dims", "model.init_args.feature_dims", apply_on="instantiate")

    def _resumed_run_folder(self) -> tuple[Path, int] | None:
        """The run folder and epoch of ``fit --ckpt_path <run>/checkpoints/<file>.ckpt`` when ``<run>`` is a
        run folder (it holds the ``config.yaml`` its fit saved); None for a fresh run."""
        if self.subcommand != "fit":
            return None
        ckpt_path = self.config_init["fit"].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return None
        checkpoint = Path(ckpt_path).expanduser().resolve()
        run = checkpoint.parent.parent
        if checkpoint.parent.name != "checkpoints" or not (run / "config.yaml").is_file():
            return None
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("epoch", 0)
        return run, int(epoch)

    def _prepare_loggers(self) -> None:
        """One folder per run: a :class:`RunCSVLogger` goes first, so its folder
        (``<default_root_dir>/lightning_logs/version_N`` unless configured) holds the run's config,
        metrics, checkpoints and W&B files; a resumed fit continues the folder of its checkpoint. ``predict``
        logs nothing. ``fit`` also checkpoints the random state (:class:`RandomStateCheckpoint`)."""
        trainer = self.trainer
        if self.subcommand == "fit" and not any(isinstance(c, RandomStateCheckpoint) for c in trainer.callbacks):
            trainer.callbacks.insert(0, RandomStateCheckpoint())  # with or without a logger
        if self.subcommand == "predict":
            trainer.loggers = []
            return
        if not trainer.loggers:
            return
        configured = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        resumed = self._resumed_run_folder()
        if resumed is not None:
            run, epoch = resumed
            csv_logger = RunCSVLogger(str(run.parent.parent), name=run.parent.name, version=run.name,
                                      resume_epoch=epoch)
        elif configured is not None:
            csv_logger = RunCSVLogger(configured.save_dir, name=configured.name, version=configured.version)
        else:
            csv_logger = RunCSVLogger(trainer.default_root_dir)
        others = [logger for logger in trainer.loggers if not isinstance(logger, CSVLogger)]
        trainer.loggers = [csv_logger, *others]
        for logger in others:
            if isinstance(logger, TrackedWandbLogger):
                logger.set_defaults(f"{type(self.model).__name__}-{self.datamodule.name}", csv_logger.log_dir)
                if resumed is not None:
                    logger.continue_run(resumed[0])
                logger.log_config(self.config[self.subcommand].clone().as_dict())

    before_fit = before_test = before_validate = before_predict = _prepare_loggers

    def _finish_loggers(self) -> None:
        """End W&B runs with the subcommand (after plotting the last evaluation's metrics against K),
        so their summary and files are written now."""
        for logger in self.trainer.loggers:
            if isinstance(logger, TrackedWandbLogger):
                if self.trainer.is_global_zero:
                    logger.log_topk_curves(self.trainer.callback_metrics)
                logger.finish()

    after_test = after_validate = after_predict = _finish_loggers

    def after_fit(self) -> None:
        if self.config_init[self.subcommand].get("test_after_fit", True) and not self.trainer.interrupted:
            checkpoint = self.trainer.checkpoint_callback
            has_best = checkpoint is not None and bool(checkpoint.best_model_path)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)
        self._finish_loggers()


def build_cli(args: list[str] | None = None, run: bool = True,
              extra_callbacks: list[Callback] | None = None, save_config: bool = True,
              parser_kwargs: dict | None = None) -> RecommenderCLI:
    """Parse ``args`` (default: ``sys.argv``) and, with ``run``, execute the subcommand.

    ``extra_callbacks`` are added to the trainer after the configured ones (the local sweep's monitor);
    ``save_config=False`` writes no ``config.yaml`` into the trainer's log directory (tools that only
    evaluate, such as ``lit_mmrec compare``); ``parser_kwargs`` go to jsonargparse's parsers.
    """
    return RecommenderCLI(
        RecommenderModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        parser_kwargs={"parser_mode": "omegaconf", **(parser_kwargs or {})},
        save_config_callback=RunConfigSaver if save_config else None,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": list(extra_callbacks)} if extra_callbacks else None,
        args=args,
        run=run,
    )


# what a saved ``fit`` config holds that evaluating one of its checkpoints needs
_RUN_KEYS = ("model", "data", "evaluation", "early_stopping")


def cli_for_saved_run(config: Path, args: list[str] | None = None,
                      extra_callbacks: list[Callback] | None = None) -> RecommenderCLI:
    """The model, data module and trainer of a run from the ``config.yaml`` that ``fit`` saved, not run:
    without its trainer settings and ``fit``'s own arguments, with no logger and writing no config.
    The trainer's root is the config's folder, where ``fit`` put the run's ``checkpoints/`` (never the
    working directory). ``args`` are further command-line overrides. For tools that load a run's
    checkpoints."""
    if not config.is_file():
        raise SystemExit(f"{config}: no such file; pass the config.yaml that `lit_mmrec fit` saved with the run")
    saved = yaml.safe_load(config.read_text()) or {}
    missing = [key for key in ("model", "data") if key not in saved]
    if missing:
        raise SystemExit(f"{config}: has no {missing} section; pass the config.yaml that `lit_mmrec fit` saved")
    section = {key: saved[key] for key in _RUN_KEYS if key in saved}
    return build_cli(["--config", yaml.safe_dump(section), "--trainer.logger=false",
                      f"--trainer.default_root_dir={config.resolve().parent}", *(args or [])], run=False,
                     extra_callbacks=extra_callbacks, save_config=False)
