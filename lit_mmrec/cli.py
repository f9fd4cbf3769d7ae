"""The ``lit_mmrec`` command: LightningCLI over any RecommenderModule and the RecDataModule."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from lit_mmrec.data import RecDataModule
from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.metrics import BestAndLastCheckpoint, RankingEvaluator, TopKPredictionWriter, TrainingTelemetry
from lit_mmrec.models import RecommenderModule
from lit_mmrec.runtime import keep_freed_memory_for_reuse, release_process_group
from lit_mmrec.tracking import TrackedWandbLogger

MONITOR = "val/recall@20"


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
    * whenever any logger is configured, a CSV log is written too (``<default_root_dir>/csv``), and a
      W&B logger gets the resolved config and, unless configured, the name ``<model>-<dataset>``.
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

    def _prepare_loggers(self) -> None:
        trainer = self.trainer
        if not trainer.loggers:
            return
        if not any(isinstance(logger, CSVLogger) for logger in trainer.loggers):
            trainer.loggers = [*trainer.loggers, CSVLogger(save_dir=trainer.default_root_dir, name="csv")]
        for logger in trainer.loggers:
            if isinstance(logger, TrackedWandbLogger):
                logger.set_defaults(f"{type(self.model).__name__}-{self.datamodule.name}", trainer.default_root_dir)
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
              extra_callbacks: list[Callback] | None = None, save_config: bool = True) -> RecommenderCLI:
    """Parse ``args`` (default: ``sys.argv``) and, with ``run``, execute the subcommand.

    ``extra_callbacks`` are added to the trainer after the configured ones (the local sweep's monitor);
    ``save_config=False`` writes no ``config.yaml`` into the trainer's log directory (tools that only
    evaluate, such as ``lit_mmrec compare``).
    """
    return RecommenderCLI(
        RecommenderModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=SaveConfigCallback if save_config else None,
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit_mmrec`` console script (``lit_mmrec sweep ...`` runs a local sweep,
    ``lit_mmrec compare ...`` compares two trained runs user by user)."""
    logging.basicConfig(level=os.environ.get("LIT_MMREC_LOG_LEVEL", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory_for_reuse()
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["sweep"]:
        from lit_mmrec.sweep import main as sweep_main

        sweep_main(argv[1:])
        return
    if argv[:1] == ["compare"]:
        from lit_mmrec.compare import main as compare_main

        compare_main(argv[1:])
        return
    try:
        build_cli(args)
    except DataFormatError as error:  # bad input data: the message names the file, the field and the fix
        if os.environ.get("LIT_MMREC_DEBUG", "0") not in ("", "0"):
            raise
        print(f"lit_mmrec: error: {error}\n(set LIT_MMREC_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    release_process_group()  # DDP on CPU: gloo must not outlive the interpreter (see the function)


if __name__ == "__main__":
    main()
